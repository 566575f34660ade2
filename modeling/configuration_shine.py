"""SHINE configuration."""

from __future__ import annotations

import math
import numbers
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from .errors import ConfigError
from .lora import TargetModule

DEFAULT_SYSTEM_PROMPT = (
    "You are a concise assistant. Output only the final answer, in a few words, as short as "
    "possible. No explanations. Do not output anything else."
)

# M2P attention heads of the reference configurations (Qwen3-0.6B, 1.7B and 8B), by hidden size.
# The released checkpoints do not store the head count.
REFERENCE_M2P_HEADS: dict[int, int] = {1024: 8, 2048: 16, 4096: 32}

# Values the hypernetwork's weights depend on. A saved config always states them; one that lacks
# any of them is refused at load instead of silently taking a default the weights were not
# trained with.
WEIGHT_DEFINING_KEYS: tuple[str, ...] = (
    "backbone_config",
    "lora_rank",
    "metalora_rank",
    "m2p_num_layers",
    "m2p_num_heads",
    "m2p_ffn_dim",
    "lora_scale",
    "target_modules",
    "target_module_shapes",
)


def default_m2p_num_heads(backbone_config: PretrainedConfig) -> int:
    """M2P heads when not given: the reference configuration's value for its hidden sizes (32 for
    Qwen3-8B's 4096), otherwise the backbone's attention head count if it divides the hidden size,
    otherwise 1."""
    hidden = backbone_config.hidden_size
    if hidden in REFERENCE_M2P_HEADS:
        return REFERENCE_M2P_HEADS[hidden]
    heads = getattr(backbone_config, "num_attention_heads", None)
    return heads if heads and hidden % heads == 0 else 1


