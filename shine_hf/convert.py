"""Import of the released SHINE reference checkpoints (GitHub MuLabPKU/SHINE), and export back.

The reference code saves a trained hypernetwork as three or four pickles (docs/method.md,
"Released checkpoints"):

    mem_tokens.pt                 nn.Parameter (M, H)
    metanetwork.pth               state dict: layer_pe, token_pe, transformer_layers.{i}.*
    metalora.pth                  {layer: {"attention": {"q"|"k"|"v"|"o": {"A", "B", "C"}},
                                           "mlp": {"gate"|"up"|"down": {"A", "B", "C"}}}}
    ift_additional_metalora.pth   optional, same layout; merged after metalora.pth on the rank axis

with A (1, in, R), B (1, R, out) and C None (bias-free modules) or the bias delta, (1, out) or (out).
The pickles are read with `torch.load(weights_only=True)` only: a file that needs code execution is
refused.

`convert_reference_checkpoint` infers the sizes the files do not state (LoRA rank, meta-LoRA rank,
M2P depth and width), builds the hypernetwork for the backbone and loads every tensor into it under
its `ShineHypernetwork.state_dict()` name with one strict `load_state_dict`. The model's own state
dict is the specification: a missing, extra or misshapen tensor is reported under its reference
file and key. `export_reference_checkpoint` writes a shine-hf model in the reference layout.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

# From the package, not from .modeling: this also registers the "shine" model type and the
# model-card renderers, so a converted checkpoint gets the full model card.
from . import ShineForCausalLM
from .modeling.configuration_shine import ShineConfig, default_m2p_num_heads
from .modeling.errors import BackboneMismatchError, CheckpointError, ConfigError, ReferenceFormatError, ShineError
from .modeling.io_utils import atomic_directory
from .modeling.lora import TargetModule

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
    "reference_key",
    "resolve_checkpoint_dir",
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

# Wrapper prefixes a state dict may carry if it was taken from a compiled or DDP-wrapped module.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LORA_PARTS = ("A", "B", "C")
_SHOWN_PROBLEMS = 5

ProgressCallback = Callable[[str], None]
# Where a tensor lives in the reference files: the file and the keys inside it, e.g.
# ("metalora.pth", (0, "mlp", "gate", "B")), ("metanetwork.pth", ("layer_pe",)), ("mem_tokens.pt", ()).
ReferenceKey = tuple[str, tuple[Any, ...]]
_MEM_TOKENS: ReferenceKey = (MEM_TOKENS_FILE, ())


def reference_key(name: str, targets: list[TargetModule]) -> ReferenceKey:
    """Where the hypernetwork tensor `name` (a `ShineHypernetwork.state_dict()` key) lives in the
    reference files. The one mapping between the two layouts, used for import and export."""
    if name == "memory_tokens":
        return _MEM_TOKENS
    if name.startswith("m2p."):
        return METANETWORK_FILE, (name.removeprefix("m2p."),)
    _, _, layer, module, part = name.split(".")  # meta_lora.layers.{layer}.{module key}.{A|B|C}
    group, key = {t.key: REFERENCE_MODULES[t.name] for t in targets}[module]
    return METALORA_FILE, (int(layer), group, key, part)


def _describe(ref: ReferenceKey, with_file: bool = True) -> str:
    """`metalora.pth[0]['mlp']['gate']['B']`, `metanetwork.pth 'layer_pe'`, `mem_tokens.pt`; without the
    file: `[0]['mlp']['gate']['B']`, `layer_pe`."""
    file, path = ref
    if file == METANETWORK_FILE:
        return f"{file} {path[0]!r}" if with_file else str(path[0])
    return (file if with_file else "") + "".join(f"[{part!r}]" for part in path)


def _abbreviate(items: list[str], limit: int = _SHOWN_PROBLEMS, separator: str = ", ") -> str:
    shown = separator.join(items[:limit])
    return shown + (f"{separator}and {len(items) - limit} more" if len(items) > limit else "")


@dataclass
class ReferenceCheckpoint:
    """The tensors of a reference checkpoint (the meta-LoRA already merged with its IFT addition).

    Attributes:
        tensors: Reference key -> tensor, in the files' own layout and order, e.g.
            `("metalora.pth", (0, "mlp", "gate", "B"))` -> B (1, R, out).
        files: The files the tensors were read from.
    """

    tensors: dict[ReferenceKey, torch.Tensor]
    files: tuple[str, ...] = ()

    @property
    def mem_tokens(self) -> torch.Tensor:
        """(M, H) memory-token embeddings."""
        return self.tensors[_MEM_TOKENS]

    @property
    def num_layers(self) -> int:
        """Decoder layers of the meta-LoRA."""
        return len({path[0] for file, path in self.tensors if file == METALORA_FILE})

    @property
    def metalora_rank(self) -> int:
        return self._get(METALORA_FILE, 0, "attention", "q", "A", purpose="the meta-LoRA rank").shape[-1]

    def _get(self, file: str, *path: Any, purpose: str) -> torch.Tensor:
        if (file, path) not in self.tensors:
            raise CheckpointError(f"{_describe((file, path))} is missing: cannot infer {purpose}.")
        return self.tensors[(file, path)]

    def sizes(self) -> dict[str, int]:
        """The `ShineConfig` sizes the files imply but do not state.

        The LoRA rank r is the one for which the meta-LoRA's projections (their sizes in decoder
        layer 0) give M = ceil(P(r) / H) memory tokens.
        """
        modules = []
        for name, (group, key) in REFERENCE_MODULES.items():
            A = self._get(METALORA_FILE, 0, group, key, "A", purpose="the LoRA rank")
            B = self._get(METALORA_FILE, 0, group, key, "B", purpose="the LoRA rank")
            has_bias = (METALORA_FILE, (0, group, key, "C")) in self.tensors
            modules.append(TargetModule(name, A.shape[1], B.shape[2], has_bias))
        try:
            lora_rank = infer_lora_rank(modules, self.mem_tokens.shape[1], self.mem_tokens.shape[0])
        except BackboneMismatchError as error:  # every size here comes from the files: they disagree
            raise CheckpointError(f"The reference files disagree: {error}") from None
        ffn = self._get(METANETWORK_FILE, "transformer_layers.0.linear1.weight", purpose="the M2P feed-forward width")
        depth = {path[0].split(".")[1] for file, path in self.tensors
                 if file == METANETWORK_FILE and path[0].startswith("transformer_layers.")}
        return dict(lora_rank=lora_rank, metalora_rank=self.metalora_rank, m2p_num_layers=len(depth),
                    m2p_ffn_dim=ffn.shape[0])


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
    """Read the reference files in `directory` (no backbone needed).

    `ift_additional_metalora.pth`, when present, is merged into the meta-LoRA as the reference does:
    `metalora.pth` first, A concatenated on its rank axis (dim 2), B on its rank axis (dim 1), C summed.

    Raises:
        CheckpointError: a required file is missing, unsafe or corrupt, holds something other than
            tensors in nested dicts, or the IFT file does not match `metalora.pth`.
    """
    directory = Path(directory)
    mem_tokens = _safe_load(directory / MEM_TOKENS_FILE)
    if not isinstance(mem_tokens, torch.Tensor) or mem_tokens.dim() != 2:
        found = type(mem_tokens).__name__
        if isinstance(mem_tokens, torch.Tensor):
            found = f"tensor of shape {tuple(mem_tokens.shape)}"
        raise CheckpointError(f"{MEM_TOKENS_FILE} holds a {found}; expected an (M, H) tensor.")
    tensors: dict[ReferenceKey, torch.Tensor] = {_MEM_TOKENS: mem_tokens.detach()}
    for key, tensor in _tensors(_safe_load(directory / METANETWORK_FILE), METANETWORK_FILE):
        name = str(key[0])
        for prefix in _WRAPPER_PREFIXES:
            name = name.removeprefix(prefix)
        tensors[(METANETWORK_FILE, (name, *key[1:]))] = tensor
    metalora = _metalora(_safe_load(directory / METALORA_FILE), METALORA_FILE)
    files = [MEM_TOKENS_FILE, METANETWORK_FILE, METALORA_FILE]
    if (directory / ADDITIONAL_METALORA_FILE).is_file():
        additional = _metalora(_safe_load(directory / ADDITIONAL_METALORA_FILE), ADDITIONAL_METALORA_FILE)
        metalora = _merge_metalora(metalora, additional)
        files.append(ADDITIONAL_METALORA_FILE)
    tensors.update({(METALORA_FILE, path): tensor for path, tensor in metalora.items()})
    return ReferenceCheckpoint(tensors, tuple(files))


def _tensors(value: Any, file: str, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], torch.Tensor]]:
    """(keys, tensor) for every tensor in nested dicts; None leaves (C of a bias-free module) are skipped."""
    if not path and not (isinstance(value, Mapping) and value):
        raise CheckpointError(f"{file} holds a {type(value).__name__}; expected a non-empty dict of tensors.")
    if isinstance(value, Mapping):
        for key, child in value.items():
            yield from _tensors(child, file, (*path, key))
    elif isinstance(value, torch.Tensor):
        yield path, value.detach()
    elif value is not None:
        raise CheckpointError(f"{_describe((file, path))} holds a {type(value).__name__}; expected a tensor.")


def _metalora(value: Any, file: str) -> dict[tuple[Any, ...], torch.Tensor]:
    """A meta-LoRA file by (layer, group, key, part); the LoRA tensors must carry the batch axis of 1."""
    leaves: dict[tuple[Any, ...], torch.Tensor] = {}
    for path, tensor in _tensors(value, file):
        layer = int(path[0]) if isinstance(path[0], str) and path[0].isdigit() else path[0]
        path = (layer, *path[1:])
        part = path[-1]
        if len(path) == 4 and part in _LORA_PARTS:
            batched = tensor.dim() == (2 if part == "C" else 3) and tensor.shape[0] == 1
            if not batched and not (part == "C" and tensor.dim() == 1):
                expected = "(1, out) or (out)" if part == "C" else f"(1, {'in, R' if part == 'A' else 'R, out'})"
                raise CheckpointError(
                    f"{_describe((file, path))} has shape {tuple(tensor.shape)}; the reference layout is {expected}."
                )
        leaves[path] = tensor
    return leaves


def _merge_metalora(base: dict[tuple[Any, ...], torch.Tensor],
                    additional: dict[tuple[Any, ...], torch.Tensor]) -> dict[tuple[Any, ...], torch.Tensor]:
    """`metalora.pth` then the IFT addition: A concatenated on dim 2, B on dim 1, C summed."""
    if set(base) != set(additional):
        layers = [sorted({path[0] for path in lora}, key=str) for lora in (additional, base)]
        if layers[0] != layers[1]:
            raise CheckpointError(
                f"{ADDITIONAL_METALORA_FILE} has decoder layers {layers[0]}, {METALORA_FILE} has {layers[1]}."
            )
        differing = sorted(_describe((METALORA_FILE, path)) for path in set(base) ^ set(additional))
        raise CheckpointError(
            f"{ADDITIONAL_METALORA_FILE} and {METALORA_FILE} do not hold the same tensors: {_abbreviate(differing)}."
        )
    merged = {}
    for path, first in base.items():
        second, part = additional[path], path[-1]
        try:
            if part in ("A", "B"):  # the rank axis: A (1, in, R), B (1, R, out)
                merged[path] = torch.cat([first, second], dim=2 if part == "A" else 1)
            else:
                merged[path] = first + second if part == "C" else first
        except RuntimeError:
            raise CheckpointError(
                f"{_describe((METALORA_FILE, path), with_file=False)} has shape {tuple(first.shape)} in "
                f"{METALORA_FILE} but {tuple(second.shape)} in {ADDITIONAL_METALORA_FILE}: they cannot be merged."
            ) from None
    return merged


# ---------------------------------------------------------------------------------------- sizes
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
            f"{MEM_TOKENS_FILE} has {num_memory_tokens} memory tokens, but {found} of the target modules "
            f"(P(r) = {per_rank}*r + {bias}, hidden size {hidden_size}) gives ceil(P/H) = {num_memory_tokens}."
        )
    return ranks[0]


# ----------------------------------------------------------------------------- loading into a model
def _mismatch(config: PretrainedConfig, problems: list[str]) -> BackboneMismatchError:
    name = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "?")
    return BackboneMismatchError(
        f"The SHINE checkpoint does not fit the backbone ({name}, hidden size {config.hidden_size}, "
        f"{config.num_hidden_layers} layers): {_abbreviate(problems, separator='; ')}."
    )


def _load_tensors(model: ShineForCausalLM, checkpoint: ReferenceCheckpoint, backbone_config: PretrainedConfig) -> None:
    """Load the checkpoint into `model.hypernetwork` with one strict `load_state_dict`.

    The model's own state dict is the specification of which tensors must exist and their shapes;
    when the load fails, `_incompatibility` says why under reference file and key names.
    """
    names = {reference_key(name, model.targets): name for name in model.hypernetwork.state_dict()}
    state = {}
    for ref, tensor in checkpoint.tensors.items():
        if ref in names:  # LoRA tensors lose the reference's batch axis of 1 (C may also come without it)
            batched = ref[0] == METALORA_FILE and (ref[1][-1] != "C" or tensor.dim() == 2)
            state[names[ref]] = tensor[0] if batched else tensor
    try:
        if len(state) < len(checkpoint.tensors):
            raise RuntimeError("Some reference tensors have no place in the hypernetwork.")
        model.hypernetwork.load_state_dict(state, strict=True)
    except RuntimeError:
        explanation = _incompatibility(model, checkpoint, names, backbone_config)
        if explanation is None:
            raise
        raise explanation from None


def _incompatibility(model: ShineForCausalLM, checkpoint: ReferenceCheckpoint, names: dict[ReferenceKey, str],
                     backbone_config: PretrainedConfig) -> ShineError | None:
    """Why the checkpoint's tensors do not load into the hypernetwork built for the backbone (None:
    no difference in names or shapes).

    Returns:
        CheckpointError: tensors outside the reference layout, or tensors of it missing.
        BackboneMismatchError: a tensor's shape, a bias delta C or the number of decoder layers
            differs from what the backbone needs (each tensor named with both shapes).
    """
    expected = model.hypernetwork.state_dict()
    layers, backbone_layers = checkpoint.num_layers, model.config.num_hidden_layers

    def in_one_side_only(ref: ReferenceKey) -> bool:  # decoder layers reported once, as a layer count
        return ref[0] == METALORA_FILE and isinstance(ref[1][0], int) and ref[1][0] >= min(layers, backbone_layers)

    def bias_delta(ref: ReferenceKey) -> bool:  # a C exists exactly where the backbone's module has a bias
        return ref[0] == METALORA_FILE and len(ref[1]) == 4 and ref[1][3] == "C"

    missing = [ref for ref in names if ref not in checkpoint.tensors and not in_one_side_only(ref)]
    unsupported = [ref for ref in checkpoint.tensors if ref not in names and not in_one_side_only(ref)]
    layout = []
    for file in REFERENCE_FILES[:3]:
        found = []
        for label, refs in (("missing", missing), ("unsupported", unsupported)):
            keys = [_describe(ref, with_file=False) for ref in refs if ref[0] == file and not bias_delta(ref)]
            if keys:
                found.append(f"{label} {_abbreviate(keys)}")
        if found:
            layout.append(f"{file} is not in the reference layout: {'; '.join(found)}.")
    if layout:
        return CheckpointError(" ".join(layout))

    problems = []
    for ref in [*checkpoint.tensors, *missing]:
        tensor, target = checkpoint.tensors.get(ref), expected.get(names.get(ref, ""))
        have = None if tensor is None else tuple(tensor.shape)
        needed = None if target is None else tuple(target.shape)
        if have is not None and needed is not None:  # in the reference's layout, with its batch axis
            needed = (1,) * (tensor.dim() - target.dim()) + needed
        if have != needed and not in_one_side_only(ref):
            problems.append(f"{_describe(ref)} has shape {have}, the backbone needs {needed}")
    if layers != backbone_layers:
        problems.append(f"{METALORA_FILE} has {layers} decoder layers, the backbone has {backbone_layers}")
    return _mismatch(backbone_config, problems) if problems else None


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
        out_dir: The directory to write the shine-hf checkpoint to (`save_pretrained` layout).
        m2p_num_heads: M2P attention heads (not stored in the files). Default: the reference
            configuration's value (32 for hidden size 4096), else the backbone's head count.
        lora_scale: Scale s of the generated LoRA, a positive number (not stored in the files;
            reference: 0.001).
        revision: Hub revision of `src`.
        tokenizer: The backbone's tokenizer, attached to the model before saving.
        backbone_revision: Hub revision of `backbone` when given by name (recorded in the config).
        progress: Called with a short message before each step.

    Returns:
        `out_dir` as a Path.

    Raises:
        ConfigError: `lora_scale` or `m2p_num_heads` is a value `ShineConfig` refuses.
        CheckpointError: a file is missing, unsafe (needs code execution), corrupt or not in the
            reference layout, or `out_dir` is an existing file.
        BackboneMismatchError: a tensor's shape does not fit the backbone (names both shapes), or
            `m2p_num_heads` does not divide its hidden size.
        UnsupportedBackboneError: the backbone lacks the seven q/k/v/o/gate/up/down projections.
    """
    ShineConfig(lora_scale=lora_scale, m2p_num_heads=m2p_num_heads)  # the options, checked before any work
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise CheckpointError(f"{out_dir} is a file; the converted checkpoint is written as a directory.")
    report = progress or (lambda message: None)
    report(f"Locating {src}")
    directory = resolve_checkpoint_dir(src, revision)
    report(f"Reading reference checkpoint from {directory}")
    checkpoint = load_reference_checkpoint(directory)
    report("Reading backbone shapes")
    backbone_model = _load_backbone(backbone, backbone_revision)
    config = backbone_model.config
    hidden = config.hidden_size
    num_memory_tokens, checkpoint_hidden = checkpoint.mem_tokens.shape
    if checkpoint_hidden != hidden:  # the sizes below are inferred for the checkpoint's hidden size
        raise _mismatch(config, [f"{MEM_TOKENS_FILE} has shape {(num_memory_tokens, checkpoint_hidden)}, "
                                 f"the backbone needs ({num_memory_tokens}, {hidden})"])
    sizes = checkpoint.sizes()
    heads = m2p_num_heads if m2p_num_heads is not None else default_m2p_num_heads(config)
    if hidden % heads:
        raise BackboneMismatchError(f"m2p_num_heads={heads} does not divide the backbone's hidden size {hidden}.")
    report(f"Building hypernetwork (r={sizes['lora_rank']}, R={sizes['metalora_rank']}, "
           f"{sizes['m2p_num_layers']} M2P layers x {heads} heads)")
    try:
        model = ShineForCausalLM.from_backbone(backbone_model, tokenizer=tokenizer, revision=backbone_revision,
                                               target_modules=list(REFERENCE_MODULES), m2p_num_heads=heads,
                                               lora_scale=lora_scale, **sizes)
    except ConfigError as error:  # the options were checked above: ShineConfig refuses the sizes read from the files
        raise CheckpointError(f"{directory} does not describe a valid SHINE hypernetwork: {error}") from error
    if tokenizer is not None:
        model.tokenizer = tokenizer
    report("Loading the tensors")
    _load_tensors(model, checkpoint, config)
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
    mem_tokens, metanetwork, metalora = None, {}, {}
    for name, tensor in model.hypernetwork.state_dict().items():
        tensor = tensor.detach().to("cpu").clone()
        file, path = reference_key(name, model.targets)
        if file == MEM_TOKENS_FILE:
            mem_tokens = nn.Parameter(tensor)
        elif file == METANETWORK_FILE:
            metanetwork[path[0]] = tensor
        else:  # as the reference's init_lora_dict makes them: (1, ...) leaves, C None without a bias
            layer, group, key, part = path
            leaf = metalora.setdefault(layer, {}).setdefault(group, {}).setdefault(key, dict.fromkeys(_LORA_PARTS))
            leaf[part] = tensor[None].requires_grad_(True)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as staging:
        torch.save(mem_tokens, staging / MEM_TOKENS_FILE)
        torch.save(metanetwork, staging / METANETWORK_FILE)
        torch.save(metalora, staging / METALORA_FILE)
        # The meta-LoRA is written whole: a stale IFT addition beside it would be merged in again.
        (out_dir / ADDITIONAL_METALORA_FILE).unlink(missing_ok=True)
    return out_dir
