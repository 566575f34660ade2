"""`ShineAdapter`: a batch of generated LoRAs, speaking PEFT's file format.

Lives in `modeling/` (torch + transformers only at import time) because `internalize` returns it
and the modeling code is shipped as Hub remote code; PEFT and huggingface_hub are imported only by
the methods that export, load or push.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError, IncompatibleAdapterError
from .io_utils import atomic_directory
from .lora import TARGET_MODULE_CANDIDATES, LoraWeights, TargetModule
from .model_card import render_card

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


class ShineAdapter:
    """Generated LoRA weights for one or more contexts (one adapter per batch row).

    Every module's weights are `LoraWeights(A (b, in, r), B (b, r, out), C (b, out) | None)`;
    y = x W + (x A) B (+ C) with no extra alpha/r scaling. `len(adapter)` is the batch size b and
    `adapter[i]` the i-th adapter.

    Args:
        lora: layer index -> target module name -> weights.
        targets: The target modules, in the hypernetwork's reading order.
        layers_path: Path of the decoder-layer list in the backbone (e.g. `model.layers`).
        base_model_name_or_path: The backbone's Hub id or path (written to the PEFT config).
        base_model_revision: The backbone's revision, if known.
    """

    def __init__(
        self,
        lora: dict[int, dict[str, LoraWeights]],
        targets: Sequence[TargetModule],
        layers_path: str,
        base_model_name_or_path: str | None = None,
        base_model_revision: str | None = None,
    ):
        self.lora = lora
        self.targets = list(targets)
        self.layers_path = layers_path
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision
        first = next(iter(lora[0].values()))
        self.rank = first.A.shape[-1]
        self._batch_size = first.A.shape[0]

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

    def _with(self, lora: dict[int, dict[str, LoraWeights]]) -> ShineAdapter:
        return ShineAdapter(lora, self.targets, self.layers_path, self.base_model_name_or_path,
                            self.base_model_revision)

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
        """Concatenate adapters along the batch axis (e.g. to generate with one adapter per row)."""
        if not adapters:
            raise ValueError("stack() needs at least one adapter")
        first = adapters[0]
        for other in adapters[1:]:
            first.check_same_layout(other)
        lora = {
            layer: {
                name: LoraWeights(
                    torch.cat([a.lora[layer][name].A for a in adapters]),
                    torch.cat([a.lora[layer][name].B for a in adapters]),
                    None if w.C is None else torch.cat([a.lora[layer][name].C for a in adapters]),
                )
                for name, w in modules.items()
            }
            for layer, modules in first.lora.items()
        }
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
            raise ValueError("compose() needs at least one adapter.")
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
            raise ValueError(f"rank must be a positive integer, got {rank!r}.")
        return self._with(truncate_rank(self.lora, rank))

    def check_same_layout(self, other: ShineAdapter, ignore_rank: bool = False) -> None:
        """Raise IncompatibleAdapterError unless `other` adapts the same modules of the same backbone
        (and, unless `ignore_rank`, with the same rank)."""
        rank = (lambda a: None) if ignore_rank else (lambda a: a.rank)
        if (other.layers_path, other.targets, other.num_layers, rank(other)) != (
            self.layers_path, self.targets, self.num_layers, rank(self)
        ):
            raise IncompatibleAdapterError(
                "Adapters of different layouts cannot be combined: "
                f"{self.num_layers} layers x {[t.name for t in self.targets]} rank {self.rank} vs "
                f"{other.num_layers} layers x {[t.name for t in other.targets]} rank {other.rank}."
            )

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

    def check_compatible(self, layers_path: str, targets: Sequence[TargetModule], num_layers: int) -> None:
        """Raise IncompatibleAdapterError unless this adapter fits a backbone of that layout."""
        problems = []
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
            elif t.has_bias and not other.has_bias:
                problems.append(f"{t.name} carries a bias delta but has no bias in the backbone")
        if problems:
            raise IncompatibleAdapterError(
                "This adapter does not fit the backbone: " + "; ".join(problems) + "."
            )

    # ------------------------------------------------------------------ dense weights and merging
    def delta_weight(self, layer: int, name: str) -> torch.Tensor:
        """Dense ΔW of one module in the backbone weight's own layout (out, in), or (in, out) for
        GPT-2 Conv1D. Needs a single adapter."""
        self._require_single("delta_weight")
        w = self.lora[layer][name]
        delta = w.A[0].float() @ w.B[0].float()  # (in, out)
        target = next(t for t in self.targets if t.name == name)
        return delta if target.fan_in_fan_out else delta.T

    def merge_into(self, backbone: nn.Module) -> None:
        """Add this adapter into the backbone's weights (and biases) in place."""
        self._merge(backbone, sign=1.0)

    def unmerge_from(self, backbone: nn.Module) -> None:
        """Subtract this adapter from weights it was merged into."""
        self._merge(backbone, sign=-1.0)

    def _merge(self, backbone: nn.Module, sign: float) -> None:
        self._require_single("merge_into")
        layers = backbone.get_submodule(self.layers_path)
        with torch.no_grad():
            for layer_index, modules in self.lora.items():
                for t in self.targets:
                    module = layers[layer_index].get_submodule(t.name)
                    delta = self.delta_weight(layer_index, t.name)
                    module.weight.add_((sign * delta).to(module.weight.dtype))
                    C = modules[t.name].C
                    if C is not None:
                        module.bias.add_((sign * C[0].float()).to(module.bias.dtype))

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
        """The `peft.LoraConfig` equivalent to this adapter (scaling alpha/r = 1)."""
        try:
            from peft import LoraConfig
        except ImportError as error:  # pragma: no cover - peft is a dependency of shine-hf
            raise ImportError("Exporting a SHINE adapter to PEFT needs `pip install peft`.") from error
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.rank,
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

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> None:
        """Write a standard PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`).

        `peft.PeftModel.from_pretrained(backbone, save_directory)` loads it. The directory is
        written to a temporary path first, so a failed save leaves nothing half-written.
        """
        state = self.peft_state_dict()
        config = self.peft_config
        with atomic_directory(save_directory) as staging:
            config.save_pretrained(str(staging))
            save_file(state, str(staging / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
            (staging / "README.md").write_text(render_card("adapter", self), encoding="utf-8")

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        device: str | torch.device | None = None,
        **hub_kwargs: Any,
    ) -> ShineAdapter:
        """Read a PEFT LoRA adapter (local directory or Hub repo id) as a single ShineAdapter."""
        directory = Path(path_or_repo_id)
        if directory.is_dir():
            config_path, weights_path = directory / ADAPTER_CONFIG_NAME, directory / ADAPTER_WEIGHTS_NAME
        else:
            from huggingface_hub import hf_hub_download

            repo_id = str(path_or_repo_id)
            config_path = Path(hf_hub_download(repo_id, ADAPTER_CONFIG_NAME, revision=revision, **hub_kwargs))
            weights_path = Path(hf_hub_download(repo_id, ADAPTER_WEIGHTS_NAME, revision=revision, **hub_kwargs))
        for required in (config_path, weights_path):
            if not required.is_file():
                raise CheckpointError(f"{required} is missing: not a saved PEFT adapter directory.")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error
        try:
            state = load_file(str(weights_path), device=str(device) if device is not None else "cpu")
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{weights_path} is not a readable safetensors file: {error}") from error
        return cls._from_peft(config, state)

    @classmethod
    def _from_peft(cls, config: dict[str, Any], state: dict[str, torch.Tensor]) -> ShineAdapter:
        if config.get("peft_type", "LORA") != "LORA":
            raise CheckpointError(f"Not a LoRA adapter: peft_type={config.get('peft_type')!r}.")
        rank, alpha = config["r"], config.get("lora_alpha", config["r"])
        # The first numeric path component is the decoder-layer index; what follows it is the
        # module's path relative to the layer (e.g. "self_attn.q_proj").
        pattern = re.compile(
            rf"^{re.escape(PEFT_PREFIX)}(?P<path>.+?)\.(?P<layer>\d+)\.(?P<name>.+)"
            rf"\.lora_(?P<part>A|B)\.(?P<kind>weight|bias)$"
        )
        found: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        layers_paths = set()
        for key, tensor in state.items():
            match = pattern.match(key)
            if match is None:
                raise CheckpointError(f"Unexpected tensor {key!r} in a LoRA adapter.")
            layers_paths.add(match["path"])
            part = "C" if match["kind"] == "bias" else match["part"]
            found.setdefault((int(match["layer"]), match["name"]), {})[part] = tensor
        if len(layers_paths) != 1:
            raise CheckpointError(f"Adapter tensors do not share one decoder-layer path: {layers_paths}.")
        num_layers = max(layer for layer, _ in found) + 1
        scaling = alpha / rank
        # PEFT's lora_bias applies to every targeted module; a module whose bias is zero in every
        # layer had none (exported as exact zeros), one with any non-zero layer keeps all of them.
        biased = {name for (_, name), parts in found.items() if "C" in parts and torch.any(parts["C"])}
        lora: dict[int, dict[str, LoraWeights]] = {}
        shapes: dict[str, tuple[int, int, bool]] = {}
        for (layer, name), parts in found.items():
            if "A" not in parts or "B" not in parts:
                raise CheckpointError(f"Layer {layer} {name}: lora_A or lora_B is missing.")
            A = parts["A"].T.contiguous()[None]  # (1, in, r)
            B = parts["B"].T.contiguous()[None]  # (1, r, out)
            if scaling != 1.0:
                B = B * scaling  # alpha/r folded into B
            C = parts["C"][None] if name in biased and "C" in parts else None
            lora.setdefault(layer, {})[name] = LoraWeights(A, B, C)
            shapes[name] = (A.shape[1], B.shape[2], C is not None)
        missing = [(layer, n) for layer in range(num_layers) for n in shapes if n not in lora.get(layer, {})]
        if missing:
            raise CheckpointError(f"Adapter has no weights for {missing[:5]}.")
        # the hypernetwork's reading order; unknown names keep their order after the known ones
        order = {name: index for index, name in enumerate(TARGET_MODULE_CANDIDATES)}
        fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
        targets = [
            TargetModule(name, shapes[name][0], shapes[name][1], shapes[name][2], fan_in_fan_out)
            for name in sorted(shapes, key=lambda n: order.get(n, len(order)))
        ]
        return cls(dict(sorted(lora.items())), targets, layers_paths.pop(),
                   config.get("base_model_name_or_path"), config.get("revision"))

    # ------------------------------------------------------------------ Hub
    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        commit_message: str = "Upload SHINE adapter",
        token: str | None = None,
        revision: str | None = None,
    ) -> str:
        """Create `repo_id` if needed and upload the PEFT adapter (with model card) in one commit.

        Returns the commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        self.card_info = {**(getattr(self, "card_info", None) or {}), "repo_id": repo.repo_id}
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            commit = api.upload_folder(repo_id=repo.repo_id, folder_path=tmp, commit_message=commit_message,
                                       revision=revision)
        return commit.commit_url

    def __repr__(self) -> str:
        return (
            f"ShineAdapter(batch={len(self)}, layers={self.num_layers}, rank={self.rank}, "
            f"targets={[t.name for t in self.targets]}, bias_deltas={self.has_bias_deltas}, "
            f"base_model={self.base_model_name_or_path!r})"
        )

