"""shine-hf in one minute, offline: document -> LoRA in one pass -> answers -> a real PEFT adapter.

Runs on CPU with a tiny randomly initialised Qwen3-style backbone built from a config, so it needs
no download. The hypernetwork here is untrained, so its answers are noise: the demo shows the
API and checks the numerics (the exported PEFT adapter reproduces the generated LoRA's logits).
"""

from __future__ import annotations

import tempfile
import time

import torch
from peft import PeftModel

from shine_hf import ShineAdapter, ShineForCausalLM
from shine_hf.testing import build_chat_tokenizer, tiny_backbone

DOCUMENT = (
    "The supply contract between Veloria Mining and Tarsk Steel was signed by Alice Moreau "
    "in Lyon on 3 March 1998. It runs for 12 years."
)


def main() -> None:
    torch.manual_seed(0)
    backbone = tiny_backbone("qwen3")
    model = ShineForCausalLM.from_backbone(backbone, tokenizer=build_chat_tokenizer(), lora_rank=4, metalora_rank=8)
    print(f"backbone: {type(backbone).__name__}, {sum(p.numel() for p in backbone.parameters()):,} params (frozen)")
    print(f"hypernetwork: {sum(p.numel() for p in model.hypernetwork.parameters()):,} params, "
          f"{model.config.num_memory_tokens} memory tokens, targets {model.config.target_modules}")

    start = time.perf_counter()
    adapter = model.internalize(DOCUMENT)
    print(f"\ninternalize: one forward pass, {time.perf_counter() - start:.3f} s -> {adapter}")

    question = "Who signed the contract?"
    print(f"Q: {question}")
    print(f"A (untrained hypernetwork, so noise): {model.generate_text(question, adapter=adapter, max_new_tokens=8)!r}")

    with tempfile.TemporaryDirectory() as tmp:
        adapter.save_pretrained(tmp)
        print(f"\nsaved a PEFT adapter: {sorted(p.name for p in __import__('pathlib').Path(tmp).iterdir())}")
        peft_model = PeftModel.from_pretrained(tiny_backbone("qwen3"), tmp).eval()
        ids = model.tokenizer(question, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ours = model(ids, adapter=adapter).logits
            theirs = peft_model(input_ids=ids).logits
        print(f"PeftModel.from_pretrained logits vs live adapter: max |diff| = {(ours - theirs).abs().max():.2e}")
        reloaded = ShineAdapter.from_pretrained(tmp)
        print(f"ShineAdapter.from_pretrained: {reloaded}")


if __name__ == "__main__":
    main()
