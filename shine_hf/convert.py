"""Import of the released SHINE reference checkpoints (GitHub MuLabPKU/SHINE), and export back.

The reference code saves a trained hypernetwork as three or four pickles (DESIGN.md section 3):

    mem_tokens.pt                 nn.Parameter (M, H)
    metanetwork.pth               state dict: layer_pe, token_pe, transformer_layers.{i}.*
    metalora.pth                  {layer: {"attention": {"q"|"k"|"v"|"o": {"A", "B", "C"}},
                                           "mlp": {"gate"|"up"|"down": {"A", "B", "C"}}}}
    ift_additional_metalora.pth   optional, same layout; merged after metalora.pth on the rank axis

with A (1, in, R), B (1, R, out) and C None (bias-free modules) or the bias delta. The pickles are
read with `torch.load(weights_only=True)` only: a file that needs code execution is refused.

`convert_reference_checkpoint` infers every size the files do not state (LoRA rank, meta-LoRA rank,
M2P depth and width), checks each tensor against the backbone, and writes a shine-hf checkpoint.
`export_reference_checkpoint` writes a shine-hf model in the reference layout.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from .modeling import (
    BackboneMismatchError,
    CheckpointError,
    ShineForCausalLM,
)
from .modeling.errors import ReferenceFormatError
from .modeling.io_utils import atomic_directory
from .modeling.lora import TargetModule, discover_target_modules

__all__ = [
    "ADDITIONAL_METALORA_FILE",
    "MEM_TOKENS_FILE",
    "METALORA_FILE",
    "METANETWORK_FILE",
    "REFERENCE_FILES",
    "REFERENCE_MODULES",
    "ReferenceCheckpoint",
    "ReferenceFormatError",
    "convert_reference_checkpoint",
    "default_m2p_num_heads",
    "export_reference_checkpoint",
    "infer_lora_rank",
    "load_reference_checkpoint",
    "merge_metalora",
    "reference_to_state_dict",
    "resolve_checkpoint_dir",
    "state_dict_to_reference",
    "validate_reference_checkpoint",
]

MEM_TOKENS_FILE = "mem_tokens.pt"
METANETWORK_FILE = "metanetwork.pth"
METALORA_FILE = "metalora.pth"
ADDITIONAL_METALORA_FILE = "ift_additional_metalora.pth"
REFERENCE_FILES: tuple[str, ...] = (MEM_TOKENS_FILE, METANETWORK_FILE, METALORA_FILE, ADDITIONAL_METALORA_FILE)

# Our target module (path relative to a decoder layer) -> (group, key) in the reference's nested
# dict, in the order the reference reads the generated LoRA from the M2P output.
REFERENCE_MODULES: dict[str, tuple[str, str]] = {
    "self_attn.q_proj": ("attention", "q"),
    "self_attn.k_proj": ("attention", "k"),
    "self_attn.v_proj": ("attention", "v"),
    "self_attn.o_proj": ("attention", "o"),
    "mlp.gate_proj": ("mlp", "gate"),
    "mlp.up_proj": ("mlp", "up"),
    "mlp.down_proj": ("mlp", "down"),
}

# M2P attention heads of the reference configurations (configs/Qwen3-{0.6B,1.7B,8B}.yaml), by
# hidden size. The files do not store the head count.
REFERENCE_M2P_HEADS: dict[int, int] = {1024: 8, 2048: 16, 4096: 32}

# Wrapper prefixes a state dict may carry if it was taken from a compiled or DDP-wrapped module.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

ProgressCallback = Callable[[str], None]
# layer -> group -> key -> {"A", "B", "C"}
ReferenceLoraDict = dict[int, dict[str, dict[str, dict[str, torch.Tensor | None]]]]


@dataclass
class ReferenceCheckpoint:
    """The tensors of a reference checkpoint (the meta-LoRA already merged with its IFT addition).

    Attributes:
        mem_tokens: (M, H) memory-token embeddings.
        metanetwork: The M2P state dict (`layer_pe`, `token_pe`, `transformer_layers.{i}.*`).
        metalora: The meta-LoRA as the reference's nested dict, A (1, in, R), B (1, R, out).
        files: The files the tensors were read from.
    """

    mem_tokens: torch.Tensor
    metanetwork: dict[str, torch.Tensor]
    metalora: ReferenceLoraDict
    files: tuple[str, ...] = ()

    @property
    def num_memory_tokens(self) -> int:
        return self.mem_tokens.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.mem_tokens.shape[1]

    @property
    def num_layers(self) -> int:
        return len(self.metalora)

    @property
    def metalora_rank(self) -> int:
        return _first_leaf(self.metalora)["A"].shape[-1]

    @property
    def m2p_num_layers(self) -> int:
        indices = {key.split(".")[1] for key in self.metanetwork if key.startswith("transformer_layers.")}
        return len(indices)  # non-numeric or gapped indices are reported by the key check

    @property
    def m2p_ffn_dim(self) -> int:
        key = "transformer_layers.0.linear1.weight"
        if key not in self.metanetwork:
            raise CheckpointError(f"{METANETWORK_FILE} has no {key!r}: cannot infer the M2P feed-forward width.")
        return self.metanetwork[key].shape[0]


# ---------------------------------------------------------------------------------------- reading
def resolve_checkpoint_dir(src: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory holding the reference files: `src` itself, or a Hub download of it.

    Args:
        src: A local directory, or a Hub repo id (e.g. `Yewei-Liu/SHINE-ift_mqa`).
        revision: Hub revision (branch, tag or commit) when `src` is a repo id.

    Raises:
        CheckpointError: `src` is neither a directory nor a downloadable repo.
    """
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{src} is a file; expected a directory with the SHINE reference checkpoint files.")
    if not _REPO_ID.match(str(src)):
        raise CheckpointError(f"{src} is not a directory and not a Hub repo id (org/name).")
    return _download(str(src), revision)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        local = snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=list(REFERENCE_FILES))
    except (HfHubHTTPError, OSError, ValueError) as error:
        at = f" at revision {revision!r}" if revision else ""
        raise CheckpointError(
            f"{repo_id} is not a local directory and could not be downloaded from the Hub{at}: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from error
    return Path(local)


def _safe_load(path: Path) -> Any:
    """`torch.load(weights_only=True)`; anything that needs code execution is refused."""
    if not path.is_file():
        raise CheckpointError(f"Missing checkpoint file {path.name} in {path.parent}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"Refusing to load {path.name}: it is not plain tensor data and would need to run code "
            f"from the pickle to load (torch.load weights_only=True rejected it: {_first_line(error)})."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"Could not read {path.name} (truncated or corrupt?): {type(error).__name__}: {_first_line(error)}"
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_reference_checkpoint(directory: str | os.PathLike) -> ReferenceCheckpoint:
    """Read and structurally check the reference files in `directory` (no backbone needed).

    `ift_additional_metalora.pth`, when present, is merged into the meta-LoRA (`merge_metalora`).

    Raises:
        CheckpointError: a required file is missing, unsafe, corrupt or not in the reference layout.
    """
    directory = Path(directory)
    mem_tokens = _as_tensor(_safe_load(directory / MEM_TOKENS_FILE), MEM_TOKENS_FILE, "mem_tokens")
    if mem_tokens.dim() != 2:
        raise CheckpointError(f"{MEM_TOKENS_FILE} holds a tensor of shape {_shape(mem_tokens)}; expected (M, H).")
    metanetwork = _state_dict(_safe_load(directory / METANETWORK_FILE))
    metalora = _lora_dict(_safe_load(directory / METALORA_FILE), METALORA_FILE)
    files = [MEM_TOKENS_FILE, METANETWORK_FILE, METALORA_FILE]
    additional_path = directory / ADDITIONAL_METALORA_FILE
    if additional_path.is_file():
        additional = _lora_dict(_safe_load(additional_path), ADDITIONAL_METALORA_FILE)
        metalora = merge_metalora(metalora, additional)
        files.append(ADDITIONAL_METALORA_FILE)
    return ReferenceCheckpoint(mem_tokens.detach(), metanetwork, metalora, tuple(files))


def _as_tensor(value: Any, file: str, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{file}: {what} is a {type(value).__name__}, expected a tensor.")
    return value


def _shape(tensor: torch.Tensor | None) -> tuple[int, ...] | None:
    return None if tensor is None else tuple(tensor.shape)


def _state_dict(value: Any) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{METANETWORK_FILE} holds a {type(value).__name__}, expected a state dict.")
    state: dict[str, torch.Tensor] = {}
    for key, tensor in value.items():
        name = str(key)
        for prefix in _WRAPPER_PREFIXES:
            name = name.removeprefix(prefix)
        state[name] = _as_tensor(tensor, METANETWORK_FILE, repr(key)).detach()
    return state


def _lora_dict(value: Any, file: str) -> ReferenceLoraDict:
    """Check the nested layout {layer: {group: {key: {"A", "B", "C"}}}} and normalise the layer keys."""
    if not isinstance(value, Mapping) or not value:
        raise CheckpointError(f"{file} holds a {type(value).__name__}, expected a non-empty dict of decoder layers.")
    layers: ReferenceLoraDict = {}
    for layer_key, groups in value.items():
        if isinstance(layer_key, str) and layer_key.isdigit():
            layer_key = int(layer_key)
        if not isinstance(layer_key, int):
            raise CheckpointError(f"{file}: top-level key {layer_key!r} is not a decoder-layer index.")
        layers[layer_key] = _lora_layer(groups, f"{file}[{layer_key}]")
    if sorted(layers) != list(range(len(layers))):
        raise CheckpointError(f"{file}: decoder-layer keys {sorted(layers)} are not 0..{len(layers) - 1}.")
    return dict(sorted(layers.items()))


def _lora_layer(groups: Any, where: str) -> dict[str, dict[str, dict[str, torch.Tensor | None]]]:
    expected: dict[str, list[str]] = {}
    for group, key in REFERENCE_MODULES.values():
        expected.setdefault(group, []).append(key)
    if not isinstance(groups, Mapping) or set(groups) != set(expected):
        found = sorted(groups) if isinstance(groups, Mapping) else type(groups).__name__
        raise CheckpointError(f"{where}: expected the groups {sorted(expected)}, found {found}.")
    layer: dict[str, dict[str, dict[str, torch.Tensor | None]]] = {}
    for group, keys in expected.items():
        modules = groups[group]
        if not isinstance(modules, Mapping) or set(modules) != set(keys):
            found = sorted(modules) if isinstance(modules, Mapping) else type(modules).__name__
            raise CheckpointError(f"{where}[{group!r}]: expected the modules {keys}, found {found}.")
        layer[group] = {key: _lora_leaf(modules[key], f"{where}[{group!r}][{key!r}]") for key in keys}
    return layer


def _lora_leaf(leaf: Any, where: str) -> dict[str, torch.Tensor | None]:
    if not isinstance(leaf, Mapping) or "A" not in leaf or "B" not in leaf or set(leaf) - {"A", "B", "C"}:
        found = sorted(leaf) if isinstance(leaf, Mapping) else type(leaf).__name__
        raise CheckpointError(f"{where}: expected a dict with 'A', 'B' and optionally 'C', found {found}.")
    A = _as_tensor(leaf["A"], where, "A").detach()
    B = _as_tensor(leaf["B"], where, "B").detach()
    C = leaf.get("C")
    if C is not None:
        C = _as_tensor(C, where, "C").detach()
    if A.dim() != 3 or B.dim() != 3 or A.shape[0] != 1 or B.shape[0] != 1 or A.shape[2] != B.shape[1]:
        raise CheckpointError(
            f"{where}: A {_shape(A)} and B {_shape(B)} are not (1, in, R) and (1, R, out) with one rank R."
        )
    return {"A": A, "B": B, "C": C}


def _first_leaf(lora: ReferenceLoraDict) -> dict[str, torch.Tensor | None]:
    group, key = REFERENCE_MODULES["self_attn.q_proj"]
    return lora[0][group][key]


def merge_metalora(base: ReferenceLoraDict, additional: ReferenceLoraDict) -> ReferenceLoraDict:
    """Merge the IFT meta-LoRA into the pretrained one as the reference does.

    `base` first: A concatenated on its rank axis (dim 2), B on its rank axis (dim 1), C summed.

    Raises:
        CheckpointError: the two do not have the same layers, modules and in/out sizes.
    """
    if set(base) != set(additional):
        raise CheckpointError(
            f"{ADDITIONAL_METALORA_FILE} has decoder layers {sorted(additional)}, {METALORA_FILE} has {sorted(base)}."
        )
    merged: ReferenceLoraDict = {}
    for layer, groups in base.items():
        merged[layer] = {}
        for group, modules in groups.items():
            merged[layer][group] = {}
            for key, first in modules.items():
                where = f"[{layer}][{group!r}][{key!r}]"
                merged[layer][group][key] = _merge_leaf(first, additional[layer][group][key], where)
    return merged


def _merge_leaf(first: dict[str, torch.Tensor | None], second: dict[str, torch.Tensor | None],
                where: str) -> dict[str, torch.Tensor | None]:
    A1, B1, C1 = first["A"], first["B"], first["C"]
    A2, B2, C2 = second["A"], second["B"], second["C"]
    if A1.shape[:2] != A2.shape[:2] or B1.shape[::2] != B2.shape[::2]:
        raise CheckpointError(
            f"{where}: {METALORA_FILE} has A {_shape(A1)}, B {_shape(B1)} but {ADDITIONAL_METALORA_FILE} has "
            f"A {_shape(A2)}, B {_shape(B2)}: in/out sizes differ."
        )
    if (C1 is None) != (C2 is None) or (C1 is not None and C1.shape != C2.shape):
        raise CheckpointError(
            f"{where}: C is {_shape(C1)} in {METALORA_FILE} but {_shape(C2)} in {ADDITIONAL_METALORA_FILE}."
        )
    return {
        "A": torch.cat([A1, A2], dim=2),
        "B": torch.cat([B1, B2], dim=1),
        "C": None if C1 is None else C1 + C2,
    }


# ------------------------------------------------------------------------------ sizes and checks
def infer_lora_rank(targets: list[TargetModule], hidden_size: int, num_memory_tokens: int) -> int:
    """The LoRA rank r with M = ceil(P(r) / H), P(r) = sum of r*(in+out) (+out with a bias).

    Raises:
        BackboneMismatchError: no rank, or more than one, gives `num_memory_tokens` memory tokens.
    """
    per_rank = sum(t.in_features + t.out_features for t in targets)
    bias = sum(t.out_features for t in targets if t.has_bias)
    limit = (num_memory_tokens * hidden_size - bias) // per_rank
    ranks = [r for r in range(1, limit + 1) if math.ceil((r * per_rank + bias) / hidden_size) == num_memory_tokens]
    if len(ranks) != 1:
        found = "no LoRA rank" if not ranks else f"several LoRA ranks {ranks}"
        raise BackboneMismatchError(
            f"{MEM_TOKENS_FILE} has {num_memory_tokens} memory tokens, but {found} of this backbone's target "
            f"modules (P(r) = {per_rank}*r + {bias}, hidden size {hidden_size}) gives ceil(P/H) = "
            f"{num_memory_tokens}: the checkpoint was made for another backbone."
        )
    return ranks[0]


def default_m2p_num_heads(backbone_config: PretrainedConfig) -> int:
    """M2P heads when not given: the reference configuration's value for its hidden sizes
    (32 for Qwen3-8B's 4096), otherwise the backbone's attention head count."""
    hidden = backbone_config.hidden_size
    if hidden in REFERENCE_M2P_HEADS:
        return REFERENCE_M2P_HEADS[hidden]
    heads = getattr(backbone_config, "num_attention_heads", None)
    return heads if heads and hidden % heads == 0 else 1


def _expected_encoder_shapes(hidden: int, ffn: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of one `nn.TransformerEncoderLayer(hidden, ffn)` (heads do not matter)."""
    layer = nn.TransformerEncoderLayer(hidden, 1, ffn, dropout=0.0, batch_first=True, bias=True, device="meta")
    return {name: tuple(tensor.shape) for name, tensor in layer.state_dict().items()}


def _check_metanetwork_keys(checkpoint: ReferenceCheckpoint) -> None:
    depth = checkpoint.m2p_num_layers
    encoder_keys = _expected_encoder_shapes(1, 1).keys()
    expected = {"layer_pe", "token_pe"} | {
        f"transformer_layers.{i}.{name}" for i in range(depth) for name in encoder_keys
    }
    details = [
        f"{label} {_abbreviate(sorted(keys))}"
        for label, keys in (("missing", expected - set(checkpoint.metanetwork)),
                            ("unsupported", set(checkpoint.metanetwork) - expected))
        if keys
    ]
    if details:
        raise CheckpointError(
            f"{METANETWORK_FILE} is not a reference M2P transformer (layer_pe, token_pe, "
            f"transformer_layers.{{i}}.*; no couple layers): " + "; ".join(details) + "."
        )
    if depth == 0 or depth % 2:
        raise CheckpointError(f"{METANETWORK_FILE} has {depth} M2P layers; the reference M2P needs an even number > 0.")


def _abbreviate(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def validate_reference_checkpoint(checkpoint: ReferenceCheckpoint, backbone: nn.Module,
                                  targets: list[TargetModule]) -> None:
    """Compare every tensor's shape with what `backbone` needs.

    Raises:
        CheckpointError: `metanetwork.pth` is not the reference M2P transformer.
        BackboneMismatchError: shapes differ; the message names each tensor and both shapes.
    """
    _check_metanetwork_keys(checkpoint)
    config = backbone.config
    hidden, num_layers = config.hidden_size, config.num_hidden_layers
    M, R, ffn = checkpoint.num_memory_tokens, checkpoint.metalora_rank, checkpoint.m2p_ffn_dim
    problems: list[str] = []

    def compare(name: str, tensor: torch.Tensor | None, expected: tuple[int, ...] | None) -> None:
        if _shape(tensor) != expected:
            problems.append(f"{name} has shape {_shape(tensor)}, the backbone needs {expected}")

    compare(f"{MEM_TOKENS_FILE} 'mem_tokens'", checkpoint.mem_tokens, (M, hidden))
    compare(f"{METANETWORK_FILE} 'layer_pe'", checkpoint.metanetwork["layer_pe"], (num_layers, hidden))
    compare(f"{METANETWORK_FILE} 'token_pe'", checkpoint.metanetwork["token_pe"], (M, hidden))
    for name, shape in _expected_encoder_shapes(hidden, ffn).items():
        for i in range(checkpoint.m2p_num_layers):
            key = f"transformer_layers.{i}.{name}"
            compare(f"{METANETWORK_FILE} {key!r}", checkpoint.metanetwork[key], shape)
    if checkpoint.num_layers != num_layers:
        problems.append(f"{METALORA_FILE} has {checkpoint.num_layers} decoder layers, the backbone has {num_layers}")
    for layer in range(min(checkpoint.num_layers, num_layers)):
        for t in targets:
            group, key = REFERENCE_MODULES[t.name]
            leaf = checkpoint.metalora[layer][group][key]
            where = f"{METALORA_FILE}[{layer}][{group!r}][{key!r}]"
            compare(f"{where}['A']", leaf["A"], (1, t.in_features, R))
            compare(f"{where}['B']", leaf["B"], (1, R, t.out_features))
            C = leaf["C"]
            if t.has_bias:
                expected_c = (1, t.out_features) if C is not None and C.dim() == 2 else (t.out_features,)
                compare(f"{where}['C']", C, expected_c)
            else:
                compare(f"{where}['C']", C, None)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise BackboneMismatchError(
            f"The SHINE checkpoint does not fit the backbone {type(backbone).__name__} "
            f"({_describe(config)}): {shown}."
        )


def _describe(config: PretrainedConfig) -> str:
    name = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "?")
    return f"{name}, hidden size {config.hidden_size}, {config.num_hidden_layers} layers"


def _reference_targets(backbone: nn.Module) -> list[TargetModule]:
    _, targets = discover_target_modules(backbone, list(REFERENCE_MODULES))
    return targets


# ------------------------------------------------------------------------------------- mapping
def reference_to_state_dict(checkpoint: ReferenceCheckpoint, targets: list[TargetModule]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under `ShineHypernetwork.state_dict()` names (batch axis of 1 dropped)."""
    state: dict[str, torch.Tensor] = {"memory_tokens": checkpoint.mem_tokens}
    state.update({f"m2p.{key}": tensor for key, tensor in checkpoint.metanetwork.items()})
    for layer, groups in checkpoint.metalora.items():
        for t in targets:
            group, key = REFERENCE_MODULES[t.name]
            leaf = groups[group][key]
            prefix = f"meta_lora.layers.{layer}.{t.key}"
            state[f"{prefix}.A"] = leaf["A"][0]
            state[f"{prefix}.B"] = leaf["B"][0]
            if leaf["C"] is not None:
                state[f"{prefix}.C"] = leaf["C"].reshape(-1)
    return {key: tensor.detach() for key, tensor in state.items()}


def state_dict_to_reference(model: ShineForCausalLM) -> ReferenceCheckpoint:
    """The model's hypernetwork in the reference layout (tensors cloned to the CPU)."""
    state = {key: tensor.detach().to("cpu").clone() for key, tensor in model.hypernetwork.state_dict().items()}
    metanetwork = {key.removeprefix("m2p."): tensor for key, tensor in state.items() if key.startswith("m2p.")}
    metalora: ReferenceLoraDict = {}
    for layer in range(model.config.num_hidden_layers):
        groups: dict[str, dict[str, dict[str, torch.Tensor | None]]] = {}
        for t in model.targets:
            group, key = REFERENCE_MODULES[t.name]
            prefix = f"meta_lora.layers.{layer}.{t.key}"
            C = state.get(f"{prefix}.C")
            groups.setdefault(group, {})[key] = {
                "A": state[f"{prefix}.A"][None].requires_grad_(True),
                "B": state[f"{prefix}.B"][None].requires_grad_(True),
                # (1, out), as the reference's init_lora_dict makes it and LoraLinear reads it.
                "C": None if C is None else C[None].requires_grad_(True),
            }
        metalora[layer] = groups
    return ReferenceCheckpoint(state["memory_tokens"], metanetwork, metalora)


# -------------------------------------------------------------------------------- entry points
def _load_backbone(backbone: PreTrainedModel | str | os.PathLike, revision: str | None) -> PreTrainedModel:
    """A loaded backbone as is; a name or path becomes a weightless (meta-device) model of its config.

    Conversion needs only the backbone's shapes, so a name never triggers a weight download.
    """
    if not isinstance(backbone, (str, os.PathLike)):
        return backbone
    name = str(backbone)
    try:
        config = AutoConfig.from_pretrained(name, revision=revision)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"Could not load the backbone config {name!r}: {_first_line(error)}") from error
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.name_or_path = name
    return model


def convert_reference_checkpoint(
    src: str | os.PathLike,
    backbone: PreTrainedModel | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    m2p_num_heads: int | None = None,
    lora_scale: float = 0.001,
    revision: str | None = None,
    tokenizer: Any = None,
    backbone_revision: str | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Convert a reference SHINE checkpoint (e.g. `Yewei-Liu/SHINE-ift_mqa`) to a shine-hf checkpoint.

    Args:
        src: Local directory with `mem_tokens.pt`, `metanetwork.pth`, `metalora.pth` (and
            optionally `ift_additional_metalora.pth`), or a Hub repo id holding them.
        backbone: The backbone the checkpoint was trained for: a loaded causal LM, or its Hub id /
            local path (only its config is read; no weights are downloaded).
        out_dir: Where to write the shine-hf checkpoint (`save_pretrained` layout).
        m2p_num_heads: M2P attention heads (not stored in the files). Default: the reference
            configuration's value (32 for hidden size 4096), else the backbone's head count.
        lora_scale: Scale s of the generated LoRA (not stored in the files; reference: 0.001).
        revision: Hub revision of `src`.
        tokenizer: The backbone's tokenizer, attached to the model before saving.
        backbone_revision: Hub revision of `backbone` when given by name (recorded in the config).
        progress: Called with a short message before each step.

    Returns:
        `out_dir` as a Path.

    Raises:
        CheckpointError: a file is missing, unsafe (needs code execution), corrupt or not in the
            reference layout.
        BackboneMismatchError: a tensor's shape does not fit the backbone (names both shapes).
        UnsupportedBackboneError: the backbone lacks the seven q/k/v/o/gate/up/down projections.
    """
    report = progress or (lambda message: None)
    report(f"Locating {src}")
    directory = resolve_checkpoint_dir(src, revision)
    report(f"Reading reference checkpoint from {directory}")
    checkpoint = load_reference_checkpoint(directory)
    report("Reading backbone shapes")
    backbone_model = _load_backbone(backbone, backbone_revision)
    targets = _reference_targets(backbone_model)
    report("Checking tensor shapes against the backbone")
    validate_reference_checkpoint(checkpoint, backbone_model, targets)
    hidden = backbone_model.config.hidden_size
    lora_rank = infer_lora_rank(targets, hidden, checkpoint.num_memory_tokens)
    heads = m2p_num_heads if m2p_num_heads is not None else default_m2p_num_heads(backbone_model.config)
    if heads <= 0 or hidden % heads:
        raise BackboneMismatchError(f"m2p_num_heads={heads} does not divide the backbone's hidden size {hidden}.")
    report(f"Building hypernetwork (r={lora_rank}, R={checkpoint.metalora_rank}, "
           f"{checkpoint.m2p_num_layers} M2P layers x {heads} heads)")
    model = ShineForCausalLM.from_backbone(
        backbone_model,
        tokenizer=tokenizer,
        revision=backbone_revision,
        target_modules=list(REFERENCE_MODULES),
        lora_rank=lora_rank,
        metalora_rank=checkpoint.metalora_rank,
        m2p_num_layers=checkpoint.m2p_num_layers,
        m2p_num_heads=heads,
        m2p_ffn_dim=checkpoint.m2p_ffn_dim,
        lora_scale=lora_scale,
    )
    if tokenizer is not None:
        model.tokenizer = tokenizer
    model.hypernetwork.load_state_dict(reference_to_state_dict(checkpoint, targets), strict=True)
    report(f"Writing {out_dir}")
    model.save_pretrained(out_dir)  # atomic: assembled in a temporary directory, then moved
    return Path(out_dir)


def export_reference_checkpoint(model: ShineForCausalLM, out_dir: str | os.PathLike) -> Path:
    """Write `model`'s hypernetwork in the reference layout, so the reference code can load it.

    Writes `mem_tokens.pt` (an `nn.Parameter`), `metanetwork.pth` and `metalora.pth` (the meta-LoRA
    as one rank-R dict: no separate IFT file), atomically.

    Raises:
        ReferenceFormatError: the targets are not exactly q/k/v/o/gate/up/down in that order, or the
            per-layer LoRA size is not a multiple of the hidden size (the reference needs both).
    """
    names = [t.name for t in model.targets]
    if names != list(REFERENCE_MODULES):
        raise ReferenceFormatError(
            f"The reference layout holds exactly the projections {list(REFERENCE_MODULES)} in that order; "
            f"this model adapts {names}."
        )
    per_layer, hidden = model.config.lora_numel_per_layer, model.config.hidden_size
    if per_layer % hidden:
        raise ReferenceFormatError(
            f"The reference code needs the per-layer LoRA size P = {per_layer} to be a multiple of the hidden "
            f"size {hidden} (lora_rank={model.config.lora_rank})."
        )
    checkpoint = state_dict_to_reference(model)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as staging:
        torch.save(nn.Parameter(checkpoint.mem_tokens), staging / MEM_TOKENS_FILE)
        torch.save(checkpoint.metanetwork, staging / METANETWORK_FILE)
        torch.save(checkpoint.metalora, staging / METALORA_FILE)
        # The meta-LoRA is written whole: a stale IFT addition beside it would be merged in again.
        (out_dir / ADDITIONAL_METALORA_FILE).unlink(missing_ok=True)
    return out_dir
