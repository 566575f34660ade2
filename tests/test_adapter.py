"""ShineAdapter: PEFT files, merging, reloading, and refusing what does not fit."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from shine_hf import CheckpointError, IncompatibleAdapterError, ShineAdapter
from shine_hf.testing import tiny_backbone
from shine_hf.testing.models import tiny_shine

CONTEXT = "The contract was signed by Alice Moreau in Lyon on 3 March 1998."


@pytest.fixture(scope="module", params=["qwen2", "gpt2", "phi3"])
def model(request):
    return tiny_shine(request.param)


def _logits(model, adapter=None):
    ids = model.tokenizer(["Who signed the contract?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids, adapter=adapter).logits


def test_saved_files_are_a_standard_peft_lora(model, tmp_path):
    adapter = model.internalize(CONTEXT)
    adapter.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == adapter.rank
    assert set(config["target_modules"]) == {t.name for t in model.targets}
    assert config["lora_bias"] is adapter.has_bias_deltas is any(t.has_bias for t in model.targets)
    state = load_file(tmp_path / "adapter_model.safetensors")
    name = model.targets[0].name
    key = f"base_model.model.{model.layers_path}.0.{name}"
    weights = adapter.lora[0][name]
    assert torch.equal(state[f"{key}.lora_A.weight"], weights.A[0].T)
    assert torch.equal(state[f"{key}.lora_B.weight"], weights.B[0].T)
    if weights.C is not None:
        assert torch.equal(state[f"{key}.lora_B.bias"], weights.C[0])  # the bias delta survives exactly


def test_reloaded_adapter_gives_identical_logits(model, tmp_path):
    adapter = model.internalize(CONTEXT)
    adapter.save_pretrained(tmp_path)
    reloaded = ShineAdapter.from_pretrained(tmp_path)
    assert [t.name for t in reloaded.targets] == [t.name for t in model.targets]
    assert torch.equal(_logits(model, adapter), _logits(model, reloaded))


def test_merge_equals_live_adapter_and_unmerge_restores(model):
    adapter = model.internalize(CONTEXT)
    live = _logits(model, adapter)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    adapter.merge_into(model.backbone)
    try:
        merged = _logits(model)
    finally:
        adapter.unmerge_from(model.backbone)
    assert torch.allclose(merged, live, atol=1e-5)
    for key, value in model.backbone.state_dict().items():
        assert torch.allclose(value, before[key], atol=1e-6), key


def test_merge_needs_a_single_adapter(model):
    adapters = model.internalize([CONTEXT, "Another one."])
    with pytest.raises(IncompatibleAdapterError, match="single adapter"):
        adapters.merge_into(model.backbone)


def test_adapter_for_other_shapes_is_refused():
    small = tiny_shine("qwen3")
    wide = tiny_shine("qwen3", backbone_overrides={"hidden_size": 64})
    adapter = wide.internalize(CONTEXT)
    with pytest.raises(IncompatibleAdapterError, match=r"32->32|64->"):
        small(small.tokenizer("hi", return_tensors="pt")["input_ids"], adapter=adapter)
    deep = tiny_shine("qwen3", backbone_overrides={"num_hidden_layers": 3})
    with pytest.raises(IncompatibleAdapterError, match="3 layers vs the backbone's 2"):
        small.generate_text("hi", adapter=deep.internalize(CONTEXT))


def test_batch_size_mismatch_is_a_clear_error():
    model = tiny_shine("llama")
    adapters = model.internalize([CONTEXT, "b", "c"])
    ids = model.tokenizer(["one", "two"], padding=True, return_tensors="pt")["input_ids"]
    with pytest.raises(IncompatibleAdapterError, match=r"adapter batch of 3.*batch of 2"):
        model(ids, adapter=adapters)


def test_corrupt_or_missing_adapter_files(tmp_path):
    model = tiny_shine("llama")
    model.internalize(CONTEXT).save_pretrained(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="missing"):
        ShineAdapter.from_pretrained(tmp_path)  # an existing dir without adapter files
    weights = tmp_path / "ok" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="safetensors"):
        ShineAdapter.from_pretrained(tmp_path / "ok")


def test_save_is_atomic(tmp_path, monkeypatch):
    model = tiny_shine("llama")
    adapter = model.internalize(CONTEXT)
    import shine_hf.modeling.adapter as adapter_module

    def broken_save_file(*args, **kwargs):
        raise OSError("no space left")

    monkeypatch.setattr(adapter_module, "save_file", broken_save_file)
    with pytest.raises(OSError, match="no space"):
        adapter.save_pretrained(tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_adapter_moves_and_casts():
    model = tiny_shine("llama")
    adapter = model.internalize(CONTEXT).to(torch.float64)
    assert adapter.dtype == torch.float64 and adapter.device.type == "cpu"
    assert "ShineAdapter(batch=1" in repr(adapter)


# ---------------------------------------------------------------------- merging: check first, track state
def _weights(backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in backbone.state_dict().items()}


def _unchanged(backbone, before) -> bool:
    return all(torch.equal(value, before[key]) for key, value in backbone.state_dict().items())


@pytest.mark.parametrize("adapter_layers, backbone_layers", [(2, 4), (3, 2)])
def test_merge_into_a_backbone_of_other_depth_changes_nothing(adapter_layers, backbone_layers):
    adapter = tiny_shine("qwen3", backbone_overrides={"num_hidden_layers": adapter_layers}).internalize(CONTEXT)
    backbone = tiny_backbone("qwen3", num_hidden_layers=backbone_layers)
    before = _weights(backbone)
    with pytest.raises(IncompatibleAdapterError, match=f"{adapter_layers} layers vs the backbone's {backbone_layers}"):
        adapter.merge_into(backbone)
    assert _unchanged(backbone, before)


def test_merge_refuses_a_bias_delta_for_a_module_without_bias():
    adapter = tiny_shine("qwen2").internalize(CONTEXT)  # q/k/v carry bias deltas
    backbone = tiny_backbone("qwen2")
    for layer in backbone.model.layers:
        layer.self_attn.v_proj.bias = None
    before = _weights(backbone)
    with pytest.raises(IncompatibleAdapterError, match="v_proj carries a non-zero bias delta but has no bias"):
        adapter.merge_into(backbone)
    assert _unchanged(backbone, before)


def test_merge_refuses_other_modules_and_shapes():
    adapter = tiny_shine("qwen3").internalize(CONTEXT)
    for backbone, message in [
        (tiny_backbone("gpt2"), "does not exist in decoder layer 0"),
        (tiny_backbone("qwen3", intermediate_size=48), "32->64 in the adapter but 32->48"),
    ]:
        before = _weights(backbone)
        with pytest.raises(IncompatibleAdapterError, match=message):
            adapter.merge_into(backbone)
        assert _unchanged(backbone, before)


def test_merge_state_is_tracked_on_the_backbone():
    model = tiny_shine("qwen3")
    adapter = model.internalize(CONTEXT)
    backbone = tiny_backbone("qwen3")
    original = _weights(backbone)
    with pytest.raises(IncompatibleAdapterError, match="not merged into this backbone"):
        adapter.unmerge_from(backbone)  # never merged
    assert _unchanged(backbone, original)

    adapter.merge_into(backbone)
    merged = _weights(backbone)
    with pytest.raises(IncompatibleAdapterError, match="already merged"):
        adapter.merge_into(backbone)
    assert _unchanged(backbone, merged)
    assert backbone.state_dict().keys() == original.keys()  # the record is no parameter or buffer

    adapter[0].unmerge_from(backbone)  # another object holding the same weights: the same adapter
    for key, value in backbone.state_dict().items():
        assert torch.allclose(value, original[key], atol=1e-6), key
    restored = _weights(backbone)
    with pytest.raises(IncompatibleAdapterError, match="already unmerged"):
        adapter.unmerge_from(backbone)
    assert _unchanged(backbone, restored)


def test_two_adapters_merge_and_unmerge_in_any_order():
    model = tiny_shine("gpt2")
    first, second = model.internalize([CONTEXT, "Bob signed in Paris."])
    ids = model.tokenizer(["Who signed the contract?"], return_tensors="pt")["input_ids"]
    backbone = tiny_backbone("gpt2")
    original = _weights(backbone)
    first.merge_into(backbone)
    second.merge_into(backbone)
    with torch.no_grad():
        both = backbone(input_ids=ids).logits
    first.unmerge_from(backbone)
    with torch.no_grad():
        only_second = backbone(input_ids=ids).logits
        assert torch.allclose(only_second, model(ids, adapter=second).logits, atol=1e-5)
    assert not torch.allclose(both, only_second, atol=1e-3)
    second.unmerge_from(backbone)
    for key, value in backbone.state_dict().items():
        assert torch.allclose(value, original[key], atol=1e-6), key


def test_merge_handles_zero_bias_deltas_that_peft_cannot_merge(tmp_path):
    model = tiny_shine("qwen2")  # bias deltas on q/k/v; o_proj and the MLP export a zero lora_B.bias
    model.internalize(CONTEXT).save_pretrained(tmp_path)
    ids = model.tokenizer(["Who signed the contract?"], return_tensors="pt")["input_ids"]
    peft_model = PeftModel.from_pretrained(tiny_backbone("qwen2"), tmp_path).eval()
    with torch.no_grad():
        via_peft = peft_model(input_ids=ids).logits
    with pytest.raises(RuntimeError, match="Impossible to merge LoRA with `lora_bias=True`"):
        peft_model.merge_and_unload()
    backbone = tiny_backbone("qwen2")
    ShineAdapter.from_pretrained(tmp_path).merge_into(backbone)
    with torch.no_grad():
        merged = backbone(input_ids=ids).logits
    assert torch.allclose(merged, via_peft, atol=1e-5)


# ---------------------------------------------------------------------- saving
def test_save_over_an_older_adapter_leaves_exactly_the_new_one(tmp_path):
    model = tiny_shine("llama")
    old, new = model.internalize([CONTEXT, "Bob signed in Paris."])
    old.save_pretrained(tmp_path)
    torch.save({}, tmp_path / "adapter_model.bin")  # an older PEFT save's pickled weights
    new.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json",
                                                          "adapter_model.safetensors"]
    reloaded = ShineAdapter.from_pretrained(tmp_path)
    assert torch.equal(_logits(model, reloaded), _logits(model, new))


def test_save_arguments(tmp_path):
    model = tiny_shine("llama")
    adapter = model.internalize(CONTEXT)
    with pytest.raises(TypeError, match="max_shard_size"):
        adapter.save_pretrained(tmp_path / "adapter", max_shard_size="1GB")
    with pytest.raises(ValueError, match="safe_serialization=False"):
        adapter.save_pretrained(tmp_path / "adapter", safe_serialization=False)
    assert list(tmp_path.iterdir()) == []


def test_save_on_other_processes_writes_nothing(tmp_path):
    tiny_shine("llama").internalize(CONTEXT).save_pretrained(tmp_path / "adapter", is_main_process=False)
    assert list(tmp_path.iterdir()) == []
