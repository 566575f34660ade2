"""Conversion of the reference SHINE checkpoints: equal to the reference math, safe, round-trips."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

# pytest puts tests/ on sys.path (rootdir-less test modules, prepend import mode)
from reference_impl import (
    build_reference_checkpoint,
    left_pad,
    merge_loradicts,
    qwen3_forward,
    reference_answer_logits,
    reference_generated_lora,
    save_reference_checkpoint,
)
from torch import nn

from shine_hf import (
    BackboneMismatchError,
    CheckpointError,
    ConfigError,
    ShineForCausalLM,
    UnsupportedBackboneError,
)
from shine_hf.convert import (
    REFERENCE_FILES,
    ReferenceFormatError,
    convert_reference_checkpoint,
    default_m2p_num_heads,
    export_reference_checkpoint,
    infer_lora_rank,
    load_reference_checkpoint,
)
from shine_hf.modeling.lora import discover_target_modules
from shine_hf.testing import tiny_backbone, tiny_backbone_config
from shine_hf.testing.models import tiny_shine

# Tiny Qwen3: hidden 32, per-layer P(r) = 512 r = 16 r * H, so r = 2 gives M = 32 memory tokens.
LORA_RANK = 2
METALORA_RANK, ADDITIONAL_RANK = 3, 2
M2P_DEPTH, M2P_FFN, M2P_HEADS = 2, 48, 4  # heads default to the backbone's 4 for hidden 32
CONTEXTS = [[5, 17, 42, 99, 7, 300, 12, 64, 250, 33, 81], [401, 9, 77, 18]]
QUESTIONS = [[1, 20, 31, 44, 2, 13], [1, 60, 70, 2]]
ATOL = 1e-5
GROUPS = {"attention": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down")}


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone("qwen3", seed=0)


@pytest.fixture(scope="module")
def reference_objects(backbone):
    return build_reference_checkpoint(backbone, LORA_RANK, METALORA_RANK, ADDITIONAL_RANK, m2p_depth=M2P_DEPTH,
                                      m2p_heads=M2P_HEADS, m2p_ffn=M2P_FFN, seed=1)


@pytest.fixture(scope="module")
def reference_dir(reference_objects, tmp_path_factory):
    return save_reference_checkpoint(reference_objects, tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def converted(reference_dir, backbone, tmp_path_factory):
    """The reference checkpoint converted with lora_scale 0.01, loaded back with from_pretrained."""
    out = tmp_path_factory.mktemp("converted") / "shine"
    returned = convert_reference_checkpoint(reference_dir, backbone, out, lora_scale=0.01)
    assert returned == out
    return ShineForCausalLM.from_pretrained(out, backbone=backbone)


def _pad_right(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = left_pad(sequences)
    order = torch.argsort(-mask, dim=1, stable=True)
    return ids.gather(1, order), mask.gather(1, order)


def _assert_nested_equal(actual, expected, path: str = "") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), path
        for key in expected:
            _assert_nested_equal(actual[key], expected[key], f"{path}[{key!r}]")
    elif expected is None:
        assert actual is None, path
    else:
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, path
        assert torch.equal(actual.detach(), expected.detach()), path


# ------------------------------------------------------------------------------ the reference math
def test_manual_forward_reproduces_the_backbone(backbone):
    """The test's hand-written Qwen3 forward equals transformers' (so it can stand in for the reference)."""
    ids, mask = left_pad(QUESTIONS)
    with torch.no_grad():
        hidden, _ = qwen3_forward(backbone, backbone.model.embed_tokens(ids), mask, None)
        expected = backbone(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(backbone.lm_head(hidden)[mask.bool()], expected[mask.bool()], atol=ATOL, rtol=0)


def test_converted_checkpoint_matches_the_reference_math(converted, backbone, reference_objects):
    reference_lora = reference_generated_lora(backbone, reference_objects, CONTEXTS, lora_rank=LORA_RANK,
                                              lora_scale=0.01, m2p_heads=M2P_HEADS)
    context_ids, context_mask = _pad_right(CONTEXTS)  # our side pads right; the reference pads left
    adapter = converted.internalize(context_ids, context_mask)
    assert len(adapter) == 2
    for layer in range(backbone.config.num_hidden_layers):
        for t in converted.targets:
            group, key = ("attention" if t.name.startswith("self_attn") else "mlp"), t.name.split(".")[1][:-5]
            ours, theirs = adapter.lora[layer][t.name], reference_lora[layer][group][key]
            assert torch.allclose(ours.A, theirs["A"], atol=ATOL, rtol=0), (layer, t.name, "A")
            assert torch.allclose(ours.B, theirs["B"], atol=ATOL, rtol=0), (layer, t.name, "B")
            assert ours.C is None and theirs["C"] is None

    ids, mask = left_pad(QUESTIONS)
    expected = reference_answer_logits(backbone, reference_lora, ids, mask)
    with torch.no_grad():
        logits = converted(input_ids=ids, attention_mask=mask, adapter=adapter).logits
        plain = converted(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (logits[real] - expected[real]).abs().max() <= ATOL
    # The comparison is sensitive: the generated LoRA moves the logits far beyond the tolerance ...
    assert (plain[real] - expected[real]).abs().max() > 100 * ATOL
    # ... and so does the IFT meta-LoRA that conversion merges in.
    without_ift = reference_generated_lora(backbone, reference_objects, CONTEXTS, lora_rank=LORA_RANK,
                                           lora_scale=0.01, m2p_heads=M2P_HEADS, use_additional=False)
    assert (reference_answer_logits(backbone, without_ift, ids, mask)[real] - expected[real]).abs().max() > 100 * ATOL


def test_inferred_sizes_are_recorded(converted):
    config = converted.config
    assert (config.lora_rank, config.metalora_rank) == (LORA_RANK, METALORA_RANK + ADDITIONAL_RANK)
    assert (config.m2p_num_layers, config.m2p_ffn_dim, config.m2p_num_heads) == (M2P_DEPTH, M2P_FFN, M2P_HEADS)
    assert config.lora_scale == 0.01
    assert config.num_memory_tokens == 32
    assert config.target_modules == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    ]


def test_checkpoint_holds_only_the_hypernetwork(reference_dir, backbone, tmp_path):
    from safetensors import safe_open

    out = convert_reference_checkpoint(reference_dir, backbone, tmp_path / "out")
    assert (out / "config.json").is_file()
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert keys and all(key.startswith("hypernetwork.") for key in keys)
    assert not list(tmp_path.glob(".out.tmp-*"))


# ------------------------------------------------------------------------------------ round trips
def test_convert_then_export_gives_the_source_dicts(converted, reference_objects, tmp_path):
    out = export_reference_checkpoint(converted, tmp_path / "ref")
    assert sorted(p.name for p in out.iterdir()) == ["mem_tokens.pt", "metalora.pth", "metanetwork.pth"]
    mem_tokens = torch.load(out / "mem_tokens.pt", weights_only=True)
    metanetwork = torch.load(out / "metanetwork.pth", weights_only=True)
    metalora = torch.load(out / "metalora.pth", weights_only=True)
    assert isinstance(mem_tokens, nn.Parameter)
    assert torch.equal(mem_tokens, reference_objects["mem_tokens"])
    _assert_nested_equal(metanetwork, dict(reference_objects["metanetwork"]))
    merged = merge_loradicts(reference_objects["metalora"], reference_objects["ift_additional_metalora"])
    _assert_nested_equal(metalora, merged)
    assert list(metalora) == [0, 1] and all(isinstance(k, int) for k in metalora)
    assert metalora[0]["attention"]["q"]["A"].requires_grad  # as the reference saves it


@pytest.mark.parametrize("family", ["qwen3", "qwen2"])  # qwen2: biased q/k/v, so C deltas
def test_export_then_convert_round_trips_bit_exactly(family, tmp_path):
    model = tiny_shine(family, seed=3)
    exported = export_reference_checkpoint(model, tmp_path / "ref")
    if family == "qwen2":
        C = torch.load(exported / "metalora.pth", weights_only=True)[0]["attention"]["q"]["C"]
        assert C.shape == (1, model.backbone.config.hidden_size)
    out = convert_reference_checkpoint(exported, model.backbone, tmp_path / "shine", lora_scale=model.config.lora_scale)
    loaded = ShineForCausalLM.from_pretrained(out, backbone=model.backbone)
    for key in ("lora_rank", "metalora_rank", "m2p_num_layers", "m2p_num_heads", "m2p_ffn_dim", "lora_scale"):
        assert getattr(loaded.config, key) == getattr(model.config, key), key
    original, reloaded = model.hypernetwork.state_dict(), loaded.hypernetwork.state_dict()
    assert set(original) == set(reloaded)
    for key, tensor in original.items():
        assert torch.equal(tensor, reloaded[key]), key


def test_one_dimensional_bias_deltas_are_accepted(tmp_path):
    backbone = tiny_backbone("qwen2", seed=0)  # P(4) = 512*4 + 64 = 66 * 32
    objects = build_reference_checkpoint(backbone, 4, 3, None, seed=2, c_shape="1d")
    source = save_reference_checkpoint(objects, tmp_path / "ref")
    model = ShineForCausalLM.from_pretrained(convert_reference_checkpoint(source, backbone, tmp_path / "out"),
                                             backbone=backbone)
    assert model.config.lora_rank == 4
    q_bias = model.hypernetwork.meta_lora.layers[1]["self_attn__q_proj"].C
    assert torch.equal(q_bias, objects["metalora"][1]["attention"]["q"]["C"].detach())


def test_export_refuses_what_the_reference_cannot_hold(tmp_path):
    with pytest.raises(ReferenceFormatError, match="q_proj"):
        export_reference_checkpoint(tiny_shine("gpt2"), tmp_path / "gpt2")
    odd = tiny_shine("qwen3", backbone_overrides={"intermediate_size": 40}, lora_rank=1)  # P = 440, H = 32
    with pytest.raises(ReferenceFormatError, match="multiple of the hidden size"):
        export_reference_checkpoint(odd, tmp_path / "odd")
    assert not (tmp_path / "gpt2").exists() and not (tmp_path / "odd").exists()


# ------------------------------------------------------------------------------------------ safety
class _Payload:
    """Unpickling this object creates a marker file: the proof that pickle code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_without_running_it(reference_dir, backbone, tmp_path):
    source = tmp_path / "evil"
    source.mkdir()
    for name in ("mem_tokens.pt", "metanetwork.pth"):
        (source / name).write_bytes((reference_dir / name).read_bytes())
    marker = tmp_path / "pwned"
    torch.save({0: _Payload(marker)}, source / "metalora.pth")
    with pytest.raises(CheckpointError, match=r"metalora\.pth.*run code"):
        convert_reference_checkpoint(source, backbone, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    torch.load(source / "metalora.pth", weights_only=False)  # the payload is live: unsafe loading runs it
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_with_code_is_refused(reference_dir, backbone, tmp_path):
    source = tmp_path / "evil"
    source.mkdir()
    for name in ("metanetwork.pth", "metalora.pth"):
        (source / name).write_bytes((reference_dir / name).read_bytes())
    marker = tmp_path / "pwned"
    (source / "mem_tokens.pt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match=r"mem_tokens\.pt"):
        convert_reference_checkpoint(source, backbone, tmp_path / "out")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["mem_tokens.pt", "metanetwork.pth", "metalora.pth"])
def test_missing_file_is_named(name, reference_dir, backbone, tmp_path):
    source = tmp_path / "partial"
    source.mkdir()
    for other in REFERENCE_FILES:
        if other != name and (reference_dir / other).exists():
            (source / other).write_bytes((reference_dir / other).read_bytes())
    with pytest.raises(CheckpointError, match=rf"Missing checkpoint file {name}"):
        convert_reference_checkpoint(source, backbone, tmp_path / "out")


def test_truncated_file_is_a_checkpoint_error(reference_dir, backbone, tmp_path):
    source = tmp_path / "truncated"
    source.mkdir()
    for name in REFERENCE_FILES:
        data = (reference_dir / name).read_bytes()
        (source / name).write_bytes(data[: len(data) // 2] if name == "metanetwork.pth" else data)
    with pytest.raises(CheckpointError, match=r"metanetwork\.pth"):
        convert_reference_checkpoint(source, backbone, tmp_path / "out")


def test_unsupported_metanetwork_keys_are_refused(reference_objects, backbone, tmp_path):
    objects = dict(reference_objects)
    metanetwork = dict(objects["metanetwork"])
    metanetwork["couple_layers.0.linear1.weight"] = torch.zeros(4, 4)
    objects["metanetwork"] = metanetwork
    source = save_reference_checkpoint(objects, tmp_path / "ref")
    with pytest.raises(CheckpointError, match=r"unsupported couple_layers\.0\.linear1\.weight"):
        convert_reference_checkpoint(source, backbone, tmp_path / "out")


def test_ift_file_must_match_the_metalora(reference_objects, tmp_path):
    objects = dict(reference_objects)
    objects["ift_additional_metalora"] = {0: reference_objects["ift_additional_metalora"][0]}
    source = save_reference_checkpoint(objects, tmp_path / "ref")
    with pytest.raises(CheckpointError, match=r"ift_additional_metalora\.pth has decoder layers"):
        load_reference_checkpoint(source)


# ---------------------------------------------------------------------------------- shape checks
def test_checkpoint_for_a_bigger_backbone_names_tensor_and_shapes(backbone, tmp_path):
    big = tiny_backbone("qwen3", seed=0, hidden_size=64)  # P(2) = 1472 = 23 * 64
    source = save_reference_checkpoint(build_reference_checkpoint(big, 2, 3, 2), tmp_path / "ref")
    with pytest.raises(BackboneMismatchError, match=r"mem_tokens.*\(23, 64\).*needs \(23, 32\)") as error:
        convert_reference_checkpoint(source, backbone, tmp_path / "out")
    assert "hidden size 32" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_metalora_mismatch_names_the_module(reference_dir, tmp_path):
    narrow = tiny_backbone("qwen3", seed=0, intermediate_size=48)
    pattern = r"metalora\.pth\[0\]\['mlp'\]\['gate'\]\['B'\] has shape \(1, 5, 64\), the backbone needs \(1, 5, 48\)"
    with pytest.raises(BackboneMismatchError, match=pattern):
        convert_reference_checkpoint(reference_dir, narrow, tmp_path / "out")


def test_layer_count_mismatch(reference_dir, tmp_path):
    deeper = tiny_backbone("qwen3", seed=0, num_hidden_layers=3)
    with pytest.raises(BackboneMismatchError, match=r"layer_pe.*\(2, 32\).*\(3, 32\).*2 decoder layers.*has 3"):
        convert_reference_checkpoint(reference_dir, deeper, tmp_path / "out")


def test_backbone_without_the_reference_projections(reference_dir, tmp_path):
    with pytest.raises(UnsupportedBackboneError):
        convert_reference_checkpoint(reference_dir, tiny_backbone("gpt2"), tmp_path / "out")


def test_infer_lora_rank():
    qwen3 = tiny_backbone("qwen3")
    _, targets = discover_target_modules(qwen3)
    assert [infer_lora_rank(targets, 32, 16 * r) for r in (1, 2, 8)] == [1, 2, 8]
    odd = tiny_backbone("qwen3", intermediate_size=40)  # P(r) = 440 r: ceil(440 r / 32)
    _, odd_targets = discover_target_modules(odd)
    assert infer_lora_rank(odd_targets, 32, 14) == 1 and infer_lora_rank(odd_targets, 32, 28) == 2
    with pytest.raises(BackboneMismatchError, match="15 memory tokens"):
        infer_lora_rank(odd_targets, 32, 15)
    qwen2 = tiny_backbone("qwen2")  # biased q/k/v: P(r) = 512 r + 64
    _, biased = discover_target_modules(qwen2)
    assert infer_lora_rank(biased, 32, 66) == 4


def test_default_m2p_heads_follow_the_reference_configs():
    assert default_m2p_num_heads(tiny_backbone_config("qwen3", hidden_size=4096, num_attention_heads=32)) == 32
    assert default_m2p_num_heads(tiny_backbone_config("qwen3", hidden_size=1024, num_attention_heads=16)) == 8
    assert default_m2p_num_heads(tiny_backbone_config("qwen3")) == 4


def test_m2p_heads_override(reference_dir, backbone, tmp_path):
    out = convert_reference_checkpoint(reference_dir, backbone, tmp_path / "out", m2p_num_heads=2)
    assert ShineForCausalLM.from_pretrained(out, backbone=backbone).config.m2p_num_heads == 2
    with pytest.raises(BackboneMismatchError, match="m2p_num_heads=5"):
        convert_reference_checkpoint(reference_dir, backbone, tmp_path / "bad", m2p_num_heads=5)


# ---------------------------------------------------------------------------------------- sources
def test_backbone_by_path_loads_no_weights(reference_dir, backbone, tmp_path):
    backbone.save_pretrained(tmp_path / "backbone")
    out = convert_reference_checkpoint(reference_dir, str(tmp_path / "backbone"), tmp_path / "out")
    loaded = ShineForCausalLM.from_pretrained(out)  # backbone loaded from the path in the config
    assert loaded.config.backbone_name_or_path == str(tmp_path / "backbone")
    assert torch.equal(loaded.backbone.lm_head.weight, backbone.lm_head.weight)


def test_hub_repo_id_is_downloaded_with_the_reference_files_only(reference_dir, backbone, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(reference_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    convert_reference_checkpoint("Yewei-Liu/SHINE-ift_mqa", backbone, tmp_path / "out", revision="v1")
    assert calls == [{"repo_id": "Yewei-Liu/SHINE-ift_mqa", "revision": "v1", "allow_patterns": list(REFERENCE_FILES)}]


def test_hub_download_failure_is_a_checkpoint_error(backbone, tmp_path, monkeypatch):
    import huggingface_hub

    def failing(**kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    with pytest.raises(CheckpointError, match=r"could not be downloaded.*connection refused"):
        convert_reference_checkpoint("org/missing", backbone, tmp_path / "out")


def test_source_that_is_neither_directory_nor_repo(backbone, tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        convert_reference_checkpoint(str(tmp_path / "no" / "such" / "dir"), backbone, tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        convert_reference_checkpoint(tmp_path / "file", backbone, tmp_path / "out")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_convert_from_the_test_hub(hub, reference_dir, backbone, tmp_path):
    """End to end through the real huggingface_hub client and the local test Hub, at a revision."""
    from huggingface_hub import create_branch, create_repo, delete_file, upload_file, upload_folder

    repo_id = hub.unique_repo_id("shine-reference")
    create_repo(repo_id)
    upload_folder(repo_id=repo_id, folder_path=str(reference_dir))
    create_branch(repo_id, branch="without-ift")
    upload_file(path_or_fileobj=b"not part of a checkpoint", path_in_repo="notes.txt", repo_id=repo_id)
    out = convert_reference_checkpoint(repo_id, backbone, tmp_path / "out")
    assert ShineForCausalLM.from_pretrained(out, backbone=backbone).config.metalora_rank == 5
    delete_file("ift_additional_metalora.pth", repo_id=repo_id, revision="without-ift")
    out = convert_reference_checkpoint(repo_id, backbone, tmp_path / "branch", revision="without-ift")
    assert ShineForCausalLM.from_pretrained(out, backbone=backbone).config.metalora_rank == 3
    with pytest.raises(CheckpointError, match="could not be downloaded"):
        convert_reference_checkpoint(repo_id, backbone, tmp_path / "bad", revision="no-such-branch")


def test_requires_grad_tensors_and_parameter_load_with_weights_only(reference_dir):
    assert isinstance(torch.load(reference_dir / "mem_tokens.pt", weights_only=True), nn.Parameter)
    checkpoint = load_reference_checkpoint(reference_dir)
    assert not checkpoint.mem_tokens.requires_grad
    assert checkpoint.metalora_rank == 5 and checkpoint.files[-1] == "ift_additional_metalora.pth"
    assert os.fspath(reference_dir)


def test_released_qwen3_8b_sizes():
    """Qwen3-8B, r = 8: P = 606,208 = 148 * 4096 (docs/method.md, "2. Memory tokens"), 32 M2P heads; built on
    the meta device."""
    from transformers import AutoModelForCausalLM

    config = tiny_backbone_config("qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                  num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    with torch.device("meta"):
        qwen3_8b = AutoModelForCausalLM.from_config(config)
    _, targets = discover_target_modules(qwen3_8b)
    assert sum(t.lora_numel(8) for t in targets) == 606_208
    assert infer_lora_rank(targets, 4096, 148) == 8
    assert default_m2p_num_heads(config) == 32


# ---------------------------------------------------------------------------- options and layout
@pytest.mark.parametrize("kwargs", [{"lora_scale": 0.0}, {"lora_scale": -1.0}, {"lora_scale": float("nan")},
                                    {"lora_scale": float("inf")}, {"m2p_num_heads": 0}, {"m2p_num_heads": -4}])
def test_impossible_options_are_refused_before_any_work(kwargs, backbone, tmp_path):
    name = next(iter(kwargs))
    with pytest.raises(ConfigError, match=rf"{name} must be"):
        convert_reference_checkpoint(tmp_path / "never-read", backbone, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file_is_refused(reference_dir, backbone, tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    with pytest.raises(CheckpointError, match="is a file"):
        convert_reference_checkpoint(reference_dir, backbone, target)
    assert target.read_text() == "keep me"


def test_missing_and_unsupported_tensors_are_named_per_file(reference_objects, backbone, tmp_path):
    objects = dict(reference_objects)
    objects["metanetwork"] = {k: v for k, v in reference_objects["metanetwork"].items()
                              if k != "transformer_layers.1.norm2.bias"}
    metalora = {layer: {group: dict(modules) for group, modules in groups.items()}
                for layer, groups in reference_objects["metalora"].items()}
    metalora[0]["attention"]["q"] = {**metalora[0]["attention"]["q"], "D": torch.zeros(1)}
    objects["metalora"] = metalora
    del objects["ift_additional_metalora"]
    source = save_reference_checkpoint(objects, tmp_path / "ref")
    with pytest.raises(CheckpointError) as error:
        convert_reference_checkpoint(source, backbone, tmp_path / "out")
    assert str(error.value) == (
        "metanetwork.pth is not in the reference layout: missing transformer_layers.1.norm2.bias. "
        "metalora.pth is not in the reference layout: unsupported [0]['attention']['q']['D']."
    )
    assert not (tmp_path / "out").exists()


def test_lora_tensors_without_the_batch_axis_are_refused(reference_objects, tmp_path):
    objects = dict(reference_objects)
    metalora = {layer: {group: dict(modules) for group, modules in groups.items()}
                for layer, groups in reference_objects["metalora"].items()}
    metalora[1]["mlp"]["down"] = {**metalora[1]["mlp"]["down"], "A": metalora[1]["mlp"]["down"]["A"][0]}
    objects["metalora"] = metalora
    del objects["ift_additional_metalora"]
    source = save_reference_checkpoint(objects, tmp_path / "ref")
    with pytest.raises(CheckpointError, match=r"metalora\.pth\[1\]\['mlp'\]\['down'\]\['A'\] has shape \(64, 3\)"):
        load_reference_checkpoint(source)


def test_m2p_depth_shine_config_refuses_is_a_checkpoint_error(reference_objects, backbone, tmp_path):
    objects = dict(reference_objects)
    objects["metanetwork"] = {k: v for k, v in reference_objects["metanetwork"].items()
                              if not k.startswith("transformer_layers.1.")}
    source = save_reference_checkpoint(objects, tmp_path / "ref")
    with pytest.raises(CheckpointError, match="does not describe a valid SHINE hypernetwork: m2p_num_layers"):
        convert_reference_checkpoint(source, backbone, tmp_path / "out")


def test_bias_deltas_must_match_the_backbone_biases(reference_dir, tmp_path):
    """A checkpoint for bias-free Qwen3 on Qwen2 (biased q/k/v): the missing C are named with shapes."""
    with pytest.raises(BackboneMismatchError, match=r"\['attention'\]\['q'\]\['C'\] has shape None, the backbone "
                                                    r"needs \(32,\)"):
        convert_reference_checkpoint(reference_dir, tiny_backbone("qwen2", seed=0), tmp_path / "out")


def test_non_tensor_values_are_refused(reference_objects, tmp_path):
    objects = dict(reference_objects)
    objects["metalora"] = {0: {"attention": {"q": {"A": [1.0, 2.0]}}}}
    source = save_reference_checkpoint(objects, tmp_path / "ref")
    with pytest.raises(CheckpointError, match=r"metalora\.pth\[0\]\['attention'\]\['q'\]\['A'\] holds a list"):
        load_reference_checkpoint(source)
    objects["metalora"] = []
    with pytest.raises(CheckpointError, match=r"metalora\.pth holds a list; expected a non-empty dict"):
        load_reference_checkpoint(save_reference_checkpoint(objects, tmp_path / "ref2"))
