"""Tiny SHINE models with randomised hypernetworks, for tests and benchmarks.

A freshly initialised hypernetwork has a no-op meta-LoRA (B = 0) and zero memory tokens, which
would hide mistakes in tests; `randomize_hypernetwork` gives every trainable tensor random values.
"""

from __future__ import annotations

from typing import Any

import torch

from ..modeling import ShineForCausalLM
from .backbones import tiny_backbone
from .tokenizers import build_chat_tokenizer


def randomize_hypernetwork(model: ShineForCausalLM, seed: int = 0, std: float = 0.5) -> ShineForCausalLM:
    """Fill every hypernetwork parameter with N(0, std²) noise (deterministic given `seed`)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.hypernetwork.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * std
            parameter.copy_(noise.to(parameter.dtype))
    return model


def tiny_shine(
    family: str = "qwen3",
    seed: int = 0,
    randomize: bool = True,
    backbone_overrides: dict[str, Any] | None = None,
    **config_kwargs: Any,
) -> ShineForCausalLM:
    """A tiny `family` backbone wrapped in a SHINE model with a local tokenizer, in eval mode.

    Defaults: lora_rank 4, metalora_rank 4, lora_scale 0.05 (large enough that LoRA effects are far
    above float32 noise in tests).
    """
    config_kwargs = {"lora_rank": 4, "metalora_rank": 4, "lora_scale": 0.05, **config_kwargs}
    backbone = tiny_backbone(family, seed=seed, **(backbone_overrides or {}))
    torch.manual_seed(seed)
    model = ShineForCausalLM.from_backbone(backbone, tokenizer=build_chat_tokenizer(), **config_kwargs)
    if randomize:
        randomize_hypernetwork(model, seed=seed)
    return model.eval()
