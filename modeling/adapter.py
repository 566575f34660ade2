"""`ShineAdapter`: a batch of generated LoRAs, speaking PEFT's file format.

Lives in `modeling/` (torch + transformers only at import time) because `internalize` returns it
and the modeling code is shipped as Hub remote code; PEFT (through `peft_io.import_peft`) and
huggingface_hub are imported only by the methods that export, load or push.

Reading PEFT adapters (`from_pretrained`) is `peft_io.py`: what each LoraConfig field becomes, and
what is refused.

Base model. `base_model_name_or_path` is a Hub id, or an absolute path when the backbone was
loaded from a local directory (relative paths are made absolute when the adapter is created, so a
later save elsewhere still points at the same directory). `save_pretrained` writes it as it is;
`push_to_hub` never uploads a path of this machine (see its docstring).

Merged state. `merge_into` records what it merged in a list on the backbone object itself (the
plain attribute named by `MERGED_ADAPTERS_ATTRIBUTE`, not a parameter or buffer, so `state_dict`,
`save_pretrained` and PEFT never see it; `copy.deepcopy` copies it along with the weights). That is
what lets `merge_into` / `unmerge_from` refuse a second merge or an unmerge of an adapter that is not
merged, instead of corrupting the weights.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import nn

from .errors import ConfigError, IncompatibleAdapterError, InvalidInputError, UnsupportedBackboneError
from .io_utils import atomic_directory
from .lora import LoraWeights, TargetModule, discover_target_modules
from .model_card import render_card
from .peft_io import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_PICKLE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    PEFT_PREFIX,
    check_hub_kwargs,
    import_peft,
    lora_from_peft,
    read_peft_config,
    read_peft_weights,
)
from .pretrained import is_local_reference

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

ADAPTER_CARD_NAME = "README.md"
# What an adapter save writes or replaces; other files in the directory are left alone.
ADAPTER_FILES = frozenset({ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, ADAPTER_PICKLE_WEIGHTS_NAME, ADAPTER_CARD_NAME})
# What a router (`shine_hf.routing.RoutedAdapter`) saves: `shine_router.json` and one `chunk-NNNNN/`
# adapter per chunk. Named here so that either kind of save replaces the other kind's files in a
# directory (never a plain adapter beside a router's files, which would still load as the router).
ROUTER_CONFIG_NAME = "shine_router.json"


def is_router_chunk_directory(name: str) -> bool:
    """Whether `name` is a router's chunk directory (`chunk-00000`, ...)."""
    return re.fullmatch(r"chunk-\d{5}", name) is not None


MERGED_ADAPTERS_ATTRIBUTE = "_shine_merged_adapters"


def _absolute_if_directory(name: str | os.PathLike | None) -> str | None:
    if name is None:
        return None
    name = os.fspath(name)
    return os.path.abspath(name) if os.path.isdir(name) else name


