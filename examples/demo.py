"""shine-hf in one minute, offline: document -> LoRA in one pass -> answers -> a real PEFT adapter.

Uses the small assets shipped with the package (no download): `facts-llama`, a 1.3M-parameter Llama
trained to answer questions about synthetic "facts" documents, and `facts-shine`, a SHINE
hypernetwork trained for it on CPU (benchmarks/learning.py). The document below comes from the
held-out test split: its entity was never seen in training. The models are toys that know only
this kind of document (their held-out scores are in benchmarks/RESULTS.md); the demo shows the
workflow and checks the numerics.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from shine_hf import ShineAdapter, ShineForCausalLM
from shine_hf.assets import FACTS_BACKBONE, FACTS_CONTEXT_TEMPLATE, FACTS_DATA, FACTS_SHINE
from shine_hf.testing.facts import synthetic_facts


def main() -> None:
    torch.manual_seed(0)
    model = ShineForCausalLM.from_pretrained(FACTS_SHINE, backbone=FACTS_BACKBONE)
    print(f"backbone: {sum(p.numel() for p in model.backbone.parameters()):,} params (frozen); "
          f"hypernetwork: {sum(p.numel() for p in model.hypernetwork.parameters()):,} params, "
          f"{model.config.num_memory_tokens} memory tokens")

    record = synthetic_facts(**FACTS_DATA)["test"][0]
    print(f"\ndocument (held out): {record['context']}")

    start = time.perf_counter()
    adapter = model.internalize(record["context"])
    print(f"internalize: one forward pass, {1e3 * (time.perf_counter() - start):.0f} ms -> {adapter}\n")

    system = model.config.system_prompt
    for question, answer in zip(record["questions"], record["answers"], strict=True):
        shine = model.generate_text(question, adapter=adapter, max_new_tokens=8)
        in_context = model.generate_text(question, context=record["context"], system_prompt=system,
                                         context_template=FACTS_CONTEXT_TEMPLATE, max_new_tokens=8)
        question_only = model.generate_text(question, system_prompt=system, max_new_tokens=8)
        print(f"Q: {question}\n   reference {answer!r} | SHINE {shine!r} | in-context {in_context!r} | "
              f"question only {question_only!r}")

    with tempfile.TemporaryDirectory() as tmp:
        adapter.save_pretrained(tmp)
        print(f"\nsaved a PEFT adapter: {sorted(p.name for p in Path(tmp).iterdir())}")
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(FACTS_BACKBONE), tmp).eval()
        ids = model.tokenizer(record["questions"][0], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ours = model(ids, adapter=adapter).logits
            theirs = peft_model(input_ids=ids).logits
        print(f"PeftModel.from_pretrained logits vs live adapter: max |diff| = {(ours - theirs).abs().max():.2e}")
        print(f"ShineAdapter.from_pretrained: {ShineAdapter.from_pretrained(tmp)}")


if __name__ == "__main__":
    main()
