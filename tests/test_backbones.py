"""Every supported family: the live adapter, the exported PEFT adapter and a hand recomputation agree."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from shine_hf.testing import BACKBONE_FAMILIES, tiny_backbone
from shine_hf.testing.models import tiny_shine

FAMILIES = sorted(BACKBONE_FAMILIES)
TOLERANCE = 1e-5


def _inputs(tokenizer):
    texts = ["Who signed the contract in Lyon?", "When was it signed?"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_export_reproduces_logits(family, tokenizer, tmp_path):
    model = tiny_shine(family)
    adapter = model.internalize("The contract was signed by Alice Moreau in Lyon on 3 March 1998.")
    input_ids, attention_mask = _inputs(tokenizer)
    with torch.no_grad():
        shine_logits = model(input_ids, attention_mask=attention_mask, adapter=adapter).logits
        base_logits = model(input_ids, attention_mask=attention_mask).logits
    assert (shine_logits - base_logits).abs().max() > 1e-3, "the adapter must change the logits"

    adapter.save_pretrained(tmp_path / "adapter")
    fresh = tiny_backbone(family)  # same seed -> same weights, a separate object for PEFT to wrap
    peft_model = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        peft_logits = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    mask = attention_mask.bool()
    assert torch.allclose(peft_logits[mask], shine_logits[mask], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_target_module_matches_hand_recomputation(family, tokenizer):
    model = tiny_shine(family)
    adapter = model.internalize("Alice signed in Lyon.")
    input_ids, attention_mask = _inputs(tokenizer)
    layer_index, target = 1, model.targets[0]
    module = model.backbone.get_submodule(model.layers_path)[layer_index].get_submodule(target.name)
    seen = {}
    handle = module.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    try:
        with torch.no_grad():
            model(input_ids, attention_mask=attention_mask, adapter=adapter)
    finally:
        handle.remove()
    x, y = seen["x"], seen["y"]
    weights = adapter.lora[layer_index][target.name]
    W = module.weight if target.fan_in_fan_out else module.weight.T  # (in, out)
    expected = x @ W + (x @ weights.A[0]) @ weights.B[0]
    if module.bias is not None:
        expected = expected + module.bias
    if weights.C is not None:
        expected = expected + weights.C[0]
    assert target.has_bias == (weights.C is not None)
    assert torch.allclose(y, expected, atol=TOLERANCE, rtol=0)


def test_bias_deltas_are_generated_where_modules_have_bias():
    qwen2 = tiny_shine("qwen2")
    biased = {t.name for t in qwen2.targets if t.has_bias}
    assert biased == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}
    gpt2 = tiny_shine("gpt2")
    assert [t.name for t in gpt2.targets] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert all(t.has_bias and t.fan_in_fan_out for t in gpt2.targets)
    phi3 = tiny_shine("phi3")
    assert [t.name for t in phi3.targets] == [
        "self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"
    ]
