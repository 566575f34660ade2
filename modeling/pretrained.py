"""Loading, saving and pushing SHINE checkpoints: a thin layer over transformers' `PreTrainedModel`.

A checkpoint holds the hypernetwork only (safetensors), `config.json`, the model code (remote code,
copied by transformers' `custom_object_save` with its relative imports), the tokenizer and a model
card. What transformers does not do, and this module adds:

- the backbone is referenced by name and revision (loaded with `AutoModelForCausalLM`, or passed in
  already loaded) instead of being stored;
- a local backbone path is written relative to the checkpoint when the backbone sits inside it or
  beside it, and absolute otherwise; pushing a checkpoint whose backbone is a local path is
  refused unless the backbone's Hub id is given;
- saves go through `io_utils.atomic_directory` (a fresh directory swapped in, never a mixture of two
  saves) and hypernetwork weights are checked strictly on load (names, shapes, floating dtype,
  finite values).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .configuration_shine import ShineConfig
from .errors import BackboneMismatchError, CheckpointError, ConfigError, ShineError
from .hypernetwork import LoraParameters, M2PTransformer, ShineHypernetwork
from .io_utils import atomic_directory
from .model_card import render_card

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
HYPERNETWORK_PREFIX = "hypernetwork."

# Hub download options, passed to the checkpoint's and the backbone's loading alike.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "token")
# Options of `AutoModelForCausalLM.from_pretrained` that concern only the backbone.
BACKBONE_KWARGS = ("attn_implementation", "quantization_config", "max_memory", "offload_folder",
                   "offload_buffers", "low_cpu_mem_usage", "use_safetensors", "trust_remote_code",
                   "torch_dtype", "key_mapping")
# What transformers' Auto classes pass to `from_pretrained` on their own.
_AUTO_KWARGS = ("_from_auto", "_from_pipeline", "adapter_kwargs", "code_revision")

# Top-level files a save of a SHINE checkpoint writes (and a re-save may therefore remove).
_SAVED_FILE = re.compile(
    r"^(config\.json|generation_config\.json|README\.md|model\.safetensors|model\.safetensors\.index\.json"
    r"|model-\d{5}-of-\d{5}\.safetensors|[A-Za-z_][A-Za-z0-9_]*\.py|tokenizer\.json|tokenizer_config\.json"
    r"|special_tokens_map\.json|added_tokens\.json|chat_template\.(jinja|json)|vocab\.(json|txt)|merges\.txt"
    r"|tokenizer\.model|spiece\.model|sentencepiece\.bpe\.model)$"
)


def is_saved_file(name: str) -> bool:
    """Whether `name` is a top-level file that `save_pretrained` writes."""
    return _SAVED_FILE.match(name) is not None


class ShinePreTrainedModel(PreTrainedModel):
    """Capabilities, weight initialisation and checkpoint I/O shared by SHINE models."""

    config_class = ShineConfig
    base_model_prefix = "hypernetwork"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    # No `_no_split_modules`: the meta-LoRA's parameters are read by hooks inside the backbone's
    # forward, so FSDP must not wrap the hypernetwork on its own (examples/accelerate/README.md);
    # the backbone's own `_no_split_modules` (its decoder layers) are what device maps and FSDP wrap.

    def _init_weights(self, module: nn.Module) -> None:
        # Reference init: memory tokens and position embeddings zero, meta-LoRA A ~ N(0,1)*sqrt(s)
        # and B = 0; the M2P's linear layers keep PyTorch's defaults, as in the reference.
        if isinstance(module, LoraParameters):
            module.reset_parameters(self.config.lora_scale)
        elif isinstance(module, M2PTransformer):
            nn.init.zeros_(module.layer_pe)
            nn.init.zeros_(module.token_pe)
        elif isinstance(module, ShineHypernetwork):
            nn.init.zeros_(module.memory_tokens)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        backbone: PreTrainedModel | str | os.PathLike | None = None,
        revision: str | None = None,
        backbone_revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: Any = None,
        tokenizer: Any = None,
        hypernetwork_dtype: torch.dtype | None = None,
        config: ShineConfig | None = None,
        subfolder: str = "",
        **kwargs: Any,
    ) -> ShinePreTrainedModel:
        """Load a SHINE hypernetwork and the backbone it names (or the one passed in).

        Args:
            pretrained_model_name_or_path: Hub repo id or local directory of a SHINE checkpoint.
            backbone: An already-loaded backbone (checked against the config's shapes), or a
                name/path to load instead of the one in the config.
            revision: Revision of the SHINE checkpoint.
            backbone_revision: Backbone revision; defaults to the one recorded in the config.
            dtype: dtype of the backbone (e.g. `torch.bfloat16`); the hypernetwork stays float32
                unless `hypernetwork_dtype` says otherwise.
            device_map: Passed to the backbone's `from_pretrained`; the hypernetwork follows the
                backbone's input embeddings.
            tokenizer: A tokenizer; by default the checkpoint's own, else the backbone's.
            config: A `ShineConfig` to use instead of the checkpoint's.
            subfolder: The checkpoint's subfolder inside the repo or directory.
            **kwargs: Hub options (`cache_dir`, `token`, `local_files_only`, `force_download`,
                `proxies`), used for the checkpoint and the backbone, and backbone options
                (`attn_implementation`, `quantization_config`, `max_memory`, `offload_folder`,
                `low_cpu_mem_usage`, `use_safetensors`, `trust_remote_code`, ...). Anything else
                is a `TypeError`.

        Raises:
            BackboneMismatchError: the backbone's shapes differ from the checkpoint's.
            CheckpointError: no such checkpoint, or weights missing, truncated, corrupt, of a
                non-floating dtype, non-finite, or holding foreign tensors.
            ConfigError: the checkpoint's config lacks or mistypes a value the weights depend on.
        """
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no extra positional arguments, got {model_args}.")
        for name in _AUTO_KWARGS:
            kwargs.pop(name, None)
        unknown = sorted(set(kwargs) - set(HUB_KWARGS) - set(BACKBONE_KWARGS))
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_pretrained got unexpected keyword argument(s) {', '.join(unknown)}. "
                f"Hub options: {', '.join(HUB_KWARGS)}; passed on to the backbone: {', '.join(BACKBONE_KWARGS)}."
            )
        hub_kwargs = {k: v for k, v in kwargs.items() if k in HUB_KWARGS}
        backbone_kwargs = {k: v for k, v in kwargs.items() if k in BACKBONE_KWARGS}
        source = _checkpoint_source(pretrained_model_name_or_path, subfolder)
        if config is None and Path(source).is_dir() and not (Path(source) / CONFIG_NAME).is_file():
            raise CheckpointError(
                f"{source} has no {CONFIG_NAME}: it is not a SHINE checkpoint, or a save into it was interrupted "
                f"(save it again)."
            )
        if config is None:
            try:
                config = ShineConfig.from_pretrained(
                    pretrained_model_name_or_path, revision=revision, subfolder=subfolder, **hub_kwargs
                )
            except ConfigError as error:
                raise ConfigError(f"{source}: {error}") from None
        if backbone is None or isinstance(backbone, (str, os.PathLike)):
            name = backbone_location(str(backbone) if backbone is not None else config.backbone_name_or_path,
                                      source, from_config=backbone is None)
            backbone = AutoModelForCausalLM.from_pretrained(
                name,
                revision=backbone_revision or config.backbone_revision,
                dtype=dtype,
                device_map=device_map,
                **backbone_kwargs,
                **hub_kwargs,
            )
        elif backbone_kwargs or dtype is not None or device_map is not None:
            given = sorted([*backbone_kwargs, *(["dtype"] if dtype is not None else []),
                            *(["device_map"] if device_map is not None else [])])
            raise TypeError(f"{', '.join(given)} only apply when the backbone is loaded by name, not to a "
                            f"backbone passed in already loaded.")
        model = cls(config, backbone=backbone)
        local = getattr(backbone, "name_or_path", None)
        if local and Path(local).is_dir():  # in memory, a local backbone is always an absolute path
            model.config.backbone_name_or_path = str(Path(local).resolve())
        files = weight_files(pretrained_model_name_or_path, revision=revision, subfolder=subfolder, **hub_kwargs)
        state = read_hypernetwork_state(files, model.hypernetwork.state_dict())
        model.hypernetwork.load_state_dict(state, strict=True)
        device = backbone.get_input_embeddings().weight.device
        if device.type == "meta":  # a weightless backbone, to save or push the hypernetwork: it stays real
            device = None
        model.hypernetwork.to(device=device, dtype=hypernetwork_dtype or torch.float32)
        model.name_or_path = str(pretrained_model_name_or_path)
        model.tokenizer = (
            tokenizer
            or try_load_tokenizer(str(pretrained_model_name_or_path), revision, backbone.config,
                                  subfolder=subfolder, **hub_kwargs)
            or try_load_tokenizer(local or config.backbone_name_or_path, backbone_revision or config.backbone_revision,
                                  backbone.config, **hub_kwargs)
        )
        return model.eval()

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        max_shard_size: int | str = "5GB",
        save_tokenizer: bool = True,
        safe_serialization: bool = True,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write the hypernetwork only: safetensors weights, config (with `auto_map` for
        `trust_remote_code=True` loading), the model code, a model card and the tokenizer.

        The checkpoint is assembled in a fresh sibling directory and swapped in (see
        `io_utils.atomic_directory`): an interrupted save leaves the earlier checkpoint or nothing,
        and a re-save leaves exactly the new files (other files of the directory are kept).
        A local backbone path is written relative to `save_directory` when the backbone lies inside
        it or beside it, absolute otherwise. With `push_to_hub=True` the checkpoint is then pushed
        (`repo_id=`, default: the directory's name; other keywords go to `push_to_hub`).

        Args:
            state_dict: Tensors to save instead of the model's own; only `hypernetwork.*` are kept.
        """
        if not safe_serialization:
            raise ValueError("SHINE checkpoints are saved as safetensors only (safe_serialization=True).")
        push_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "commit_description", "private",
                                                   "token", "revision", "create_pr", "tags") if k in kwargs}
        if kwargs:
            raise TypeError(f"save_pretrained got unexpected keyword argument(s) {', '.join(sorted(kwargs))}.")
        if not is_main_process:
            return
        if state_dict is None:
            state_dict = self.hypernetwork_state_dict()
        else:
            state_dict = {k: v for k, v in state_dict.items() if k.startswith(HYPERNETWORK_PREFIX)}
        state_dict = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_directory = Path(save_directory)
        with atomic_directory(save_directory, owns=is_saved_file, marker=CONFIG_NAME) as staging:
            with _saved_backbone_reference(self.config, save_directory):
                PreTrainedModel.save_pretrained(self, staging, state_dict=state_dict, max_shard_size=max_shard_size,
                                                save_original_format=False)
                (staging / "README.md").write_text(render_card("model", self), encoding="utf-8")
            if save_tokenizer and self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(staging))
        if push_to_hub:
            self.push_to_hub(push_kwargs.pop("repo_id", save_directory.name), max_shard_size=max_shard_size,
                             **push_kwargs)

    def hypernetwork_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable part only (what a SHINE checkpoint stores), keys prefixed `hypernetwork.`."""
        return {f"{HYPERNETWORK_PREFIX}{k}": v for k, v in self.hypernetwork.state_dict().items()}

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = "Upload SHINE hypernetwork",
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "5GB",
        tags: list[str] | None = None,
        backbone_name_or_path: str | None = None,
    ) -> Any:
        """Create `repo_id` if needed and upload the checkpoint (hypernetwork, config, code, card,
        tokenizer) in one commit, through transformers' `PushToHubMixin` upload. Returns the commit
        info (a string: the commit URL).

        Args:
            backbone_name_or_path: The backbone's Hub id, required when the backbone was loaded from
                a local path (a path means nothing on the Hub): it is written to the pushed config
                and card, and becomes the model's backbone reference.
            tags: Extra tags for the model card.
        """
        from huggingface_hub import HfApi

        if backbone_name_or_path is not None:
            self.config.backbone_name_or_path = backbone_name_or_path
        reference = self.config.backbone_name_or_path
        if reference and is_local_reference(reference):
            raise ConfigError(
                f"The backbone is referenced by the local path {reference!r}, which means nothing on the Hub: "
                f"pass push_to_hub(..., backbone_name_or_path='org/name') with the backbone's Hub id."
            )
        repo = HfApi(token=token).create_repo(repo_id, private=private, exist_ok=True)
        self.card_info = {**(getattr(self, "card_info", None) or {}), "repo_id": repo.repo_id,
                          **({"tags": list(tags)} if tags else {})}
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, max_shard_size=max_shard_size or "5GB")
            return self._upload_modified_files(tmp, repo.repo_id, files_timestamps={}, commit_message=commit_message,
                                               token=token, create_pr=create_pr, revision=revision,
                                               commit_description=commit_description)


def is_local_reference(name: str) -> bool:
    """Whether a backbone reference is a local path (absolute, `./`, `../` or `~`) rather than a Hub id."""
    return name.startswith(("/", "./", "../", "~")) or os.path.isabs(name) or Path(name).is_dir()


@contextlib.contextmanager
def _saved_backbone_reference(config: ShineConfig, save_directory: Path):
    """While saving, write a local backbone path as the checkpoint at `save_directory` will need it."""
    original = config.backbone_name_or_path
    if original and is_local_reference(original) and Path(original).expanduser().is_dir():
        config.backbone_name_or_path = _relative_or_absolute(Path(original).expanduser().resolve(), save_directory)
    try:
        yield
    finally:
        config.backbone_name_or_path = original


def _relative_or_absolute(backbone: Path, save_directory: Path) -> str:
    """`./x` or `../x` when the backbone lies inside the checkpoint directory or beside it (so the two
    can be copied together), else the absolute path."""
    relative = Path(os.path.relpath(backbone, save_directory.resolve()))
    parts = relative.parts
    if ".." not in parts:
        return f"./{relative.as_posix()}"
    if parts[0] == ".." and ".." not in parts[1:]:
        return relative.as_posix()
    return str(backbone)


def _checkpoint_source(path: str | os.PathLike, subfolder: str) -> str:
    """Check that a local-looking checkpoint path exists; returns a name for messages."""
    text = str(path)
    local = Path(text).expanduser()
    if local.is_file():
        raise CheckpointError(f"{text} is a file: pass the checkpoint directory (the one with config.json).")
    if local.is_dir():
        return str(local / subfolder) if subfolder else str(local)
    if is_local_reference(text) or not _is_repo_id(text):
        raise CheckpointError(f"No such checkpoint directory: {text} (and it is not a Hub repo id).")
    return text


def _is_repo_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def backbone_location(name: str | None, source: str, from_config: bool = True) -> str:
    """Where to load the backbone `name` from: a Hub id, or a local path (one named by the config of the
    checkpoint `source` is relative to that checkpoint's directory)."""
    if not name:
        raise ConfigError(f"The checkpoint {source} names no backbone: pass backbone=...")
    if not is_local_reference(name):
        return name
    path = Path(name).expanduser()
    if from_config and not path.is_absolute():
        if not Path(source).is_dir():
            raise ConfigError(
                f"The checkpoint {source} names its backbone by the local path {name!r}, relative to a checkpoint "
                f"directory, but it was loaded from the Hub: pass backbone=... (a Hub id or a loaded model)."
            )
        path = Path(source) / path
    if not path.is_dir():
        where = "named by the checkpoint " if from_config else ""
        raise ConfigError(f"The backbone {name!r} {where}does not exist here ({path.resolve()}): pass backbone=...")
    return str(path.resolve())


def weight_files(path: str | os.PathLike, revision: str | None = None, subfolder: str = "",
                 **hub_kwargs: Any) -> list[str]:
    """Local paths of the checkpoint's safetensors file(s), downloading from the Hub if needed."""
    from transformers.utils.hub import cached_file, get_checkpoint_shard_files

    common = dict(revision=revision, subfolder=subfolder, **hub_kwargs)
    single = cached_file(str(path), WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **common)
    if single is not None:
        return [single]
    index = cached_file(str(path), WEIGHTS_INDEX_NAME, _raise_exceptions_for_missing_entries=False, **common)
    if index is None:
        raise CheckpointError(
            f"{path} has neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}: not a SHINE checkpoint."
        )
    try:
        files, _ = get_checkpoint_shard_files(str(path), index, **common)
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"{index} is not a valid safetensors index: {error}") from error
    return files


