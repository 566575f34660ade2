"""Target-module discovery and batched LoRA application on an unmodified transformers backbone.

A LoRA is applied through a forward hook on each target `nn.Linear` (or GPT-2 `Conv1D`): the hook
adds `(x @ A) @ B (+ C)` to the module's output. The backbone's modules, parameter names and
`state_dict` are untouched, so the same backbone object can be wrapped by PEFT, saved or merged.

Every LoRA tensor carries a batch axis: A (b, in, r), B (b, r, out), C (b, out). With b == 1 the
adapter is broadcast over the whole input batch; with b > 1 the input batch must be a multiple k*b
of it and rows [i*k, (i+1)*k) use adapter i (how `generate` expands rows for beams and
`num_return_sequences`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .errors import IncompatibleAdapterError, UnsupportedBackboneError

# Projections SHINE adapts, relative to a decoder layer, in the order their parameters are read
# from the M2P output: q, k, v, o, gate, up, down (docs/method.md). Fused layouts (Phi-3's
# qkv_proj / gate_up_proj, GPT-2's c_attn) keep that order.
TARGET_MODULE_CANDIDATES: tuple[str, ...] = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.qkv_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.gate_up_proj",
    "mlp.down_proj",
    "attn.c_attn",
    "attn.c_proj",
    "mlp.c_fc",
    "mlp.c_proj",
)

# Families tested end to end (tests/test_backbones.py). Others whose layers use the same module
# names work too; anything else gets UnsupportedBackboneError.
SUPPORTED_FAMILIES: dict[str, str] = {
    "qwen3": "q/k/v/o + gate/up/down",
    "qwen2": "q/k/v (with bias deltas)/o + gate/up/down",
    "llama": "q/k/v/o + gate/up/down",
    "mistral": "q/k/v/o + gate/up/down",
    "gemma": "q/k/v/o + gate/up/down",
    "gemma2": "q/k/v/o + gate/up/down",
    "gemma3_text": "q/k/v/o + gate/up/down",
    "phi3": "fused qkv_proj/o_proj + fused gate_up_proj/down_proj",
    "gpt2": "Conv1D c_attn/attn.c_proj + c_fc/mlp.c_proj (all with bias deltas)",
}


class LoraWeights(NamedTuple):
    """One module's LoRA for a batch of b adapters: A (b, in, r), B (b, r, out), C (b, out) or None."""

    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor | None = None


# layer index -> target module name -> weights
LoraDict = Mapping[int, Mapping[str, LoraWeights]]


@dataclass(frozen=True)
class TargetModule:
    """A projection to adapt, identified by its path relative to a decoder layer."""

    name: str
    in_features: int
    out_features: int
    has_bias: bool
    fan_in_fan_out: bool = False  # GPT-2 Conv1D stores its weight as (in, out)

    def lora_numel(self, rank: int) -> int:
        return rank * (self.in_features + self.out_features) + (self.out_features if self.has_bias else 0)

    @property
    def key(self) -> str:
        """The name with dots replaced, usable as an `nn.ModuleDict` key."""
        return self.name.replace(".", "__")


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _linear_shape(module: nn.Module) -> tuple[int, int, bool, bool] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, module.bias is not None, False
    if _is_conv1d(module):
        fan_in, fan_out = module.weight.shape
        return fan_in, fan_out, module.bias is not None, True
    return None


