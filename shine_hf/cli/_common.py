"""What every `shine` command shares: the consoles, one-line error reporting, success lines and
option checks.

Importing this module must stay cheap (no torch, transformers or shine_hf.modeling): `shine --help`
imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

console = Console(highlight=False, soft_wrap=True)
error_console = Console(stderr=True, highlight=False, soft_wrap=True)


DTYPES = ("auto", "bfloat16", "float16", "float32")
"""The backbone dtypes `--dtype` accepts ("auto": the dtype the backbone's weights are stored in)."""


def print_error(message: str) -> None:
    """Print `Error: message` as one line on stderr (whitespace collapsed; `[...]` is not markup)."""
    error_console.print(Text("Error: ", style="bold red") + Text(" ".join(message.split())))


def print_success(message: str, target: Console | None = None) -> None:
    """Print `✓ message` (on stdout unless `target` says otherwise; `[...]` is not markup)."""
    (target or console).print(Text("✓ ", style="bold green") + Text(message))


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


def check_dtype(value: str | None) -> str | None:
    """An option callback that refuses a dtype name outside `DTYPES`, before any model is loaded."""
    if value is not None and value not in DTYPES:
        raise typer.BadParameter(f"Unknown dtype {value!r}: use {', '.join(DTYPES[:-1])} or {DTYPES[-1]}.")
    return value


def unescape(template: str) -> str:
    r"""Let a shell argument spell newlines and tabs as \n and \t."""
    return template.replace("\\n", "\n").replace("\\t", "\t")


def config_value(field: str) -> Callable[[Any], Any]:
    """An option callback that refuses what `ShineConfig` refuses for `field` (the config is the one
    home of the rule), as a usage error that names the option."""

    def check(value: Any) -> Any:
        if value is not None:
            from ..modeling import ConfigError, ShineConfig

            try:
                ShineConfig(**{field: value})
            except ConfigError as error:
                raise typer.BadParameter(str(error)) from None
        return value

    return check
