"""shine-hf: SHINE hypernetworks for Hugging Face transformers and PEFT.

    from shine_hf import ShineForCausalLM
    model = ShineForCausalLM.from_pretrained("org/shine-qwen3-8b")
    adapter = model.internalize(open("report.txt").read())
    model.generate_text("Who signed the contract?", adapter=adapter)
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .adapter import ShineAdapter
from .modeling import (
    BackboneMismatchError,
    CheckpointError,
    ConfigError,
    ContextTooLongError,
    EmptyContextError,
    IncompatibleAdapterError,
    InvalidInputError,
    ReferenceFormatError,
    ShineConfig,
    ShineError,
    ShineForCausalLM,
    UnsupportedBackboneError,
)

__version__ = "0.1.0"

from .hub import register_card_renderers

register_card_renderers()
AutoConfig.register("shine", ShineConfig, exist_ok=True)
AutoModelForCausalLM.register(ShineConfig, ShineForCausalLM, exist_ok=True)

__all__ = [
    "BackboneMismatchError",
    "CheckpointError",
    "ConfigError",
    "ContextTooLongError",
    "EmptyContextError",
    "IncompatibleAdapterError",
    "InvalidInputError",
    "ReferenceFormatError",
    "ShineAdapter",
    "ShineConfig",
    "ShineError",
    "ShineForCausalLM",
    "UnsupportedBackboneError",
    "__version__",
]