class ShineConfig(PretrainedConfig):
    r"""
    Configuration of a SHINE hypernetwork (arXiv 2602.06358) for a frozen decoder-only backbone.

    A checkpoint holds only the hypernetwork; the backbone is referenced by name and revision and
    its own configuration is embedded here, so shapes can be validated before any weight is read.
    The method and every size below are explained in `docs/method.md`.

    Args:
        backbone_name_or_path (`str`, *optional*):
            Hub id or local path of the backbone causal LM that the hypernetwork adapts. A relative
            local path is relative to the checkpoint directory.
        backbone_revision (`str`, *optional*):
            Revision (branch, tag or commit) of the backbone on the Hub.
        backbone_config (`dict`, *optional*):
            The backbone's own configuration (`backbone.config.to_dict()`).
        lora_rank (`int`, *optional*, defaults to 8):
            Rank r of the generated LoRA.
        metalora_rank (`int`, *optional*, defaults to 128):
            Rank R of the static, trained meta-LoRA active while the context is read.
        m2p_num_layers (`int`, *optional*, defaults to 4):
            Number of M2P transformer layers; must be even (layer-axis and token-axis attention
            alternate).
        m2p_num_heads (`int`, *optional*):
            Attention heads of the M2P layers. Defaults to the reference configuration's value for the
            backbone's hidden size (32 for Qwen3-8B), else the backbone's attention heads when they
            divide the hidden size, else 1.
        m2p_ffn_dim (`int`, *optional*):
            Feed-forward width of the M2P layers. Defaults to twice the hidden size.
        lora_scale (`float`, *optional*, defaults to 0.001):
            Scale s > 0: A and B are multiplied by sqrt(s), bias deltas C by s.
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

    Derived (read-only properties): `hidden_size`, `num_hidden_layers`, `targets`,
    `lora_numel_per_layer` (P) and `num_memory_tokens` (M = ceil(P / H)).

    A config read from a file (`from_pretrained` / `from_dict`) must state every value the weights
    depend on (`WEIGHT_DEFINING_KEYS`): defaults apply only to configs built in code.
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
        if self.backbone_config is not None:
            backbone = self.get_backbone_config()
            if self.m2p_num_heads is None:
                self.m2p_num_heads = default_m2p_num_heads(backbone)
            if self.m2p_ffn_dim is None:
                self.m2p_ffn_dim = 2 * backbone.hidden_size
        self.validate()
        super().__post_init__(**kwargs)

    def validate(self) -> None:
        """Raise `ConfigError` naming the first value of the wrong type or out of range."""
        _require_int("lora_rank", self.lora_rank, minimum=1)
        _require_int("metalora_rank", self.metalora_rank, minimum=1)
        _require_int("m2p_num_layers", self.m2p_num_layers, minimum=2)
        if self.m2p_num_layers % 2:
            raise ConfigError(
                f"m2p_num_layers must be a positive even number (layer and token attention alternate), "
                f"got {self.m2p_num_layers}."
            )
        if self.m2p_num_heads is not None:
            _require_int("m2p_num_heads", self.m2p_num_heads, minimum=1)
        if self.m2p_ffn_dim is not None:
            _require_int("m2p_ffn_dim", self.m2p_ffn_dim, minimum=1)
        if (
            isinstance(self.lora_scale, bool)
            or not isinstance(self.lora_scale, numbers.Real)
            or not math.isfinite(self.lora_scale)
            or self.lora_scale <= 0
        ):
            raise ConfigError(f"lora_scale must be a finite number > 0, got {self.lora_scale!r}.")
        if self.target_module_shapes is not None:
            self._validate_targets()
        if self.backbone_config is not None:
            hidden = self.get_backbone_config().hidden_size
            if self.m2p_num_heads and hidden % self.m2p_num_heads:
                raise ConfigError(
                    f"m2p_num_heads={self.m2p_num_heads} does not divide the backbone's hidden size {hidden}."
                )

    def _validate_targets(self) -> None:
        shapes = self.target_module_shapes
        if not isinstance(shapes, dict) or not shapes:
            raise ConfigError(f"target_module_shapes must be a non-empty mapping, got {shapes!r}.")
        for name, shape in shapes.items():
            valid = (
                isinstance(shape, (list, tuple))
                and len(shape) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
                and shape[0] > 0
                and shape[1] > 0
                and shape[2] in (0, 1)
            )
            if not valid:
                raise ConfigError(
                    f"target_module_shapes[{name!r}] must be [in_features > 0, out_features > 0, has_bias 0|1], "
                    f"got {shape!r}."
                )
        if self.target_modules is not None and (
            len(set(self.target_modules)) != len(self.target_modules) or set(self.target_modules) != set(shapes)
        ):
            raise ConfigError(
                f"target_modules {list(self.target_modules)} and the keys of target_module_shapes "
                f"{sorted(shapes)} must name the same modules, each once."
            )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> ShineConfig:
        """Build a config from a saved dict, refusing one that lacks a value the weights depend on."""
        missing = [key for key in WEIGHT_DEFINING_KEYS if config_dict.get(key) is None]
        if missing:
            raise ConfigError(
                f"This SHINE config does not state {', '.join(missing)}: the hypernetwork's weights depend on "
                f"{'them' if len(missing) > 1 else 'it'}, so a default could silently change every answer. "
                f"Add the value(s) the weights were trained with to config.json."
            )
        return super().from_dict(config_dict, **kwargs)

    def get_backbone_config(self) -> PretrainedConfig:
        """The embedded backbone configuration as a transformers config object."""
        if self.backbone_config is None:
            raise ConfigError("This ShineConfig has no backbone_config; build it with from_backbone.")
        cached = self.__dict__.get("_backbone_config_cache")
        if cached is None or cached[0] is not self.backbone_config:
            values = dict(self.backbone_config)
            if "model_type" not in values:
                raise ConfigError("backbone_config has no model_type.")
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
    def targets(self) -> list[TargetModule]:
        """The target modules in reading order (`target_modules`), with their shapes."""
        shapes = self.target_module_shapes
        if not shapes:
            raise ConfigError("This ShineConfig has no target_module_shapes; build it with from_backbone.")
        order = self.target_modules if self.target_modules is not None else list(shapes)
        return [TargetModule(name, shapes[name][0], shapes[name][1], bool(shapes[name][2])) for name in order]

    @property
    def lora_numel_per_layer(self) -> int:
        """P = sum over target modules of r*(in+out) (+out where the module has a bias)."""
        return sum(t.lora_numel(self.lora_rank) for t in self.targets)

    @property
    def num_memory_tokens(self) -> int:
        """M = ceil(P / H): memory tokens per context (numbers past P are unused)."""
        return math.ceil(self.lora_numel_per_layer / self.hidden_size)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_backbone_config_cache", None)
        return output


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
