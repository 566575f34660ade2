"""What every `shine` command shares: the consoles and one-line error reporting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.text import Text

from ..modeling import ShineError

console = Console(highlight=False, soft_wrap=True)
error_console = Console(stderr=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn a `ShineError` into a one-line `Error: ...` on stderr and exit code 1."""
    try:
        yield
    except ShineError as error:
        message = " ".join(str(error).split())
        error_console.print(Text("Error: ", style="bold red") + Text(message))
        raise typer.Exit(code=1) from None


