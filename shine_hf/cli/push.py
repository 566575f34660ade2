"""`shine push`: upload a saved SHINE checkpoint or a saved adapter to the Hub, in one commit."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import console, fail_cleanly, print_error, print_success
from ._options import backbone_option, revision_option


def push_command(
    source: Annotated[Path, typer.Argument(
        metavar="SOURCE", show_default=False,
        help="A saved SHINE checkpoint (config.json: shine convert, shine train, save_pretrained) or a saved "
             "adapter (adapter_config.json: shine internalize, ShineAdapter.save_pretrained).")],
    repo_id: Annotated[str, typer.Argument(
        metavar="REPO_ID", show_default=False, help="The Hub repo to push to (created if needed), e.g. org/name.")],
    backbone: Annotated[str | None, backbone_option(
        "The backbone's Hub id, written to the pushed config and card; required when SOURCE names its "
        "backbone by a local path.")] = None,
    private: Annotated[bool | None, typer.Option(
        "--private/--public", show_default=False,
        help="Visibility of a repo this push creates (default: the Hub's default).")] = None,
    revision: Annotated[str | None, revision_option(
        "Branch to push to (created from the default branch if needed).")] = None,
    commit_message: Annotated[str | None, typer.Option(
        "--commit-message", metavar="TEXT", help="Message of the commit (default: 'Upload SHINE hypernetwork' "
                                                 "or 'Upload SHINE adapter').")] = None,
    create_pr: Annotated[bool, typer.Option(
        "--create-pr", help="Open a pull request instead of committing to the branch.")] = False,
    token: Annotated[str | None, typer.Option(
        "--token", metavar="TOKEN", help="Hub token (default: HF_TOKEN or the one saved by 'hf auth login').")]
    = None,
) -> None:
    """Upload a saved SHINE checkpoint or adapter to the Hub, in one commit.

    A checkpoint is pushed with its config, model code (for trust_remote_code loading), card and
    tokenizer; the backbone's weights are neither read nor uploaded. An adapter is pushed as the
    standard PEFT adapter it is, with its card.

    Examples:
      shine push runs/ift org/shine-qwen3-8b --backbone Qwen/Qwen3-8B --private
      shine push adapters/contract org/contract-lora --revision v1
    """
    options: dict[str, Any] = {"private": private, "revision": revision, "create_pr": create_pr, "token": token}
    if commit_message is not None:
        options["commit_message"] = commit_message
    with fail_cleanly():
        kind = _kind(source)
        push = _push_adapter if kind == "adapter" else _push_checkpoint
        url = push(source, repo_id, backbone, options)
    print_success(f"Pushed the {kind} {source} → {url}")


@contextlib.contextmanager
def _hub_errors(source: Path, repo_id: str) -> Iterator[None]:
    """What the Hub or the network answers (refused, not found, unauthorized, unreachable, an invalid
    repo id) as one `Error: Could not push ...` line and exit code 1."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    from ..modeling.errors import ShineError

    errors: list[type[BaseException]] = [HfHubHTTPError, HFValidationError, OSError]
    for client in ("httpx2", "httpx"):  # huggingface_hub's HTTP client: its connection errors and timeouts
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(client).TransportError)
    try:
        yield
    except ShineError:
        raise
    except tuple(errors) as error:
        print_error(f"Could not push {source} to {repo_id}: {str(error) or type(error).__name__}")
        raise typer.Exit(code=1) from None


def _kind(source: Path) -> str:
    """`"adapter"` or `"checkpoint"`, from the config file the directory holds."""
    from ..modeling.errors import CheckpointError
    from ..modeling.peft_io import ADAPTER_CONFIG_NAME
    from ..modeling.pretrained import CONFIG_NAME

    if not source.is_dir():
        raise CheckpointError(f"{source} is not a directory: SOURCE is a saved SHINE checkpoint or adapter.")
    found = [(source / name).is_file() for name in (ADAPTER_CONFIG_NAME, CONFIG_NAME)]
    if all(found):
        raise CheckpointError(f"{source} holds both {ADAPTER_CONFIG_NAME} and {CONFIG_NAME}: it is unclear whether "
                              f"to push an adapter or a checkpoint.")
    if not any(found):
        raise CheckpointError(f"{source} holds neither {ADAPTER_CONFIG_NAME} (an adapter) nor {CONFIG_NAME} (a SHINE "
                              f"checkpoint).")
    return "adapter" if found[0] else "checkpoint"


def _push_adapter(source: Path, repo_id: str, backbone: str | None, options: dict[str, Any]) -> str:
    from ..modeling import ShineAdapter

    with console.status(f"Reading the adapter {source}"):
        adapter = ShineAdapter.from_pretrained(source)
    _check_hub_reference(adapter.base_model_name_or_path if backbone is None else backbone)
    with console.status(f"Pushing to {repo_id}"), _hub_errors(source, repo_id):
        return str(adapter.push_to_hub(repo_id, base_model_name_or_path=backbone, **options))


def _push_checkpoint(source: Path, repo_id: str, backbone: str | None, options: dict[str, Any]) -> str:
    """Load the hypernetwork on a weightless (meta-device) backbone built from the checkpoint's config, so
    that no backbone weights are read or downloaded, and push it."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..modeling import ShineConfig, ShineForCausalLM

    with console.status(f"Reading the checkpoint {source}"):
        config = ShineConfig.from_pretrained(source)
        _check_hub_reference(config.backbone_name_or_path if backbone is None else backbone)
        with torch.device("meta"):
            weightless = AutoModelForCausalLM.from_config(config.get_backbone_config())
        model = ShineForCausalLM.from_pretrained(source, backbone=weightless)
    with console.status(f"Pushing to {repo_id}"), _hub_errors(source, repo_id):
        return str(model.push_to_hub(repo_id, backbone_name_or_path=backbone, **options))


def _check_hub_reference(backbone: str | None) -> None:
    """Refuse a backbone named by a local path (it means nothing on the Hub) before anything is pushed."""
    from ..modeling.errors import ConfigError
    from ..modeling.pretrained import is_local_reference

    if backbone is not None and is_local_reference(backbone):
        raise ConfigError(f"The backbone is the local path {backbone!r}, which means nothing on the Hub: give its "
                          f"Hub id with --backbone (e.g. --backbone Qwen/Qwen3-8B).")
