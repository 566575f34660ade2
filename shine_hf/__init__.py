"""shine-hf: SHINE hypernetworks for Hugging Face transformers and PEFT.

    from shine_hf import ShineForCausalLM
    model = ShineForCausalLM.from_pretrained("org/shine-qwen3-8b")
    adapter = model.internalize(open("report.txt").read())
    model.generate_text("Who signed the contract?", adapter=adapter)

Importing `shine_hf` is cheap: the names below are resolved on first use (PEP 562), so the
`shine` command line starts without importing torch or transformers. The first name taken from
here also registers the "shine" model type with `AutoConfig` / `AutoModelForCausalLM` and the
model-card renderers (`shine_hf.hub`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from .routing import RoutedAdapter

DISTRIBUTION = "shine-hf"

__all__ = [
    "BackboneMismatchError",
    "CheckpointError",
    "ConfigError",
    "ContextTooLongError",
    "EmptyContextError",
    "IncompatibleAdapterError",
    "InvalidInputError",
    "ReferenceFormatError",
    "RoutedAdapter",
    "ShineAdapter",
    "ShineConfig",
    "ShineError",
    "ShineForCausalLM",
    "UnsupportedBackboneError",
    "__version__",
]
# The module (relative to this package) that defines a public name, where it is not `.modeling`.
_DEFINED_IN = {"ShineAdapter": ".adapter", "RoutedAdapter": ".routing"}


def _register_with_transformers() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` know "shine" and install the model-card renderers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .hub import register_card_renderers
    from .modeling import ShineConfig, ShineForCausalLM

    register_card_renderers()
    AutoConfig.register("shine", ShineConfig, exist_ok=True)
    AutoModelForCausalLM.register(ShineConfig, ShineForCausalLM, exist_ok=True)


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version(DISTRIBUTION)  # the one home of the version is pyproject.toml
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_DEFINED_IN.get(name, ".modeling"), __name__)
    _register_with_transformers()
    value = getattr(module, name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
