"""ShineAdapter: PEFT files, merging, reloading, and refusing what does not fit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from shine_hf import CheckpointError, IncompatibleAdapterError, ShineAdapter
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
