"""What every `shine` command shares: the consoles, one-line error reporting and option checks.

Importing this module must stay cheap (no torch, transformers or shine_hf.modeling): `shine --help`
imports it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.text import Text

console = Console(highlight=False, soft_wrap=True)
error_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    """Print `Error: message` as one line on stderr (whitespace collapsed; `[...]` is not markup)."""
    error_console.print(Text("Error: ", style="bold red") + Text(" ".join(message.split())))


@contextlib.contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn a `ShineError` into a one-line `Error: ...` on stderr and exit code 1.

    Anything else is a bug in shine-hf and keeps its traceback.
    """
    from ..modeling.errors import ShineError  # imported here: `shine_hf.modeling` imports torch

    try:
        yield
    except ShineError as error:
        print_error(str(error))
        raise typer.Exit(code=1) from None


def positive_finite(value: float | None) -> float | None:
    """Option callback: refuse zero, negative, infinite and NaN numbers."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a positive finite number, got {value}.")
    return value
