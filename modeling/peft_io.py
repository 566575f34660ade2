"""PEFT LoRA adapter files: read with PEFT's own machinery, checked field by field, turned into
per-module (A, B, C).

`read_peft_config` / `read_peft_weights` wrap `peft.PeftConfig.from_pretrained` and
`peft.utils.load_peft_weights` (local directories and Hub repos; `adapter_model.safetensors`, else
`adapter_model.bin` with `torch.load(weights_only=True)`), turning every failure into a
`CheckpointError` that names the file. `lora_from_peft` computes exactly what
`peft.PeftModel.from_pretrained` computes, or refuses:

- honoured: `r`, `lora_alpha`, `use_rslora` (alpha/sqrt(r)), `rank_pattern` / `alpha_pattern`
  (per-module ranks and scalings), `lora_bias` (C); each module's scaling is folded into its B and
  C, since PEFT computes (x A B + C) * scaling. `target_modules` / `exclude_modules` are checked
  against the tensors. `fan_in_fan_out` is recorded; like PEFT, `ShineAdapter.merge_into` lets the
  module kind (nn.Linear or Conv1D) decide the weight layout.
- no effect at inference: `lora_dropout`, `init_lora_weights` values that initialise only A and B,
  and metadata (`task_type`, `inference_mode`, `peft_version`, ...).
- refused with IncompatibleAdapterError naming the field: everything else that is set (`use_dora`,
  `modules_to_save`, `layers_to_transform`, `layers_pattern`, `bias` other than "none", inits that
  rewrite the base weights such as PiSSA, other `peft_type`s, fields this table does not know).
- refused with CheckpointError: tensors that disagree with the config (a rank that neither `r` nor
  `rank_pattern` gives, modules `target_modules` does not select, `target_modules` entries without
  tensors, `lora_B.bias` without `lora_bias`). A module adapted in some layers only (excluded
  elsewhere) is refused with IncompatibleAdapterError.

Ships as Hub remote code: imports only torch and safetensors at import time, and peft only through
`import_peft()` (inside `try`, which transformers' remote-code import check skips, so the model code
loads where peft is not installed).
"""

from __future__ import annotations

import math
import os
import pickle
import re
from typing import Any

import torch
from safetensors import SafetensorError

from .errors import CheckpointError, IncompatibleAdapterError
from .lora import TARGET_MODULE_CANDIDATES, LoraWeights, TargetModule
from .pretrained import is_local_reference

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_PICKLE_WEIGHTS_NAME = "adapter_model.bin"  # older PEFT saves; read with weights_only=True
PEFT_PREFIX = "base_model.model."

# "base_model.model.<layers path>.<layer>.<module>.lora_<A|B>.<weight|bias>": the first numeric path
# component is the decoder-layer index; what follows it is the module's path inside the layer.
_PEFT_KEY = re.compile(
    rf"^{re.escape(PEFT_PREFIX)}(?P<module>(?P<path>.+?)\.(?P<layer>\d+)\.(?P<name>.+))"
    rf"\.lora_(?P<part>A|B)\.(?P<kind>weight|bias)$"
)

# LoraConfig fields that do not change y = xW + (xA)B (+ C) at inference, whatever their value.
_INFERENCE_NEUTRAL_FIELDS = frozenset({
    "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode",
    "lora_dropout", "runtime_config", "megatron_core", "qalora_group_size", "ensure_weight_tying",
    # configure an init method; `init_lora_weights` itself is checked
    "eva_config", "corda_config", "lora_ga_config", "loftq_config",
})
# Fields `lora_from_peft` reads and checks itself.
_HONOURED_FIELDS = frozenset({
    "peft_type", "r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "lora_bias",
    "target_modules", "exclude_modules", "fan_in_fan_out", "bias", "init_lora_weights",
})
# init_lora_weights values (besides True/False) that only initialise A and B, which the saved tensors
# replace; the others (PiSSA, OLoRA, CorDA, MiCA, LoftQ, LoRA-GA) rewrite the base weights when PEFT
# loads the adapter.
_NEUTRAL_INITS = ("gaussian", "eva", "orthogonal")
_WHY_UNSUPPORTED = {
    "use_dora": "DoRA rescales every weight column by a learned magnitude, which is not y = xW + (xA)B",
    "modules_to_save": "it replaces whole modules of the backbone",
    "layers_to_transform": "it adapts only some decoder layers, a ShineAdapter adapts all of them",
    "layers_pattern": "it adapts only some decoder layers, a ShineAdapter adapts all of them",
    "trainable_token_indices": "it trains rows of the embedding matrix",
    "layer_replication": "it changes the backbone's stack of layers",
    "target_parameters": "it adapts parameters rather than linear modules",
    "alora_invocation_tokens": "an activated LoRA applies only after its invocation tokens",
}