class ShineAdapter:
    """Generated LoRA weights for one or more contexts (one adapter per batch row).

    Every module's weights are `LoraWeights(A (b, in, r), B (b, r, out), C (b, out) | None)`;
    y = x W + (x A) B (+ C) with no extra alpha/r scaling. `len(adapter)` is the batch size b and
    `adapter[i]` the i-th adapter. The rank r may differ between modules (an adapter read from a
    PEFT `rank_pattern`); generated adapters have one rank.

    Args:
        lora: layer index -> target module name -> weights.
        targets: The target modules, in the hypernetwork's reading order.
        layers_path: Path of the decoder-layer list in the backbone (e.g. `model.layers`).
        base_model_name_or_path: The backbone's Hub id or local directory (written to the PEFT
            config). A directory is stored as an absolute path.
        base_model_revision: The backbone's revision, if known.
    """

    def __init__(
        self,
        lora: dict[int, dict[str, LoraWeights]],
        targets: Sequence[TargetModule],
        layers_path: str,
        base_model_name_or_path: str | os.PathLike | None = None,
        base_model_revision: str | None = None,
    ):
        self.lora = lora
        self.targets = list(targets)
        self.layers_path = layers_path
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision
        self._batch_size = next(iter(lora[0].values())).A.shape[0]

    @property
    def base_model_name_or_path(self) -> str | None:
        """The backbone's Hub id, or the absolute path of the local directory it was loaded from.

        Setting a relative directory stores its absolute path (resolved against the current
        directory), so the adapter keeps pointing at it wherever it is saved later."""
        return self._base_model_name_or_path

    @base_model_name_or_path.setter
    def base_model_name_or_path(self, name: str | os.PathLike | None) -> None:
        self._base_model_name_or_path = _absolute_if_directory(name)

    # ------------------------------------------------------------------ batch handling
    def __len__(self) -> int:
        return self._batch_size

    @property
    def num_layers(self) -> int:
        return len(self.lora)

    def _map(self, fn) -> dict[int, dict[str, LoraWeights]]:
        return {
            layer: {
                name: LoraWeights(fn(w.A), fn(w.B), None if w.C is None else fn(w.C))
                for name, w in modules.items()
            }
            for layer, modules in self.lora.items()
        }

    def _with(self, lora: dict[int, dict[str, LoraWeights]], **overrides: Any) -> ShineAdapter:
        fields = {"base_model_name_or_path": self.base_model_name_or_path,
                  "base_model_revision": self.base_model_revision, **overrides}
        return ShineAdapter(lora, self.targets, self.layers_path, **fields)

    def __getitem__(self, index: int | slice) -> ShineAdapter:
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"adapter index {index} out of range for a batch of {len(self)}")
            index = slice(index % len(self), index % len(self) + 1)
        return self._with(self._map(lambda t: t[index]))

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    @classmethod
    def stack(cls, adapters: Sequence[ShineAdapter]) -> ShineAdapter:
        """Concatenate adapters along the batch axis (e.g. to generate with one adapter per row).

        Adapters of different ranks (a composed one beside a single one) are padded with zero rank
        columns to the largest rank of each module; their deltas are unchanged."""
        from .composition import stack_loras

        if not adapters:
            raise ValueError("stack() needs at least one adapter")
        first = adapters[0]
        for other in adapters[1:]:
            first.check_same_layout(other, ignore_rank=True)
        lora = stack_loras([a.lora for a in adapters])  # pads nothing when every rank already matches
        return first._with(lora)

    @classmethod
    def compose(
        cls,
        adapters: Sequence[ShineAdapter],
        method: str = "concat",
        weights: Sequence[float] | None = None,
    ) -> ShineAdapter:
        """One adapter whose delta combines the deltas of `adapters` (chunks of one document, or
        several documents), exactly:

        - `"concat"`: ranks stacked, ΔW = Σ_i A_i B_i (the sum of the deltas; bias deltas summed);
        - `"mean"`: their average, ΔW = (1/k) Σ_i A_i B_i;
        - `"weighted"`: ΔW = Σ_i w_i A_i B_i with one weight per adapter.

        The rank of the result is the sum of the ranks (use `to_rank` for a smaller adapter). Every
        adapter must have the same layout (backbone, target modules, layers) and batch size; with
        batch size b > 1, row j of the result composes row j of each adapter.

        Raises:
            IncompatibleAdapterError: adapters of different backbones, target modules or batch sizes.
        """
        from .composition import compose_loras, composition_weights

        if not adapters:
            raise InvalidInputError("compose() needs at least one adapter.")
        first = adapters[0]
        for other in adapters[1:]:
            first.check_same_layout(other, ignore_rank=True)
            if len(other) != len(first):
                raise IncompatibleAdapterError(
                    f"Adapters of batch sizes {len(first)} and {len(other)} cannot be composed row by row."
                )
        factors = composition_weights(method, len(adapters), weights)
        return first._with(compose_loras([a.lora for a in adapters], factors))

    def to_rank(self, rank: int) -> ShineAdapter:
        """The best rank-`rank` approximation of every module's delta (truncated SVD, in float64), bias
        deltas unchanged: a smaller standard PEFT adapter of a size you choose.

        Raises:
            IncompatibleAdapterError: `rank` is larger than the adapter's rank.
        """
        from .composition import truncate_rank

        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise InvalidInputError(f"rank must be a positive integer, got {rank!r}.")
        return self._with(truncate_rank(self.lora, rank))

    def to(self, *args: Any, **kwargs: Any) -> ShineAdapter:
        """Move/cast every tensor, like `torch.Tensor.to`."""
        return self._with(self._map(lambda t: t.to(*args, **kwargs)))

    def detach(self) -> ShineAdapter:
        return self._with(self._map(lambda t: t.detach()))

    @property
    def device(self) -> torch.device:
        return next(iter(self.lora[0].values())).A.device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.lora[0].values())).A.dtype

    # ------------------------------------------------------------------ layout
    @property
    def module_ranks(self) -> dict[tuple[int, str], int]:
        """(layer, module name) -> LoRA rank of that module."""
        return {(layer, name): w.A.shape[-1] for layer, modules in self.lora.items() for name, w in modules.items()}

    @property
    def rank(self) -> int:
        """The LoRA rank (PEFT's `r`): the rank most modules have; the others go to `rank_pattern`."""
        return Counter(self.module_ranks.values()).most_common(1)[0][0]

    def _layout(self, with_ranks: bool = True) -> tuple:
        # modules by name: an adapter read from PEFT files holds them in another order than a generated one
        return (self.layers_path, self.targets, tuple(
            (layer, name, w.A.shape[1], w.B.shape[2], w.A.shape[2] if with_ranks else None, w.C is None)
            for layer, modules in self.lora.items() for name, w in sorted(modules.items())
        ))

    def check_same_layout(self, other: ShineAdapter, ignore_rank: bool = False) -> None:
        """Raise IncompatibleAdapterError unless `other` has the same layers and modules (and, unless
        `ignore_rank`, the same ranks)."""
        if other._layout(not ignore_rank) != self._layout(not ignore_rank):
            raise IncompatibleAdapterError(
                "Adapters of different layouts cannot be combined: "
                f"{self.num_layers} layers x {[t.name for t in self.targets]} rank {self.rank} vs "
                f"{other.num_layers} layers x {[t.name for t in other.targets]} rank {other.rank}."
            )

    def check_compatible(self, layers_path: str, targets: Sequence[TargetModule], num_layers: int) -> None:
        """Raise IncompatibleAdapterError unless this adapter can be applied (as y = xW + (xA)B + C) to a
        backbone of that layout. A bias delta needs no bias in the backbone for that; merging does."""
        problems = self._layout_problems(layers_path, targets, num_layers)
        if problems:
            raise IncompatibleAdapterError("This adapter does not fit the backbone: " + "; ".join(problems) + ".")

    def _layout_problems(self, layers_path: str, targets: Sequence[TargetModule], num_layers: int) -> list[str]:
        problems = []
        if layers_path != self.layers_path:
            problems.append(f"its decoder layers are `{self.layers_path}`, the backbone's `{layers_path}`")
        if num_layers != self.num_layers:
            problems.append(f"{self.num_layers} layers vs the backbone's {num_layers}")
        backbone_targets = {t.name: t for t in targets}
        for t in self.targets:
            other = backbone_targets.get(t.name)
            if other is None:
                problems.append(f"module {t.name} does not exist in the backbone")
            elif (other.in_features, other.out_features) != (t.in_features, t.out_features):
                problems.append(
                    f"{t.name} is {t.in_features}->{t.out_features} in the adapter but "
                    f"{other.in_features}->{other.out_features} in the backbone"
                )
        return problems

    # ------------------------------------------------------------------ dense weights and merging
    def delta_weight(self, layer: int, name: str, fan_in_fan_out: bool | None = None) -> torch.Tensor:
        """Dense ΔW of one module, (out, in) like `nn.Linear.weight`, or (in, out) like GPT-2's
        `Conv1D.weight` when `fan_in_fan_out` (default: the layout recorded for that module).
        Computed in float32 (or wider). Needs a single adapter."""
        self._require_single("delta_weight")
        w = self.lora[layer][name]
        dtype = torch.promote_types(w.A.dtype, torch.float32)
        delta = w.A[0].to(dtype) @ w.B[0].to(dtype)  # (in, out)
        if fan_in_fan_out is None:
            fan_in_fan_out = next(t for t in self.targets if t.name == name).fan_in_fan_out
        return delta if fan_in_fan_out else delta.T

    def merge_into(self, backbone: nn.Module) -> None:
        """Add this adapter into the backbone's weights (and biases) in place.

        Everything is checked before the first weight changes: a single adapter, the decoder layers
        (path and number), every module (present, `nn.Linear` or `Conv1D`, same shape, floating-point
        weights that are not offloaded), a bias wherever the adapter has a bias delta. The weight
        layout follows the backbone's module kind (`Conv1D` stores (in, out)), as PEFT does whatever
        the adapter's `fan_in_fan_out` says. Unlike PEFT, an adapter exported with `lora_bias=True`
        merges into modules without a bias when their bias delta is zero.

        The backbone records the merge (see the module docstring); merging the same adapter into it
        again raises IncompatibleAdapterError. Different adapters may be merged one after another.

        Raises:
            IncompatibleAdapterError: the adapter does not fit, is a batch, or is already merged.
        """
        targets = self._check_mergeable(backbone, "merge_into")
        merged = _merged_adapters(backbone)
        if any(self._same_weights(other) for other in merged):
            raise IncompatibleAdapterError(
                "This adapter is already merged into this backbone; merging it again would add it twice. "
                "Call unmerge_from(backbone) first."
            )
        self._add_to(backbone, targets, sign=1.0)
        merged.append(self.detach())

    def unmerge_from(self, backbone: nn.Module) -> None:
        """Subtract this adapter from a backbone it was merged into (by `merge_into`).

        Raises:
            IncompatibleAdapterError: the adapter is not merged into this backbone (never merged, or
                already unmerged), does not fit it, or is a batch.
        """
        targets = self._check_mergeable(backbone, "unmerge_from")
        merged = _merged_adapters(backbone)
        position = next((i for i, other in enumerate(merged) if self._same_weights(other)), None)
        if position is None:
            raise IncompatibleAdapterError(
                "This adapter is not merged into this backbone (never merged, or already unmerged); "
                "subtracting it would corrupt the weights."
            )
        self._add_to(backbone, targets, sign=-1.0)
        del merged[position]

    def _check_mergeable(self, backbone: nn.Module, what: str) -> dict[str, TargetModule]:
        """Every check `merge_into` needs, before any weight changes; the backbone's targets by name."""
        self._require_single(what)
        try:
            layers_path, targets = discover_target_modules(backbone, [t.name for t in self.targets])
        except UnsupportedBackboneError as error:
            raise IncompatibleAdapterError(f"This adapter does not fit the backbone: {error}") from error
        layers = backbone.get_submodule(layers_path)
        problems = self._layout_problems(layers_path, targets, len(layers))
        problems += [  # `targets` lists the adapter's own targets, in order
            f"{mine.name} carries a non-zero bias delta but has no bias in the backbone"
            for mine, theirs in zip(self.targets, targets) if mine.has_bias and not theirs.has_bias
        ]
        if problems:
            raise IncompatibleAdapterError(f"Cannot {what}: this adapter does not fit the backbone: "
                                           + "; ".join(problems) + ".")
        for layer in layers:
            for t in targets:
                module = layer.get_submodule(t.name)
                for parameter in (module.weight, module.bias if t.has_bias else None):
                    if parameter is not None and (parameter.is_meta or not parameter.is_floating_point()):
                        raise IncompatibleAdapterError(
                            f"Cannot {what} {t.name}: its weights are {parameter.dtype} on {parameter.device} "
                            f"(offloaded or quantized); merging needs materialised floating-point weights."
                        )
        return {t.name: t for t in targets}

    def _add_to(self, backbone: nn.Module, targets: dict[str, TargetModule], sign: float) -> None:
        layers = backbone.get_submodule(self.layers_path)
        with torch.no_grad():
            for layer_index, modules in self.lora.items():
                for name, w in modules.items():
                    module = layers[layer_index].get_submodule(name)
                    delta = self.delta_weight(layer_index, name, fan_in_fan_out=targets[name].fan_in_fan_out)
                    module.weight.add_((sign * delta).to(device=module.weight.device, dtype=module.weight.dtype))
                    if w.C is not None:  # the checks made sure the module has a bias
                        bias = sign * w.C[0].to(delta.dtype)
                        module.bias.add_(bias.to(device=module.bias.device, dtype=module.bias.dtype))

    def _same_weights(self, other: ShineAdapter) -> bool:
        if self._layout() != other._layout():
            return False
        for layer, modules in self.lora.items():
            for name, w in modules.items():
                o = other.lora[layer][name]
                for mine, theirs in ((w.A, o.A), (w.B, o.B), (w.C, o.C)):
                    if mine is not None and not torch.equal(mine.to(theirs.device), theirs):
                        return False
        return True

    def _require_single(self, what: str) -> None:
        if len(self) != 1:
            raise IncompatibleAdapterError(
                f"{what} needs a single adapter, this one holds {len(self)}; select one with adapter[i]."
            )

    # ------------------------------------------------------------------ PEFT format
    @property
    def has_bias_deltas(self) -> bool:
        return any(t.has_bias for t in self.targets)

    @property
    def peft_config(self):
        """The `peft.LoraConfig` equivalent to this adapter (scaling alpha/r = 1 for every module;
        modules whose rank differs from `rank` are listed in `rank_pattern` and `alpha_pattern`)."""
        rank = self.rank
        # PEFT matches pattern keys as regular expressions against the module's full name
        pattern = {
            re.escape(f"{self.layers_path}.{layer}.{name}"): module_rank
            for (layer, name), module_rank in self.module_ranks.items() if module_rank != rank
        }
        return import_peft().LoraConfig(
            r=rank,
            lora_alpha=rank,
            rank_pattern=pattern,
            alpha_pattern=dict(pattern),
            lora_dropout=0.0,
            target_modules=[t.name for t in self.targets],
            fan_in_fan_out=any(t.fan_in_fan_out for t in self.targets),
            lora_bias=self.has_bias_deltas,
            bias="none",
            base_model_name_or_path=self.base_model_name_or_path,
            revision=self.base_model_revision,
            task_type="CAUSAL_LM",
            inference_mode=True,
        )

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        """PEFT-named tensors: lora_A.weight = Aᵀ (r, in), lora_B.weight = Bᵀ (out, r), lora_B.bias = C.

        With bias deltas (`lora_bias=True` applies to every targeted module) modules without a
        bias get an exact zero `lora_B.bias`."""
        self._require_single("peft_state_dict")
        state: dict[str, torch.Tensor] = {}
        for layer, modules in self.lora.items():
            for t in self.targets:
                w = modules[t.name]
                prefix = f"{PEFT_PREFIX}{self.layers_path}.{layer}.{t.name}"
                state[f"{prefix}.lora_A.weight"] = w.A[0].T.contiguous()
                state[f"{prefix}.lora_B.weight"] = w.B[0].T.contiguous()
                if self.has_bias_deltas:
                    bias = w.C[0] if w.C is not None else torch.zeros_like(w.B[0, 0])
                    state[f"{prefix}.lora_B.bias"] = bias.contiguous()
        return {k: v.detach().cpu() for k, v in state.items()}

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        safe_serialization: bool = True,
        is_main_process: bool = True,
    ) -> None:
        """Write a standard PEFT LoRA adapter: `adapter_config.json`, `adapter_model.safetensors` and
        a `README.md` card. `peft.PeftModel.from_pretrained(backbone, save_directory)` loads it.

        The files are assembled in a temporary directory and then replace the adapter files of
        `save_directory` (an older `adapter_model.bin` included), so a failed save leaves the old
        adapter as it was and a finished one leaves exactly the new adapter. The config names the
        base model as `base_model_name_or_path` holds it: a Hub id, or this machine's absolute path
        of a local backbone (`push_to_hub` refuses to upload the latter).

        Args:
            save_directory: Where to write (created if needed).
            safe_serialization: Only True (safetensors) is supported, as in PEFT's default.
            is_main_process: False writes nothing (as in PEFT, for distributed runs).
        """
        if safe_serialization is not True:
            raise ValueError(
                f"safe_serialization={safe_serialization!r}: ShineAdapter writes safetensors only "
                "(pickled weights are unsafe to load)."
            )
        if not is_main_process:
            return
        state = self.peft_state_dict()
        config = self.peft_config
        card = render_card("adapter", self)
        # a router saved here before is replaced whole (its chunk directories too), not left beside the adapter
        router = os.path.isfile(os.path.join(save_directory, ROUTER_CONFIG_NAME))
        with atomic_directory(save_directory, marker=ADAPTER_CONFIG_NAME,
                              owns=lambda name: name in ADAPTER_FILES or (router and name == ROUTER_CONFIG_NAME),
                              owns_directory=is_router_chunk_directory if router else None) as staging:
            config.save_pretrained(str(staging))
            save_file(state, str(staging / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
            (staging / ADAPTER_CARD_NAME).write_text(card, encoding="utf-8")

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        device: str | torch.device | None = None,
        **hub_kwargs: Any,
    ) -> ShineAdapter:
        """Read a PEFT LoRA adapter (local directory or Hub repo id) as a single ShineAdapter.

        The files are read by PEFT (`PeftConfig.from_pretrained`, `load_peft_weights`:
        `adapter_model.safetensors`, else `adapter_model.bin` with `torch.load(weights_only=True)`).
        The result computes what `peft.PeftModel.from_pretrained(backbone, path_or_repo_id)` does;
        configs that do not map exactly onto y = xW + (xA)B (+ C) are refused (see `peft_io.py`).

        Args:
            path_or_repo_id: A local directory or a Hub repo id.
            revision: The Hub revision.
            device: Where to load the tensors (default: CPU).
            **hub_kwargs: Other `huggingface_hub.hf_hub_download` arguments (`subfolder`, `token`,
                `cache_dir`, `local_files_only`, ...).

        Raises:
            CheckpointError: a file is missing, unreadable, corrupt or disagrees with the config.
            IncompatibleAdapterError: a valid PEFT adapter that a ShineAdapter cannot represent.
        """
        check_hub_kwargs(hub_kwargs)
        config = read_peft_config(path_or_repo_id, revision, hub_kwargs)
        state = read_peft_weights(path_or_repo_id, revision, device, hub_kwargs)
        return cls._from_peft(config, state)

    @classmethod
    def _from_peft(cls, config: Any, state: dict[str, torch.Tensor]) -> ShineAdapter:
        """A single adapter from a loaded `peft.LoraConfig` and PEFT-named tensors."""
        lora, targets, layers_path = lora_from_peft(config, state)
        return cls(lora, targets, layers_path, config.base_model_name_or_path, config.revision)

    # ------------------------------------------------------------------ Hub
    def push_to_hub(
        self,
        repo_id: str,
        *,
        base_model_name_or_path: str | None = None,
        commit_message: str = "Upload SHINE adapter",
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """Create `repo_id` if needed and upload the PEFT adapter and its card in one commit.

        The pushed `adapter_config.json` and card name the base model: `base_model_name_or_path`
        if given (it then becomes the adapter's own), else the adapter's. That must be a Hub id: when
        it is a local path (a backbone loaded from disk), the push is refused before anything is
        created or uploaded. `base_model_revision` is pushed as it is.

        Args:
            repo_id: The repo to push to (`name` or `namespace/name`).
            base_model_name_or_path: The backbone's Hub id, required when the adapter names a local
                path.
            commit_message, commit_description: Of the commit.
            private: Visibility of a newly created repo.
            token: Hub token (default: the logged-in one).
            revision: Branch to push to (created from the default branch if it does not exist).
            create_pr: Open a pull request instead of committing to the branch.

        Returns:
            The commit's URL (a `huggingface_hub.CommitInfo`, which also holds the PR URL).

        Raises:
            ConfigError: the base model would be a path of this machine.
            IncompatibleAdapterError: the adapter is a batch (push `adapter[i]`).
        """
        self._require_single("push_to_hub")
        self.base_model_name_or_path = hub_base_model(self.base_model_name_or_path, base_model_name_or_path, "adapter")
        return push_saved(self, repo_id, commit_message=commit_message, commit_description=commit_description,
                          private=private, token=token, revision=revision, create_pr=create_pr)

    def __repr__(self) -> str:
        ranks = sorted(set(self.module_ranks.values()))
        rank = f"rank={ranks[0]}" if len(ranks) == 1 else f"ranks={ranks}"
        return (
            f"ShineAdapter(batch={len(self)}, layers={self.num_layers}, {rank}, "
            f"targets={[t.name for t in self.targets]}, bias_deltas={self.has_bias_deltas}, "
            f"base_model={self.base_model_name_or_path!r})"
        )


# ---------------------------------------------------------------------- Hub pushes (adapters and routers)
def hub_base_model(current: str | None, given: str | None, what: str) -> str | None:
    """The base model a push of an adapter (or of a router, `what`) names: `given` if not None, else
    `current`.

    Raises:
        ConfigError: that is a local path, which means nothing on the Hub.
    """
    name = current if given is None else given
    if name is not None and is_local_reference(name):
        raise ConfigError(
            f"The {what}'s base model is the local path {name!r}, which means nothing on the Hub: pass "
            f"push_to_hub(..., base_model_name_or_path='org/name') with the backbone's Hub id."
        )
    return name


def push_saved(
    saved: Any,
    repo_id: str,
    *,
    commit_message: str,
    commit_description: str | None,
    private: bool | None,
    token: bool | str | None,
    revision: str | None,
    create_pr: bool,
) -> CommitInfo:
    """Create `repo_id` if needed (and the branch `revision`, from the default branch), write `saved`
    (an adapter or a router) into a temporary folder with its `save_pretrained`, its card naming the
    repo (`card_info["repo_id"]`), and upload that folder in one commit. Returns the
    `huggingface_hub.CommitInfo`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo.repo_id, branch=revision, exist_ok=True)
    saved.card_info = {**(getattr(saved, "card_info", None) or {}), "repo_id": repo.repo_id}
    with tempfile.TemporaryDirectory() as tmp:
        saved.save_pretrained(tmp)
        return api.upload_folder(
            repo_id=repo.repo_id, folder_path=tmp, commit_message=commit_message,
            commit_description=commit_description, revision=revision, create_pr=create_pr,
        )


# ---------------------------------------------------------------------- merged state on a backbone
def _merged_adapters(backbone: nn.Module) -> list[ShineAdapter]:
    """The adapters merged into `backbone`, kept on the backbone object (module docstring)."""
    return vars(backbone).setdefault(MERGED_ADAPTERS_ATTRIBUTE, [])
