"""save_pretrained / from_pretrained of hypernetworks, remote code, and bad checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from shine_hf import BackboneMismatchError, CheckpointError, ShineForCausalLM
from shine_hf.testing import tiny_backbone
from shine_hf.testing.models import tiny_shine

CONTEXT = "The contract was signed by Alice Moreau in Lyon on 3 March 1998."


@pytest.fixture()
def saved(tmp_path):
    """A tiny Qwen3 backbone saved to disk and a SHINE checkpoint that names it by path."""
    backbone_dir = tmp_path / "backbone"
    tiny_backbone("qwen3").save_pretrained(backbone_dir)
    model = tiny_shine("qwen3")
    model.config.backbone_name_or_path = str(backbone_dir)
    model.save_pretrained(tmp_path / "shine")
    return model, tmp_path / "shine", backbone_dir


def _assert_same_adapter(a, b):
    for layer in a.lora:
        for name in a.lora[layer]:
            assert torch.equal(a.lora[layer][name].A, b.lora[layer][name].A)
            assert torch.equal(a.lora[layer][name].B, b.lora[layer][name].B)


def test_checkpoint_holds_only_the_hypernetwork(saved):
    model, directory, _ = saved
    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert keys == set(model.hypernetwork_state_dict())
    assert all(k.startswith("hypernetwork.") for k in keys)
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "shine"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_shine.ShineForCausalLM"
    assert (directory / "modeling_shine.py").is_file() and (directory / "README.md").is_file()


def test_round_trip_is_bit_identical(saved):
    model, directory, _ = saved
    loaded = ShineForCausalLM.from_pretrained(directory)
    original, restored = model.hypernetwork.state_dict(), loaded.hypernetwork.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    _assert_same_adapter(model.internalize(CONTEXT), loaded.internalize(CONTEXT))
    assert loaded.tokenizer is not None


def test_loaded_backbone_can_be_passed_in(saved):
    model, directory, _ = saved
    loaded = ShineForCausalLM.from_pretrained(directory, backbone=tiny_backbone("qwen3"))
    _assert_same_adapter(model.internalize(CONTEXT), loaded.internalize(CONTEXT))


def test_a_weightless_backbone_loads_the_hypernetwork_to_save_it_again(saved, tmp_path):
    """A meta-device backbone (what `shine push` builds from the config: no backbone weights read) keeps
    the loaded hypernetwork real, so the checkpoint can be saved (or pushed) unchanged."""
    from transformers import AutoModelForCausalLM

    model, directory, _ = saved
    with torch.device("meta"):
        weightless = AutoModelForCausalLM.from_config(model.config.get_backbone_config())
    loaded = ShineForCausalLM.from_pretrained(directory, backbone=weightless)
    original = model.hypernetwork.state_dict()
    assert all(torch.equal(tensor, original[name]) for name, tensor in loaded.hypernetwork.state_dict().items())
    loaded.save_pretrained(tmp_path / "again")
    again = ShineForCausalLM.from_pretrained(tmp_path / "again", backbone=tiny_backbone("qwen3"))
    _assert_same_adapter(model.internalize(CONTEXT), again.internalize(CONTEXT))


def test_sharded_checkpoint_round_trips(tmp_path, saved):
    model, _, _ = saved
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    loaded = ShineForCausalLM.from_pretrained(tmp_path / "sharded")
    _assert_same_adapter(model.internalize(CONTEXT), loaded.internalize(CONTEXT))


def test_remote_code_loads_without_shine_hf(saved):
    model, directory, _ = saved
    expected = model.internalize(CONTEXT).lora[1]["mlp.down_proj"].B
    script = textwrap.dedent(f"""
        import sys
        sys.modules["shine_hf"] = None  # importing shine_hf now raises ImportError
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(directory)!r}, trust_remote_code=True)
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        adapter = model.internalize({CONTEXT!r})
        torch.save(adapter.lora[1]["mlp.down_proj"].B, {str(directory / "remote_B.pt")!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(directory / "remote_B.pt", weights_only=True)
    assert torch.equal(remote, expected)


def test_backbone_of_other_shapes_is_refused(saved):
    _, directory, _ = saved
    with pytest.raises(BackboneMismatchError, match="hidden size 64 != 32"):
        ShineForCausalLM.from_pretrained(directory, backbone=tiny_backbone("qwen3", hidden_size=64))
    with pytest.raises(BackboneMismatchError, match="does not match"):
        ShineForCausalLM.from_pretrained(directory, backbone=tiny_backbone("llama"))


def test_truncated_weights_are_refused(saved):
    _, directory, _ = saved
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ShineForCausalLM.from_pretrained(directory)


def test_missing_weights_are_refused(saved):
    _, directory, _ = saved
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors"):
        ShineForCausalLM.from_pretrained(directory)


def test_failed_save_leaves_no_directory(tmp_path, saved, monkeypatch):
    model, _, _ = saved
    import transformers.modeling_utils

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", explode)  # the weights writer
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_pretrained(tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert not any(p.name.startswith(".never") for p in tmp_path.iterdir())


def test_config_naming_a_backbone_of_other_shapes_is_refused(saved, tmp_path):
    _, directory, _ = saved
    other = tmp_path / "other-backbone"
    tiny_backbone("qwen3", intermediate_size=48).save_pretrained(other)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["backbone_name_or_path"] = str(other)
    config_path.write_text(json.dumps(config))
    with pytest.raises(BackboneMismatchError, match=r"mlp\.gate_proj is \(in, out, bias\) \(32, 48, 0\)"):
        ShineForCausalLM.from_pretrained(directory)


def test_half_precision_backbone_with_float32_hypernetwork(saved):
    _, directory, _ = saved
    loaded = ShineForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    assert loaded.backbone.dtype == torch.bfloat16
    assert loaded.hypernetwork.memory_tokens.dtype == torch.float32
    adapter = loaded.internalize(CONTEXT)
    assert adapter.dtype == torch.float32
    answer = loaded.generate_text("Who signed?", adapter=adapter, max_new_tokens=3)
    assert isinstance(answer, str)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda t: t.to(torch.int32), "has dtype torch.int32"),
        (lambda t: t.index_put_((torch.tensor([0]),), torch.tensor(float("nan"))), "NaN or infinite"),
        (lambda t: t.index_put_((torch.tensor([0]),), torch.tensor(float("inf"))), "NaN or infinite"),
    ],
    ids=["int32", "nan", "inf"],
)
def test_weights_of_a_wrong_dtype_or_not_finite_are_refused_by_name(saved, corrupt, match):
    from safetensors.torch import load_file, save_file

    _, directory, _ = saved
    weights = load_file(directory / "model.safetensors")
    name = "hypernetwork.memory_tokens"
    weights[name] = corrupt(weights[name].flatten().clone()).reshape(weights[name].shape)
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"'{name}'.*{match}"):
        ShineForCausalLM.from_pretrained(directory)