def read_hypernetwork_state(files: list[str], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read the `hypernetwork.*` tensors of `files`, checked against `expected` (name -> tensor).

    Every expected tensor must be present with its shape, a floating dtype and finite values;
    nothing else may be in the files. Returns tensors keyed like `expected` (no prefix), in the
    expected dtype.

    Raises:
        CheckpointError: unreadable file, foreign/missing tensor, non-floating dtype, NaN or inf.
        BackboneMismatchError: a tensor of another shape than this model needs.
    """
    state: dict[str, torch.Tensor] = {}
    for path in files:
        name_of_file = Path(path).name
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    if not key.startswith(HYPERNETWORK_PREFIX):
                        raise CheckpointError(
                            f"{name_of_file} holds {key!r}, which is not a hypernetwork tensor: SHINE checkpoints "
                            f"store only `{HYPERNETWORK_PREFIX}*` (the backbone is loaded separately)."
                        )
                    name = key[len(HYPERNETWORK_PREFIX):]
                    if name not in expected:
                        raise CheckpointError(f"Unexpected tensor {key!r} in {name_of_file}.")
                    state[name] = _checked_tensor(handle.get_tensor(key), expected[name], key, name_of_file)
        except ShineError:
            raise
        except (SafetensorError, OSError, RuntimeError) as error:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({error}); it may be truncated or corrupt."
            ) from error
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"The checkpoint lacks {len(missing)} hypernetwork tensor(s), e.g. {missing[:3]}.")
    return state


def _checked_tensor(tensor: torch.Tensor, target: torch.Tensor, key: str, file: str) -> torch.Tensor:
    if tuple(tensor.shape) != tuple(target.shape):
        raise BackboneMismatchError(
            f"Tensor {key!r} in {file} has shape {tuple(tensor.shape)} but this model (config + backbone) "
            f"needs {tuple(target.shape)}."
        )
    if not tensor.dtype.is_floating_point:
        raise CheckpointError(
            f"Tensor {key!r} in {file} has dtype {tensor.dtype}; hypernetwork weights are floating point."
        )
    if not torch.isfinite(tensor).all():
        raise CheckpointError(f"Tensor {key!r} in {file} holds NaN or infinite values.")
    return tensor.to(target.dtype)


def try_load_tokenizer(name: str | None, revision: str | None, backbone_config: Any = None, **kwargs: Any):
    """The tokenizer at `name`, or None when there is none (or it cannot be loaded).

    Passing the backbone's config stops AutoTokenizer from reading a SHINE `config.json` (whose
    `auto_map` would otherwise ask to trust remote code)."""
    if not name:
        return None
    if backbone_config is not None:
        kwargs["config"] = backbone_config
    try:
        return AutoTokenizer.from_pretrained(name, revision=revision, **kwargs)
    except (OSError, ValueError, TypeError):
        return None
