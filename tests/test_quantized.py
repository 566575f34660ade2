"""bitsandbytes-quantized backbones (4-bit NF4 and 8-bit, run on the CPU): internalize and generation work
through the LoRA hooks on `Linear4bit` / `Linear8bitLt`; merging into quantized weights is refused."""

from __future__ import annotations

import warnings

import pytest
import torch

bitsandbytes = pytest.importorskip("bitsandbytes", reason="the quantization extra (bitsandbytes) is not installed")

from transformers import BitsAndBytesConfig  # noqa: E402

from shine_hf import IncompatibleAdapterError, ShineForCausalLM  # noqa: E402
from shine_hf.assets import FACTS_DATA, FACTS_SHINE  # noqa: E402
from shine_hf.testing.facts import synthetic_facts  # noqa: E402

NF4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
INT8 = BitsAndBytesConfig(load_in_8bit=True)


@pytest.fixture(scope="module")
def records():
    return synthetic_facts(**FACTS_DATA)["test"]


def _answers(model, records):
    adapters = model.internalize([r["context"] for r in records])
    questions = [q for r in records for q in r["questions"]]
    index = [i for i, r in enumerate(records) for _ in r["questions"]]
    return model.generate_text(questions, adapter=adapters, adapter_index=index, max_new_tokens=8)


def _quantized(config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes' notes about CPU kernels and fp16 casts
        return ShineForCausalLM.from_pretrained(FACTS_SHINE, quantization_config=config, device_map="cpu")


@pytest.mark.parametrize("config, documents", [(NF4, 10), (INT8, 1)], ids=["4bit-nf4", "8bit"])
def test_a_quantized_backbone_answers_like_the_float_one(records, config, documents):
    held_out = records.select(range(documents))
    model = _quantized(config)
    layer = model.backbone.get_submodule(model.layers_path)[0].get_submodule(model.targets[0].name)
    assert type(layer).__name__ in ("Linear4bit", "Linear8bitLt")
    assert [(t.in_features, t.out_features) for t in model.targets] == [
        (t.in_features, t.out_features) for t in ShineForCausalLM.from_pretrained(FACTS_SHINE).targets
    ]
    assert not model._fold_meta_lora(requires_grad=False)  # quantized weights: the low-rank path
    float_answers = _answers(ShineForCausalLM.from_pretrained(FACTS_SHINE), held_out)
    assert _answers(model, held_out) == float_answers
    gold = [a for r in held_out for a in r["answers"]]
    assert sum(a == g for a, g in zip(float_answers, gold)) >= 0.9 * len(gold)


def test_merging_into_quantized_weights_is_refused_before_any_change(records):
    model = _quantized(NF4)
    adapter = model.internalize(records[0]["context"])
    layer = model.backbone.get_submodule(model.layers_path)[0].get_submodule(model.targets[0].name)
    before = layer.weight.clone()
    with pytest.raises(IncompatibleAdapterError, match=r"(?i)quantiz|floating"):
        adapter.merge_into(model.backbone)
    assert torch.equal(layer.weight, before)