def test_a_copy_of_a_checkpoint_with_a_relative_backbone_path_still_loads(saved, tmp_path):
    """The shipped facts-shine names its backbone `../facts-llama`: a copy saved elsewhere must still find it."""
    model, directory, backbone_dir = saved
    assert json.loads((directory / "config.json").read_text())["backbone_name_or_path"] == "../backbone"
    loaded = ShineForCausalLM.from_pretrained(directory)
    assert loaded.config.backbone_name_or_path == str(backbone_dir.resolve())  # absolute in memory
    elsewhere = tmp_path / "deep" / "er" / "copy"
    loaded.save_pretrained(elsewhere)
    written = json.loads((elsewhere / "config.json").read_text())["backbone_name_or_path"]
    assert written == str(backbone_dir.resolve())  # neither inside nor beside: absolute
    _assert_same_adapter(model.internalize(CONTEXT), ShineForCausalLM.from_pretrained(elsewhere).internalize(CONTEXT))
    beside = tmp_path / "beside"
    loaded.save_pretrained(beside)
    assert json.loads((beside / "config.json").read_text())["backbone_name_or_path"] == "../backbone"
    assert "/" + str(tmp_path).strip("/") not in (beside / "README.md").read_text()
    _assert_same_adapter(model.internalize(CONTEXT), ShineForCausalLM.from_pretrained(beside).internalize(CONTEXT))


def test_the_shipped_facts_model_survives_a_copy(tmp_path):
    from shine_hf.assets import FACTS_SHINE

    model = ShineForCausalLM.from_pretrained(FACTS_SHINE)
    model.save_pretrained(tmp_path / "copy")
    copy = ShineForCausalLM.from_pretrained(tmp_path / "copy")
    _assert_same_adapter(model.internalize("Tarsk is a city."), copy.internalize("Tarsk is a city."))


def test_pushing_a_checkpoint_whose_backbone_is_a_local_path_needs_the_hub_id(saved):
    from shine_hf import ConfigError

    _, directory, _ = saved
    loaded = ShineForCausalLM.from_pretrained(directory)
    with pytest.raises(ConfigError, match=r"local path .* means nothing on the Hub.*backbone_name_or_path="):
        loaded.push_to_hub("someone/never-pushed")


def test_a_mistyped_local_path_says_it_does_not_exist(tmp_path):
    for path in ("./no-such-checkpoint", str(tmp_path / "missing"), "../nope/shine"):
        with pytest.raises(CheckpointError, match="No such checkpoint directory"):
            ShineForCausalLM.from_pretrained(path)
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(CheckpointError, match="is a file"):
        ShineForCausalLM.from_pretrained(tmp_path / "file.json")


def test_unknown_keyword_arguments_are_refused_and_backbone_options_passed_on(saved):
    _, directory, _ = saved
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*lora_sacle"):
        ShineForCausalLM.from_pretrained(directory, lora_sacle=0.1)
    loaded = ShineForCausalLM.from_pretrained(directory, attn_implementation="eager")
    assert loaded.backbone.config._attn_implementation == "eager"
    with pytest.raises(TypeError, match="attn_implementation only apply when the backbone is loaded by name"):
        ShineForCausalLM.from_pretrained(directory, backbone=tiny_backbone("qwen3"), attn_implementation="eager")
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        loaded.save_pretrained(directory, safe_serialisation=True)


def test_subfolder_is_honoured(saved, tmp_path):
    model, _, _ = saved
    root = tmp_path / "repo"
    model.save_pretrained(root / "sub")
    loaded = ShineForCausalLM.from_pretrained(root, subfolder="sub")
    _assert_same_adapter(model.internalize(CONTEXT), loaded.internalize(CONTEXT))
