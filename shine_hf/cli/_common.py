"""What every `shine` command shares: the consoles, one-line error reporting and option checks.

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
