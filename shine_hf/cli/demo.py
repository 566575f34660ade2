"""`shine demo`: serve the Gradio demo (`shine_hf.demo`) for the shipped toy models or a checkpoint."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.text import Text

from ..modeling import ShineError
from ._common import console, fail_cleanly


class DtypeChoice(StrEnum):
    """Backbone dtype for the command line."""

    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


def demo(
    model: Annotated[str | None, typer.Option("--model", help="Hub repo id or local directory of a SHINE "
                                                         "checkpoint (default: the shipped toy models, "
                                                         "offline).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to serve on (0.0.0.0: every interface).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = 7860,
    share: Annotated[bool, typer.Option("--share/--no-share", help="Also open a public Gradio share link "
                                                                   "(needs network access).")] = False,
    device: Annotated[str | None, typer.Option("--device", help="Where to load the model, e.g. cuda "
                                                           "(default: CPU).")] = None,
    dtype: Annotated[DtypeChoice | None, typer.Option("--dtype", help="Backbone dtype (default: the "
                                                                  "checkpoint's loading default).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer, in "
                                                                                "tokens.")] = 64,
) -> None:
    """Open a web page to internalize a document and compare SHINE's answers with in-context ones."""
    with fail_cleanly():
        try:
            from transformers.utils import logging as transformers_logging

            from ..demo import build_demo, load_demo_model, serve
        except ImportError as error:
            raise ShineError(f"shine demo needs the demo extra: pip install 'shine-hf[demo]' ({error}).") from None
        transformers_logging.disable_progress_bar()  # the spinner says what is loading
        with console.status(Text(f"Loading {model or 'the shipped toy models'}")):
            loaded, content = load_demo_model(model, device=device, dtype=dtype.value if dtype else None)
            page = build_demo(loaded, content, max_new_tokens=max_new_tokens)
        url = serve(page, host=host, port=port, share=share)
    console.print(Text("✓ ", style="bold green") + Text(f"SHINE demo ({content.model_name}) running at {url}"))
    console.print(Text("Press Ctrl+C to stop.", style="dim"))
    page.block_thread()