def import_peft() -> Any:
    """The `peft` package, with the submodules used here loaded; ImportError saying how to get it."""
    try:
        import peft
        import peft.tuners.tuners_utils
        import peft.utils.constants
        import peft.utils.other
    except ImportError as error:
        raise ImportError("Reading or writing PEFT adapters needs PEFT: `pip install peft`.") from error
    return peft


def check_hub_kwargs(hub_kwargs: dict[str, Any], download: Any = None,
                     caller: str = "ShineAdapter.from_pretrained") -> None:
    """TypeError naming any keyword of `caller` that `download` (default:
    `huggingface_hub.hf_hub_download`) would not take besides what the caller sets itself."""
    import inspect

    from huggingface_hub import hf_hub_download

    own = {"repo_id", "filename", "revision", "repo_type", "allow_patterns", "ignore_patterns", "dry_run"}
    accepted = set(inspect.signature(download or hf_hub_download).parameters) - own
    unknown = sorted(set(hub_kwargs) - accepted)
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {unknown}.")


def _file_label(path_or_repo_id: str | os.PathLike, filename: str, subfolder: str | None) -> str:
    """How error messages name one of the adapter's files (a local path or `repo/[subfolder/]file`)."""
    return os.path.join(os.fspath(path_or_repo_id), subfolder or "", filename)


def read_peft_config(path_or_repo_id: str | os.PathLike, revision: str | None, hub_kwargs: dict[str, Any]):
    """`peft.PeftConfig.from_pretrained` with typed errors naming the file."""
    import json

    peft = import_peft()
    where = _file_label(path_or_repo_id, ADAPTER_CONFIG_NAME, hub_kwargs.get("subfolder"))
    if not os.path.isdir(path_or_repo_id) and is_local_reference(os.fspath(path_or_repo_id)):
        raise CheckpointError(f"No such adapter directory: {os.fspath(path_or_repo_id)} (and it is not a Hub repo id).")
    if os.path.isdir(path_or_repo_id) and not os.path.isfile(where):
        raise CheckpointError(f"{where} is missing: not a saved PEFT adapter directory.")
    try:
        config = peft.PeftConfig.from_pretrained(os.fspath(path_or_repo_id), revision=revision, **hub_kwargs)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{where} is not valid JSON: {error}") from error
    except (KeyError, TypeError) as error:  # no or an unknown peft_type, fields of the wrong kind
        raise CheckpointError(f"{where} is not a PEFT adapter config: {error!r}") from error
    except ValueError as error:
        if isinstance(error.__cause__, Exception):  # PEFT's "Can't find adapter_config.json" from the Hub
            raise CheckpointError(f"Can't read {where}: {error.__cause__}") from error
        raise CheckpointError(f"{where} is not a valid PEFT config: {error}") from error
    except OSError as error:
        raise CheckpointError(f"Can't read {where}: {error}") from error
    if not isinstance(config, peft.LoraConfig):
        raise IncompatibleAdapterError(
            f"{where} has peft_type={getattr(config.peft_type, 'value', config.peft_type)!r}: a ShineAdapter "
            f"can only hold a LoRA (peft_type='LORA')."
        )
    return config


