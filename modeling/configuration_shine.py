"""SHINE configuration."""

from __future__ import annotations

import math
from typing import Any

from transformers import AutoConfig, PretrainedConfig

DEFAULT_SYSTEM_PROMPT = (
    "You are a concise assistant. Output only the final answer, in a few words, as short as "
    "possible. No explanations. Do not output anything else."
)


class ShineConfig(PretrainedConfig):
    r"""
    Configuration of a SHINE hypernetwork (arXiv 2602.06358) for a frozen decoder-only backbone.

    A checkpoint holds only the hypernetwork; the backbone is referenced by name and revision and
    its own configuration is embedded here, so shapes can be validated before any weight is read.

    Args:
        backbone_name_or_path (`str`, *optional*):
            Hub id or local path of the backbone causal LM that the hypernetwork adapts.
        backbone_revision (`str`, *optional*):
            Revision (branch, tag or commit) of the backbone on the Hub.
        backbone_config (`dict`, *optional*):
            The backbone's own configuration (`backbone.config.to_dict()`).
        lora_rank (`int`, *optional*, defaults to 8):
            Rank r of the generated LoRA.
        metalora_rank (`int`, *optional*, defaults to 128):
            Rank R of the static, trained meta-LoRA active while the context is encoded.
        m2p_num_layers (`int`, *optional*, defaults to 4):
            Number of M2P transformer layers; must be even (layer-axis and token-axis alternate).
        m2p_num_heads (`int`, *optional*):
            Attention heads of the M2P layers. Defaults to the backbone's attention heads when they
            divide the hidden size (32 for Qwen3-8B, as in the reference configuration).
        m2p_ffn_dim (`int`, *optional*):
            Feed-forward width of the M2P layers. Defaults to twice the hidden size.
        lora_scale (`float`, *optional*, defaults to 0.001):
            Scale s: A and B are multiplied by sqrt(s), bias deltas C by s.
        target_modules (`list[str]`, *optional*):
            Target projections, as paths relative to a decoder layer (e.g. `self_attn.q_proj`), in
            the order their parameters are read from the M2P output.
        target_module_shapes (`dict[str, list[int]]`, *optional*):
            `[in_features, out_features, has_bias]` of every target module.
        layers_path (`str`, *optional*):
            Path of the decoder-layer `ModuleList` inside the backbone (e.g. `model.layers`).
        system_prompt (`str`, *optional*):
            System prompt of the baselines (document in the prompt, question only). SHINE answers
            never use a system prompt.
        num_memory_tokens (derived, read-only):
            ceil(per-layer LoRA parameter count / hidden size).
    """

    model_type = "shine"

    backbone_name_or_path: str | None = None
    backbone_revision: str | None = None
    backbone_config: dict[str, Any] | None = None
    lora_rank: int = 8
    metalora_rank: int = 128
    m2p_num_layers: int = 4
    m2p_num_heads: int | None = None
    m2p_ffn_dim: int | None = None
    lora_scale: float = 0.001
    target_modules: list[str] | None = None
    target_module_shapes: dict[str, list[int]] | None = None
    layers_path: str | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    def __post_init__(self, **kwargs: Any) -> None:
        if self.m2p_num_layers <= 0 or self.m2p_num_layers % 2:
            raise ValueError(
                f"m2p_num_layers must be a positive even number (layer and token attention "
                f"alternate), got {self.m2p_num_layers}."
            )
        if self.lora_rank <= 0 or self.metalora_rank <= 0:
            raise ValueError(
                f"lora_rank and metalora_rank must be positive, got {self.lora_rank} and "
                f"{self.metalora_rank}."
            )
        if self.backbone_config is not None:
            backbone = self.get_backbone_config()
            if self.m2p_num_heads is None:
                heads = getattr(backbone, "num_attention_heads", None)
                self.m2p_num_heads = heads if heads and backbone.hidden_size % heads == 0 else 1
            if self.m2p_ffn_dim is None:
                self.m2p_ffn_dim = 2 * backbone.hidden_size
            if self.m2p_num_heads and backbone.hidden_size % self.m2p_num_heads:
                raise ValueError(
                    f"m2p_num_heads={self.m2p_num_heads} does not divide the backbone's hidden size "
                    f"{backbone.hidden_size}."
                )
        super().__post_init__(**kwargs)

    def get_backbone_config(self) -> PretrainedConfig:
        """The embedded backbone configuration as a transformers config object."""
        if self.backbone_config is None:
            raise ValueError("This ShineConfig has no backbone_config; build it with from_backbone.")
        cached = self.__dict__.get("_backbone_config_cache")
        if cached is None or cached[0] is not self.backbone_config:
            values = dict(self.backbone_config)
            config = AutoConfig.for_model(values.pop("model_type"), **values)
            cached = (self.backbone_config, config)
            self.__dict__["_backbone_config_cache"] = cached
        return cached[1]

    @property
    def hidden_size(self) -> int:
        """Hidden size H of the backbone (and of memory tokens and M2P)."""
        return self.get_backbone_config().hidden_size

    @property
    def num_hidden_layers(self) -> int:
        """Number L of decoder layers of the backbone."""
        return self.get_backbone_config().num_hidden_layers

    @property
    def lora_numel_per_layer(self) -> int:
        """P = sum over target modules of r*(in+out) (+out where the module has a bias)."""
        if not self.target_module_shapes:
            raise ValueError("This ShineConfig has no target_module_shapes; build it with from_backbone.")
        return sum(
            self.lora_rank * (fan_in + fan_out) + (fan_out if has_bias else 0)
            for fan_in, fan_out, has_bias in self.target_module_shapes.values()
        )

    @property
    def num_memory_tokens(self) -> int:
        """M = ceil(P / H): memory tokens per context (numbers past P are unused)."""
        return math.ceil(self.lora_numel_per_layer / self.hidden_size)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_backbone_config_cache", None)
        return output
