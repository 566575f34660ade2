"""The options several `shine` commands share, declared once so that every command spells them alike.

| Option | Meaning, in every command that has it |
|---|---|
| `--model MODEL` | a SHINE checkpoint (local directory or Hub repo id) to use |
| `--backbone NAME` | a backbone: Hub id, or local path where a Hub id is not required |
| `--revision REV` | Hub revision of the repo the command reads (`--model`, a source) or writes (push) |
| `--device DEVICE` | where the model is loaded |
| `--dtype DTYPE` | the backbone's dtype (auto, bfloat16, float16, float32) |
| `--batch-size N` | items per forward pass |
| `--max-new-tokens N` | the longest answer, in tokens |
| `--out`, `-o PATH` | where the command writes what it makes (a directory, or eval's results file) |
| `--seed N` | the seed of anything random |
| `--compose METHOD` | how several adapters become one (concat or mean; eval also: route) |
| `--chunk-tokens N`, `--overlap-tokens N` | how documents too long to read at once are cut |
| `--route` | keep a document as one adapter per chunk; each question is answered from the chunks it matches |
| `--top-k K` | with routing: the chunks each question is answered from (composed with `--compose`) |

Each function returns the `typer.Option` for a command parameter; `help` adapts the text to the
command, never the name. Importing this module is cheap (typer only).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import typer

from ._common import check_dtype


class ComposeMethod(StrEnum):
    """How several adapters become one (`ShineAdapter.compose`)."""

    concat = "concat"
    mean = "mean"


def model_option(help: str = "SHINE checkpoint: local directory or Hub repo id.") -> Any:
    return typer.Option("--model", metavar="MODEL", help=help)


def backbone_option(help: str = "Load this backbone (Hub id or local path) instead of the one the checkpoint "
                                "names.") -> Any:
    return typer.Option("--backbone", metavar="NAME", help=help)


def revision_option(help: str = "Hub revision (branch, tag or commit) of --model.") -> Any:
    return typer.Option("--revision", metavar="REV", help=help)


def device_option(help: str = "Device to load the model on, e.g. cuda or cuda:1 (default: CPU).") -> Any:
    return typer.Option("--device", metavar="DEVICE", help=help)


def dtype_option(help: str = "Backbone dtype: auto (the dtype its weights are stored in, the default), "
                             "bfloat16, float16 or float32.") -> Any:
    return typer.Option("--dtype", metavar="DTYPE", callback=check_dtype, help=help)


def batch_size_option(help: str) -> Any:
    return typer.Option("--batch-size", metavar="N", min=1, help=help)


def max_new_tokens_option(help: str = "Longest answer, in tokens.") -> Any:
    return typer.Option("--max-new-tokens", metavar="N", min=1, help=help)


def out_option(help: str, *aliases: str) -> Any:
    """`--out` / `-o` (plus older names kept working as `aliases`)."""
    return typer.Option("--out", "-o", *aliases, metavar="PATH", help=help)


def compose_option(help: str) -> Any:
    return typer.Option("--compose", help=help)


def chunk_tokens_option(help: str = "Read documents longer than N tokens in chunks of at most N tokens, cut at "
                                   "sentence ends (default: only those the backbone cannot read whole, in the "
                                   "longest chunks it can).") -> Any:
    return typer.Option("--chunk-tokens", metavar="N", min=1, help=help)


def overlap_tokens_option() -> Any:
    return typer.Option("--overlap-tokens", metavar="N", min=0, help="Tokens shared by consecutive chunks.")


def route_option(help: str) -> Any:
    return typer.Option("--route", help=help)


def top_k_option(help: str = "With routing: answer each question from the K chunks that match it best, composed "
                             "with --compose (default 1).") -> Any:
    return typer.Option("--top-k", metavar="K", min=1, help=help)