def read_peft_weights(path_or_repo_id: str | os.PathLike, revision: str | None,
                       device: str | torch.device | None, hub_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """`peft.utils.load_peft_weights` with typed errors naming the file."""
    peft = import_peft()
    subfolder = hub_kwargs.get("subfolder")
    where = _file_label(path_or_repo_id, ADAPTER_WEIGHTS_NAME, subfolder)
    if os.path.isdir(path_or_repo_id):
        pickled = _file_label(path_or_repo_id, ADAPTER_PICKLE_WEIGHTS_NAME, subfolder)
        if not os.path.isfile(where):
            if not os.path.isfile(pickled):
                raise CheckpointError(f"{where} is missing: not a saved PEFT adapter directory.")
            where = pickled
    try:
        return peft.utils.load_peft_weights(os.fspath(path_or_repo_id), device=str(device or "cpu"), revision=revision,
                                 **hub_kwargs)
    except SafetensorError as error:
        raise CheckpointError(f"{where} is not a readable safetensors file ({error}); it may be truncated "
                              f"or corrupt.") from error
    except (pickle.UnpicklingError, EOFError, RuntimeError) as error:
        raise CheckpointError(f"{where} is not a loadable weights-only torch file ({error}); it may be "
                              f"corrupt or hold objects other than tensors.") from error
    except (ValueError, OSError) as error:
        raise CheckpointError(f"Can't read {where}: {error}") from error


def lora_from_peft(
    config: Any, state: dict[str, torch.Tensor]
) -> tuple[dict[int, dict[str, LoraWeights]], list[TargetModule], str]:
    """(lora, targets, layers path) of a single adapter from a loaded `LoraConfig` and PEFT-named
    tensors: what `peft.PeftModel.from_pretrained` computes, or an error (module docstring)."""
    _refuse_unsupported_fields(config)
    parts_by_module = _group_peft_tensors(config, state)
    layers_paths = {path for path, _, _ in parts_by_module}
    if len(layers_paths) != 1:
        raise CheckpointError(f"Adapter tensors do not share one decoder-layer path: {sorted(layers_paths)}.")
    layers_path = layers_paths.pop()
    # PEFT's lora_bias applies to every targeted module; a module whose bias is zero in every
    # layer had none (exported as exact zeros), one with any non-zero layer keeps all of them.
    biased = {name for (_, _, name), parts in parts_by_module.items() if "C" in parts and torch.any(parts["C"])}
    lora: dict[int, dict[str, LoraWeights]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for (_, layer, name), parts in parts_by_module.items():
        module = f"{layers_path}.{layer}.{name}"
        A, B, C = _checked_module_tensors(config, module, parts)
        scaling = _peft_scaling(config, module, A.shape[0])
        A = A.T.contiguous()[None]  # (1, in, r)
        B = B.T.contiguous()[None]  # (1, r, out)
        C = C[None] if name in biased else None
        if scaling != 1.0:  # alpha/r folded into B and C: PEFT computes (x A B + C) * scaling
            B = B * scaling
            C = None if C is None else C * scaling
        lora.setdefault(layer, {})[name] = LoraWeights(A, B, C)
        shape = (A.shape[1], B.shape[2])
        if shapes.setdefault(name, shape) != shape:
            raise CheckpointError(
                f"{name} is {shapes[name][0]}->{shapes[name][1]} in one layer and {shape[0]}->{shape[1]} "
                f"in layer {layer}: a ShineAdapter needs the same shapes in every layer."
            )
    num_layers = max(lora) + 1
    missing = [(layer, n) for layer in range(num_layers) for n in shapes if n not in lora.get(layer, {})]
    if missing:
        raise IncompatibleAdapterError(
            f"The adapter has no weights for {missing[:5]} (layer, module): a ShineAdapter adapts each of its "
            f"modules in every decoder layer."
        )
    # the hypernetwork's reading order; unknown names keep their order after the known ones
    order = {name: index for index, name in enumerate(TARGET_MODULE_CANDIDATES)}
    targets = [
        TargetModule(name, shapes[name][0], shapes[name][1], name in biased, bool(config.fan_in_fan_out))
        for name in sorted(shapes, key=lambda n: order.get(n, len(order)))
    ]
    return dict(sorted(lora.items())), targets, layers_path


def _refuse_unsupported_fields(config: Any) -> None:
    """IncompatibleAdapterError naming every LoraConfig field set to something a ShineAdapter cannot honour."""
    import dataclasses

    defaults = import_peft().LoraConfig()
    problems = []
    for field in dataclasses.fields(config):
        name, value = field.name, getattr(config, field.name)
        if name in _INFERENCE_NEUTRAL_FIELDS or name in _HONOURED_FIELDS or value == getattr(defaults, name, None):
            continue
        problems.append(f"{name}={value!r} ({_WHY_UNSUPPORTED.get(name, 'not supported by ShineAdapter')})")
    if config.bias != "none":
        problems.append(f"bias={config.bias!r} (it trains the backbone's own biases, which the adapter then "
                        f"replaces; only bias='none' maps onto a LoRA, use lora_bias for bias deltas)")
    init = config.init_lora_weights
    if not (isinstance(init, bool) or init in _NEUTRAL_INITS):
        problems.append(f"init_lora_weights={config.init_lora_weights!r} (PEFT rewrites the base weights when "
                        f"it loads such an adapter)")
    if config.target_modules is None:
        problems.append("target_modules=None (the file does not say which modules it adapts)")
    if problems:
        raise IncompatibleAdapterError("This PEFT adapter cannot be a ShineAdapter: " + "; ".join(problems) + ".")


def _group_peft_tensors(
    config: Any, state: dict[str, torch.Tensor]
) -> dict[tuple[str, int, str], dict[str, torch.Tensor]]:
    """(layers path, layer, module name) -> {"A", "B", "C"}: tensors as stored, after checking that
    each belongs to a module the config targets and that every `target_modules` entry has tensors."""
    peft = import_peft()
    check_target_module_exists = peft.tuners.tuners_utils.check_target_module_exists
    all_linear = peft.utils.constants.INCLUDE_LINEAR_LAYERS_SHORTHAND
    grouped: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {}
    modules: set[str] = set()
    for key, tensor in state.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise CheckpointError(
                f"Unexpected tensor {key!r} in a LoRA adapter: a ShineAdapter holds lora_A / lora_B "
                f"(and lora_B.bias) of modules inside the decoder layers only."
            )
        module = match["module"]
        if config.target_modules != all_linear and not check_target_module_exists(config, module):
            raise CheckpointError(
                f"The adapter holds tensors for {module}, which target_modules={_shown(config.target_modules)} "
                f"(exclude_modules={_shown(config.exclude_modules)}) does not select: PEFT would ignore them."
            )
        modules.add(module)
        part = "C" if match["kind"] == "bias" else match["part"]
        grouped.setdefault((match["path"], int(match["layer"]), match["name"]), {})[part] = tensor
    if not grouped:
        raise CheckpointError("The adapter holds no LoRA tensors.")
    if not isinstance(config.target_modules, str):
        unused = sorted(t for t in config.target_modules
                        if not any(m == t or m.endswith(f".{t}") for m in modules))
        if unused:
            raise CheckpointError(
                f"target_modules names {unused}, but the adapter holds no tensors for them: PEFT would add "
                f"freshly initialised LoRA layers there. Remove them from target_modules."
            )
    return grouped


def _shown(value: Any) -> Any:
    return sorted(value) if isinstance(value, (set, frozenset)) else value


def _checked_module_tensors(config: Any, module: str, parts: dict[str, torch.Tensor]):
    """A (r, in), B (out, r), C (out) of one module, checked against each other and the config's rank."""
    get_pattern_key = import_peft().utils.other.get_pattern_key
    if "A" not in parts or "B" not in parts:
        raise CheckpointError(f"{module}: lora_A or lora_B is missing.")
    A, B, C = parts["A"], parts["B"], parts.get("C")
    if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
        raise CheckpointError(
            f"{module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} are not a (r, in), (out, r) pair."
        )
    expected = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), module), config.r)
    if A.shape[0] != expected:
        raise CheckpointError(
            f"{module} has rank {A.shape[0]}, but adapter_config.json gives it rank {expected} "
            f"(r={config.r}, PEFT's default when `r` is absent is 8; rank_pattern={config.rank_pattern}): PEFT "
            f"cannot load this adapter either. Set `r` / `rank_pattern` to the tensors' ranks."
        )
    if C is not None:
        if not config.lora_bias:
            raise CheckpointError(
                f"{module} has a lora_B.bias but adapter_config.json has lora_bias=false: PEFT would ignore it."
            )
        if tuple(C.shape) != (B.shape[0],):
            raise CheckpointError(f"{module}: lora_B.bias is {tuple(C.shape)}, expected ({B.shape[0]},).")
    elif config.lora_bias:
        raise CheckpointError(f"{module} has no lora_B.bias although adapter_config.json has lora_bias=true.")
    return A, B, C


def _peft_scaling(config: Any, module: str, rank: int) -> float:
    """The factor PEFT multiplies a module's LoRA output with: alpha/r, or alpha/sqrt(r) with rsLoRA."""
    get_pattern_key = import_peft().utils.other.get_pattern_key
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), module), config.lora_alpha)
    return alpha / math.sqrt(rank) if config.use_rslora else alpha / rank

