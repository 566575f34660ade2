"""`ShineAdapter`: generated LoRAs as standard PEFT adapters.

The class itself is defined in `shine_hf.modeling.adapter` because the model code (also shipped as
Hub remote code, where `shine_hf` is not installed) returns it from `internalize`. This module is
the user-facing import path and the home of adapter utilities that need more than torch.
"""

from .modeling.adapter import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, ShineAdapter

__all__ = ["ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "ShineAdapter"]
