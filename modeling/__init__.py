"""SHINE model code: self-contained (torch + transformers), shipped with checkpoints as remote code."""

from .adapter import ShineAdapter
from .configuration_shine import ShineConfig
from .errors import (
    BackboneMismatchError,
    CheckpointError,
    ConfigError,
    ContextTooLongError,
    EmptyContextError,
    IncompatibleAdapterError,
    InvalidInputError,
    ReferenceFormatError,
    ShineError,
    UnsupportedBackboneError,
)
from .inputs import pad_token_ids
from .lora import LoraWeights, TargetModule
from .modeling_shine import ShineForCausalLM
from .pretrained import ShinePreTrainedModel

__all__ = [
    "BackboneMismatchError",
    "CheckpointError",
    "ConfigError",
    "ContextTooLongError",
    "EmptyContextError",
    "IncompatibleAdapterError",
    "InvalidInputError",
    "LoraWeights",
    "ReferenceFormatError",
    "ShineAdapter",
    "ShineConfig",
    "ShineError",
    "ShineForCausalLM",
    "ShinePreTrainedModel",
    "TargetModule",
    "UnsupportedBackboneError",
    "pad_token_ids",
]
