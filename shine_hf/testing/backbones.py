"""Tiny random backbones of every supported family, built from configs (no download)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

# Family -> config overrides. Sizes are tiny but keep each family's distinctive structure:
# GQA (num_key_value_heads < heads), q/k norms (Qwen3, Gemma3), q/k/v biases (Qwen2), fused
# qkv/gate_up (Phi-3), Conv1D with biases and absolute positions (GPT-2).
# Special ids match build_chat_tokenizer(): 0 <|endoftext|> (pad/bos), 2 <|im_end|> (eos).
_SPECIAL = dict(bos_token_id=0, eos_token_id=2, pad_token_id=0)
_COMMON = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **_SPECIAL)
BACKBONE_FAMILIES: dict[str, dict[str, Any]] = {
    "qwen3": dict(_COMMON, head_dim=8),
    "qwen2": dict(_COMMON),
    "llama": dict(_COMMON),
    "mistral": dict(_COMMON, head_dim=8),
    "gemma": dict(_COMMON, head_dim=8),
    "gemma2": dict(_COMMON, head_dim=8),
    "gemma3_text": dict(_COMMON, head_dim=8, sliding_window=64),
    "phi3": dict(_COMMON),
    "gpt2": dict(vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_positions=512, **_SPECIAL),
}


def tiny_backbone_config(family: str, **overrides: Any) -> PretrainedConfig:
    """The config of a tiny `family` backbone (see BACKBONE_FAMILIES), float32, eager-safe."""
    if family not in BACKBONE_FAMILIES:
        raise ValueError(f"Unknown family {family!r}; choose from {sorted(BACKBONE_FAMILIES)}")
    values = {**BACKBONE_FAMILIES[family], **overrides}
    return AutoConfig.for_model(family, **values)


def tiny_backbone(family: str, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A tiny randomly initialised causal LM of `family`, deterministic given `seed`, in eval mode."""
    config = tiny_backbone_config(family, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()
