"""SHINE model code: self-contained (torch + transformers), shipped with checkpoints as remote code."""

from .adapter import ShineAdapter
from .configuration_shine import ShineConfig
from .errors import (
    BackboneMismatchError,
    CheckpointError,
    ContextTooLongError,
    EmptyContextError,
    IncompatibleAdapterError,
    LocalPathError,
    ReferenceFormatError,
    ShineError,
    UnsupportedBackboneError,
)
from .lora import LoraWeights, TargetModule
from .modeling_shine import ShineForCausalLM, ShinePreTrainedModel

__all__ = [
    "BackboneMismatchError",
    "CheckpointError",
    "ContextTooLongError",
    "EmptyContextError",
    "IncompatibleAdapterError",
    "LocalPathError",
    "LoraWeights",
    "ReferenceFormatError",
    "ShineAdapter",
    "ShineConfig",
    "ShineError",
    "ShineForCausalLM",
    "ShinePreTrainedModel",
    "TargetModule",
    "UnsupportedBackboneError",
]
