"""`shine push`: upload a saved SHINE checkpoint, adapter or router to the Hub, in one commit."""

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
        help="A saved SHINE checkpoint (config.json: shine convert, shine train, save_pretrained), a saved "
             "adapter (adapter_config.json: shine internalize, ShineAdapter.save_pretrained) or a saved router "
             "(shine_router.json: shine internalize --route, RoutedAdapter.save_pretrained).")],
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
        "--commit-message", metavar="TEXT", help="Message of the commit (default: 'Upload SHINE hypernetwork', "
                                                 "'Upload SHINE adapter' or 'Upload SHINE router').")] = None,
    create_pr: Annotated[bool, typer.Option(
        "--create-pr", help="Open a pull request instead of committing to the branch.")] = False,
    token: Annotated[str | None, typer.Option(
        "--token", metavar="TOKEN", help="Hub token (default: HF_TOKEN or the one saved by 'hf auth login').")]
    = None,
) -> None:
    """Upload a saved SHINE checkpoint, adapter or router to the Hub, in one commit.

    A checkpoint is pushed with its config, model code (for trust_remote_code loading), card and
    tokenizer; the backbone's weights are neither read nor uploaded. An adapter is pushed as the
    standard PEFT adapter it is, with its card; a router as its directory (a PEFT adapter per chunk,
    shine_router.json, a card), which shine chat -a REPO_ID then routes.

    Examples:
      shine push runs/ift org/shine-qwen3-8b --backbone Qwen/Qwen3-8B --private
      shine push adapters/contract org/contract-lora --revision v1
      shine push routers/book org/book-router --backbone Qwen/Qwen3-8B
    """
    options: dict[str, Any] = {"private": private, "revision": revision, "create_pr": create_pr, "token": token}
    if commit_message is not None:
        options["commit_message"] = commit_message
    with fail_cleanly():
        kind = _kind(source)
        if kind == "checkpoint":
            url = _push_checkpoint(source, repo_id, backbone, options)
        else:
            url = _push_adapter(source, repo_id, backbone, options, kind)
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
    """`"adapter"`, `"router"` or `"checkpoint"`, from the config file the directory holds."""
    from ..modeling.errors import CheckpointError
    from ..modeling.peft_io import ADAPTER_CONFIG_NAME
    from ..modeling.pretrained import CONFIG_NAME
    from ..routing import ROUTER_CONFIG_NAME

    if not source.is_dir():
        raise CheckpointError(f"{source} is not a directory: SOURCE is a saved SHINE checkpoint, adapter or router.")
    markers = {ADAPTER_CONFIG_NAME: "adapter", CONFIG_NAME: "checkpoint", ROUTER_CONFIG_NAME: "router"}
    what = {"adapter": "an adapter", "router": "a router", "checkpoint": "a SHINE checkpoint"}
    found = [name for name in markers if (source / name).is_file()]
    if len(found) > 1:
        raise CheckpointError(f"{source} holds both {found[0]} and {found[1]}: it is unclear whether to push "
                              f"{what[markers[found[0]]]} or {what[markers[found[1]]]}.")
    if not found:
        raise CheckpointError(f"{source} holds neither " + " nor ".join(f"{name} ({what[kind]})" for name, kind in
                                                                       markers.items()) + ".")
    return markers[found[0]]


def _push_adapter(source: Path, repo_id: str, backbone: str | None, options: dict[str, Any], kind: str) -> str:
    """Push a saved adapter or router (`kind`), after checking the base model it will name."""
    from ..modeling import ShineAdapter
    from ..routing import RoutedAdapter

    with console.status(f"Reading the {kind} {source}"):
        adapter = (RoutedAdapter if kind == "router" else ShineAdapter).from_pretrained(source)
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
