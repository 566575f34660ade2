"""The `shine` command line (also `python -m shine_hf.cli`).

One function per command on the `app` Typer application. Errors raised on purpose by shine-hf
(`ShineError`) are printed as one line and exit with code 1; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from .modeling import ShineError

app = typer.Typer(
    name="shine",
    help="SHINE hypernetworks for Hugging Face: read a document once, get a LoRA for a frozen LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console(highlight=False, soft_wrap=True)
error_console = Console(stderr=True, highlight=False, soft_wrap=True)


@app.callback()
def main() -> None:
    """SHINE hypernetworks for Hugging Face: read a document once, get a LoRA for a frozen LLM."""


@contextlib.contextmanager
def fail_cleanly() -> Iterator[None]:
    """Turn a `ShineError` into a one-line `Error: ...` on stderr and exit code 1."""
    try:
        yield
    except ShineError as error:
        message = " ".join(str(error).split())
        error_console.print(Text("Error: ", style="bold red") + Text(message))
        raise typer.Exit(code=1) from None


@app.command()
def convert(
    src: Annotated[str, typer.Argument(help="Directory or Hub repo id of a reference SHINE checkpoint "
                                             "(mem_tokens.pt, metanetwork.pth, metalora.pth).")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write the shine-hf checkpoint.")],
    backbone: Annotated[str, typer.Option("--backbone", help="Hub id or local path of the backbone the "
                                                             "checkpoint was trained for (only its config "
                                                             "is read), e.g. Qwen/Qwen3-8B.")],
    m2p_num_heads: Annotated[int | None, typer.Option(help="M2P attention heads (not stored in the files; "
                                                           "default: 32 for hidden size 4096, else the "
                                                           "backbone's head count).")] = None,
    lora_scale: Annotated[float, typer.Option(help="Scale s of the generated LoRA (not stored in the "
                                                   "files; reference: 0.001).")] = 0.001,
    revision: Annotated[str | None, typer.Option(help="Hub revision of SRC.")] = None,
    backbone_revision: Annotated[str | None, typer.Option(help="Hub revision of the backbone.")] = None,
) -> None:
    """Convert a released SHINE checkpoint (e.g. Yewei-Liu/SHINE-ift_mqa) to the shine-hf format."""
    from .convert import convert_reference_checkpoint

    with fail_cleanly(), console.status(Text(f"Converting {src}")) as status:
        out = convert_reference_checkpoint(
            src,
            backbone,
            out_dir,
            m2p_num_heads=m2p_num_heads,
            lora_scale=lora_scale,
            revision=revision,
            backbone_revision=backbone_revision,
            progress=lambda message: status.update(Text(message)),
        )
    console.print(Text("✓ ", style="bold green") + Text(f"Converted {src} → {out}"))


def _register_optional_commands() -> None:
    """Commands whose modules need the `train` extra (datasets); absent extras hide them."""
    try:
        from .train import train_command
    except ImportError:  # pragma: no cover - the train extra is not installed
        return
    app.command("train")(train_command)


_register_optional_commands()


if __name__ == "__main__":
    app()