def find_decoder_layers(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (path, ModuleList) of the backbone's decoder layers.

    The list is the `nn.ModuleList` whose length is the config's `num_hidden_layers`; when several
    qualify, the first in module order (the text decoder) wins.
    """
    config = getattr(backbone, "config", None)
    num_layers = getattr(config, "num_hidden_layers", None)
    for path, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len(module) == num_layers:
            return path, module
    raise UnsupportedBackboneError(
        f"Could not find the decoder layers of {type(backbone).__name__}: no nn.ModuleList of "
        f"length num_hidden_layers={num_layers}. {supported_families_message()}"
    )


def supported_families_message() -> str:
    families = ", ".join(sorted(SUPPORTED_FAMILIES))
    return (
        f"Supported backbone families: {families} (any decoder whose layers name their projections "
        f"like one of these). Pass target_modules=[...] to choose projections explicitly."
    )


def discover_target_modules(
    backbone: nn.Module, names: list[str] | None = None
) -> tuple[str, list[TargetModule]]:
    """Find the projections to adapt in every decoder layer and check all layers agree in shape.

    Args:
        backbone: A loaded transformers causal LM (not modified).
        names: Paths relative to a decoder layer. Defaults to every entry of
            `TARGET_MODULE_CANDIDATES` present in the first layer.

    Returns:
        The decoder-layer list path and the ordered target modules.
    """
    layers_path, layers = find_decoder_layers(backbone)
    first = layers[0]
    candidates = list(names) if names is not None else list(TARGET_MODULE_CANDIDATES)
    targets: list[TargetModule] = []
    for name in candidates:
        try:
            module = first.get_submodule(name)
        except AttributeError:
            if names is not None:
                raise UnsupportedBackboneError(
                    f"Target module {name!r} does not exist in decoder layer 0 of "
                    f"{type(backbone).__name__}."
                ) from None
            continue
        shape = _linear_shape(module)
        if shape is None:
            if names is not None:
                raise UnsupportedBackboneError(
                    f"Target module {name!r} of {type(backbone).__name__} is a "
                    f"{type(module).__name__}; only nn.Linear and Conv1D can carry a LoRA."
                )
            continue
        targets.append(TargetModule(name, *shape))
    if not targets:
        model_type = getattr(getattr(backbone, "config", None), "model_type", "?")
        raise UnsupportedBackboneError(
            f"No target projections found in {type(backbone).__name__} (model_type={model_type!r}). "
            + supported_families_message()
        )
    for index, layer in enumerate(layers):
        for target in targets:
            shape = _linear_shape(layer.get_submodule(target.name))
            if shape != (target.in_features, target.out_features, target.has_bias, target.fan_in_fan_out):
                raise UnsupportedBackboneError(
                    f"Decoder layer {index} has {target.name} of shape {shape}, layer 0 has "
                    f"{(target.in_features, target.out_features, target.has_bias)}: layers of "
                    f"different shapes are not supported."
                )
    return layers_path, targets


def lora_delta(x: torch.Tensor, weights: LoraWeights) -> torch.Tensor:
    """(x @ A) @ B (+ C), per adapter row. x: (N, ..., in) with N a multiple of the adapter batch."""
    A, B, C = weights
    # no-ops unless the layer sits on another device/dtype (device_map across GPUs, bf16 backbone)
    A = A.to(device=x.device, dtype=x.dtype)
    B = B.to(device=x.device, dtype=x.dtype)
    if C is not None:
        C = C.to(device=x.device, dtype=x.dtype)
    num_adapters = A.shape[0]
    if num_adapters == 1:
        delta = (x @ A[0]) @ B[0]
        if C is not None:
            delta = delta + C[0]
        return delta
    rows = x.shape[0]
    if x.dim() < 2 or rows % num_adapters:
        raise IncompatibleAdapterError(
            f"An adapter batch of {num_adapters} cannot be applied to an input batch of {rows} rows "
            f"(the input batch must be a multiple of the adapter batch)."
        )
    grouped = x.reshape(num_adapters, -1, x.shape[-1])  # (b, k*S, in): rows of adapter i are contiguous
    delta = torch.bmm(torch.bmm(grouped, A), B)
    if C is not None:
        delta = delta + C[:, None, :]
    return delta.reshape(*x.shape[:-1], B.shape[-1])


class LoraInjector:
    """Owns forward hooks on a backbone's target modules and applies whichever LoRA is active.

    Also the hypernetwork's handle on the backbone: `backbone` and its decoder `layers`.

    Only one LoRA is active at a time; `activate` nests (the previous one is restored on exit).
    """

    def __init__(self, backbone: nn.Module, layers_path: str, targets: list[TargetModule]):
        layers = backbone.get_submodule(layers_path)
        self.backbone = backbone
        self.layers = layers
        self.targets = targets
        self._active: LoraDict | None = None
        self._handles = []
        for layer_index, layer in enumerate(layers):
            for target in targets:
                module = layer.get_submodule(target.name)
                self._handles.append(module.register_forward_hook(self._make_hook(layer_index, target.name)))

    def _make_hook(self, layer_index: int, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            active = self._active
            if active is None:
                return None
            weights = active[layer_index].get(name)
            if weights is None:
                return None
            return output + lora_delta(args[0], weights)

        return hook

    @property
    def active(self) -> LoraDict | None:
        return self._active

    @contextlib.contextmanager
    def activate(self, lora: LoraDict | None) -> Iterator[None]:
        previous = self._active
        self._active = lora
        try:
            yield
        finally:
            self._active = previous

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
