"""The `shine` command line (also `python -m shine_hf.cli`).

One module per command (`shine_hf/cli/<command>.py`), registered on the `app` Typer application
below. Errors raised on purpose by shine-hf (`ShineError`) are printed as one line and exit with
code 1 (`_common.fail_cleanly`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import typer

from .convert import convert
from .eval import eval_command

app = typer.Typer(
    name="shine",
    help="SHINE hypernetworks for Hugging Face: read a document once, get a LoRA for a frozen LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """SHINE hypernetworks for Hugging Face: read a document once, get a LoRA for a frozen LLM."""


app.command("convert")(convert)
app.command("eval")(eval_command)


def _register_optional_commands() -> None:
    """Commands whose modules need the `train` extra (datasets); absent extras hide them."""
    try:
        from .train import train_command
    except ImportError:  # pragma: no cover - the train extra is not installed
        return
    app.command("train")(train_command)


_register_optional_commands()
