"""The `shine` command line (also `python -m shine_hf.cli`).

Each command lives in its own module, `shine_hf/cli/<command>.py`, and has one entry in
`COMMANDS` below: the function to call and the one-line help that `shine --help` shows. A command's
module is imported only when that command runs (or shows its help), so `shine --help` starts
without importing torch or transformers; command modules import heavy libraries inside the
command function. A command function's docstring is its help; the part from a line `Examples:`
on is shown after the options, lines as written (`command_help`). The options several commands
share are declared once, in `_options.py`.

Errors a user can fix are one line on stderr and exit code 1: `ShineError`s raised by shine-hf
(`_common.fail_cleanly`) and command-line usage errors (`ShineGroup.main`). Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import typer
from typer import _click as click  # the click that typer parses with (typer >= 0.29 vendors it)
from typer.core import TyperGroup

from ._common import print_error

# No rich markup in help texts: "[default: 8]" in a help string is text, flags do not get a type
# column, and long option names are never cut (click's plain layout fits 80 columns).
MARKUP_MODE = None


@dataclass(frozen=True)
class CommandEntry:
    """A `shine` subcommand: where its function lives, and its line in `shine --help`.

    Attributes:
        target: `module:function`, the module relative to `shine_hf.cli`. The function is a Typer
            command function (its docstring is the command's full help) or a click command.
        help: One line for the command list of `shine --help`.
        extra: The `shine-hf[...]` extra whose packages the module needs, for the error message
            when they are missing.
    """

    target: str
    help: str
    extra: str | None = None


COMMANDS: dict[str, CommandEntry] = {
    "internalize": CommandEntry("internalize:internalize_command", "Write one PEFT adapter per document."),
    "chat": CommandEntry("chat:chat_command", "Ask questions about documents or adapters in the terminal."),
    "eval": CommandEntry("eval:eval_command", "Score SHINE against in-context, question-only, SFT baselines.",
                         extra="eval"),
    "convert": CommandEntry("convert:convert", "Convert a released SHINE checkpoint to the shine-hf format."),
    "train": CommandEntry("train:train_command", "Train a SHINE hypernetwork on a frozen backbone.", extra="train"),
    "push": CommandEntry("push:push_command", "Upload a SHINE checkpoint, adapter or router to the Hub."),
    "demo": CommandEntry("demo:demo", "Internalize a document and ask it questions in the browser.",
                         extra="demo"),
}


class CommandUnavailableError(click.ClickException):
    """A command's module needs a package that is not installed."""


def load_command(name: str) -> click.Command:
    """Import the module of command `name` and build its click command.

    Raises:
        CommandUnavailableError: the module needs a package that is not installed.
    """
    entry = COMMANDS[name]
    module_name, _, attribute = entry.target.partition(":")
    try:
        module = importlib.import_module(f".{module_name}", __name__)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] == "shine_hf":
            raise  # our own module is missing: a packaging bug, not a user error
        install = f": pip install 'shine-hf[{entry.extra}]'" if entry.extra else ""
        raise CommandUnavailableError(
            f"'shine {name}' needs the package {error.name!r}, which is not installed{install}."
        ) from error
    function = getattr(module, attribute)
    if isinstance(function, click.Command):
        return function
    help_text, examples = command_help(function)
    single = typer.Typer(rich_markup_mode=MARKUP_MODE, add_completion=False, pretty_exceptions_enable=False)
    single.command(name, short_help=entry.help, help=help_text, epilog=examples)(function)
    return typer.main.get_command(single)


EXAMPLES_HEADING = "Examples:"


def command_help(function: Any) -> tuple[str | None, str | None]:
    """A command function's docstring as (help, epilog): the epilog is the `Examples:` section at its
    end, kept line by line (click's `\\b` marker) so that `--help` ends with commands to copy."""
    doc = inspect.getdoc(function) or ""
    help_text, heading, examples = doc.partition(f"\n{EXAMPLES_HEADING}\n")
    if not heading:
        return doc or None, None
    return help_text.rstrip(), examples_epilog(examples)


def examples_epilog(examples: str) -> str:
    """The `Examples:` section that ends a `--help`, its lines kept as written (click's `\\b` marker)."""
    return f"{EXAMPLES_HEADING}\n\n\b\n{examples.rstrip()}"


class ShineGroup(TyperGroup):
    """The `shine` group: commands come from `COMMANDS`, imported on demand; usage errors are one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the registry's help lines, without importing any command."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry.help) for name, entry in COMMANDS.items()])

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        # bitsandbytes (imported by PEFT when installed) warns at import on some CPUs that an optional
        # kernel cannot be downloaded; it changes nothing for the user, so the command line hides it.
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:  # bare `shine`: the help, as a usage error
            error.show()
            sys.exit(error.exit_code)
        except click.ClickException as error:
            print_error(error.format_message() + _help_hint(error))
            sys.exit(1)
        except typer.Abort:  # typer's own (a RuntimeError): the vendored click has no Abort
            print_error("Aborted.")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _help_hint(error: click.ClickException) -> str:
    ctx = getattr(error, "ctx", None)
    if ctx is None or not ctx.help_option_names:
        return ""
    return f" (see '{ctx.command_path} {ctx.help_option_names[0]}')"


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"shine-hf {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="shine",
    cls=ShineGroup,
    no_args_is_help=True,
    epilog=examples_epilog(
        "  shine internalize docs/*.txt --model org/shine-qwen3-8b --out adapters/\n"
        "  shine chat --model org/shine-qwen3-8b --adapter adapters/contract\n"
        "  shine COMMAND --help"
    ),
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=MARKUP_MODE,
)


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the shine-hf version and exit."),
) -> None:
    """SHINE hypernetworks for Hugging Face: read a document once, get a LoRA for a frozen LLM."""
