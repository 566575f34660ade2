"""Saving and loading the hypernetwork part of a SHINE checkpoint (safetensors only).

A checkpoint directory holds `config.json` (ShineConfig, with `auto_map` for remote code),
`model.safetensors` (or shards + `model.safetensors.index.json`) with the `hypernetwork.*` tensors
only, the model code (`*.py` of this package) and a `README.md` model card. The backbone is never
stored: it is referenced by `backbone_name_or_path` / `backbone_revision`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import BackboneMismatchError, CheckpointError

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CODE_FILES = (
    "configuration_shine.py",
    "modeling_shine.py",
    "hypernetwork.py",
    "lora.py",
    "adapter.py",
    "peft_io.py",
    "errors.py",
    "prompting.py",
    "io_utils.py",
    "checkpoint.py",
)
AUTO_MAP = {
    "AutoConfig": "configuration_shine.ShineConfig",
    "AutoModelForCausalLM": "modeling_shine.ShineForCausalLM",
}


def write_weights(state: dict[str, torch.Tensor], directory: Path, max_shard_size: int | str) -> None:
    """Write `state` as safetensors, sharded (with an index) when larger than `max_shard_size`."""
    from huggingface_hub import split_torch_state_dict_into_shards

    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, str(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (directory / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True), encoding="utf-8")


def copy_model_code(directory: Path) -> None:
    """Copy the model code next to the weights so `trust_remote_code=True` loading works."""
    source = Path(__file__).parent
    for name in CODE_FILES:
        shutil.copyfile(source / name, directory / name)


def resolve_weight_files(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                         **hub_kwargs: Any) -> list[Path]:
    """Local paths of the checkpoint's safetensors file(s), downloading from the Hub if needed."""
    local = Path(path_or_repo_id)
    if local.is_dir():
        if (local / WEIGHTS_NAME).is_file():
            return [local / WEIGHTS_NAME]
        if (local / WEIGHTS_INDEX_NAME).is_file():
            return [local / f for f in _index_files(local / WEIGHTS_INDEX_NAME)]
        raise CheckpointError(
            f"{local} has neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}: not a SHINE checkpoint directory."
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo_id = str(path_or_repo_id)
    try:
        return [Path(hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, **hub_kwargs))]
    except EntryNotFoundError:
        pass
    try:
        index = Path(hf_hub_download(repo_id, WEIGHTS_INDEX_NAME, revision=revision, **hub_kwargs))
    except EntryNotFoundError as error:
        raise CheckpointError(
            f"{repo_id} has neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}: not a SHINE checkpoint."
        ) from error
    return [Path(hf_hub_download(repo_id, f, revision=revision, **hub_kwargs)) for f in _index_files(index)]


def _index_files(index_path: Path) -> list[str]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError) as error:
        raise CheckpointError(f"{index_path} is not a valid safetensors index: {error}") from error
    return sorted(set(weight_map.values()))


def load_weights_into(module: torch.nn.Module, files: list[Path], prefix: str) -> None:
    """Copy the `prefix`-ed tensors of `files` into `module`, checking names and shapes exactly."""
    expected = module.state_dict()
    seen: set[str] = set()
    with torch.no_grad():
        for path in files:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        if not key.startswith(prefix):
                            raise CheckpointError(
                                f"{path.name} holds {key!r}, which is not a hypernetwork tensor: SHINE "
                                f"checkpoints store only `{prefix}*` (the backbone is loaded separately)."
                            )
                        name = key[len(prefix):]
                        if name not in expected:
                            raise CheckpointError(f"Unexpected tensor {key!r} in {path.name}.")
                        tensor = handle.get_tensor(key)
                        target = expected[name]
                        if tuple(tensor.shape) != tuple(target.shape):
                            raise BackboneMismatchError(
                                f"Tensor {key!r} in {path.name} has shape {tuple(tensor.shape)} but this "
                                f"model (config + backbone) needs {tuple(target.shape)}."
                            )
                        target.copy_(tensor.to(target.dtype))
                        seen.add(name)
            except CheckpointError:
                raise
            except (SafetensorError, OSError) as error:
                raise CheckpointError(f"{path} is not a readable safetensors file ({error}); it may be "
                                      f"truncated or corrupt.") from error
    missing = sorted(set(expected) - seen)
    if missing:
        raise CheckpointError(f"The checkpoint lacks {len(missing)} hypernetwork tensor(s), e.g. {missing[:3]}.")


def push_in_one_commit(
    obj: Any,
    repo_id: str,
    *,
    private: bool | None,
    token: str | None,
    revision: str | None,
    commit_message: str,
    **save_kwargs: Any,
) -> str:
    """Create `repo_id` if needed, then `obj.save_pretrained` into a temporary directory and upload
    it in one commit. The model card names the repo (`obj.card_info["repo_id"]`). Returns the
    commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    obj.card_info = {**(getattr(obj, "card_info", None) or {}), "repo_id": repo.repo_id}
    with tempfile.TemporaryDirectory() as tmp:
        obj.save_pretrained(tmp, **save_kwargs)
        commit = api.upload_folder(repo_id=repo.repo_id, folder_path=tmp, commit_message=commit_message,
                                   revision=revision)
    return commit.commit_url


# Model-card renderers, registered by `shine_hf.hub` when the package is installed. Inside bare
# remote code (no shine_hf) the fallback below writes a short card instead.
CARD_RENDERERS: dict[str, Any] = {"model": None, "adapter": None}


def render_card(kind: str, obj: Any) -> str:
    renderer = CARD_RENDERERS.get(kind)
    if renderer is not None:
        return renderer(obj)
    return _fallback_card(kind, obj)


def _fallback_card(kind: str, obj: Any) -> str:
    if kind == "adapter":
        base = obj.base_model_name_or_path or "unknown"
        header = f"---\nlibrary_name: peft\nbase_model: {base}\ntags:\n- shine\n- lora\n- hypernetwork\n---\n"
        return header + f"\n# SHINE adapter\n\nA LoRA generated by a SHINE hypernetwork for `{base}`.\n"
    base = obj.config.backbone_name_or_path or "unknown"
    header = f"---\nlibrary_name: transformers\nbase_model: {base}\ntags:\n- shine\n- lora\n- hypernetwork\n---\n"
    return header + f"\n# SHINE hypernetwork for `{base}`\n"
