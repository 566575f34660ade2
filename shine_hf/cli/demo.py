"""`shine demo`: serve the Gradio demo (`shine_hf.demo`) for the shipped toy models or a checkpoint."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from ._common import console, fail_cleanly, print_success
from ._options import backbone_option, device_option, dtype_option, max_new_tokens_option, model_option, revision_option


def demo(
    model: Annotated[str | None, model_option("SHINE checkpoint: local directory or Hub repo id (default: the "
                                              "shipped toy models, offline).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to serve on (0.0.0.0: every interface).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to serve on.")] = 7860,
    share: Annotated[bool, typer.Option("--share/--no-share", help="Also open a public Gradio share link "
                                                                   "(needs network access).")] = False,
    device: Annotated[str | None, device_option()] = None,
    dtype: Annotated[str | None, dtype_option()] = None,
    max_new_tokens: Annotated[int, max_new_tokens_option()] = 64,
    backbone: Annotated[str | None, backbone_option()] = None,
    revision: Annotated[str | None, revision_option()] = None,
) -> None:
    """Open a web page to internalize a document and compare SHINE's answers with in-context ones.

    Examples:
      shine demo
      shine demo --model org/shine-qwen3-8b --device cuda --dtype bfloat16
    """
    from ..modeling.errors import InvalidInputError, ShineError
    from ._model import check_device

    with fail_cleanly():
        try:
            from transformers.utils import logging as transformers_logging

            from ..demo import build_demo, load_demo_model, serve
        except ImportError as error:
            raise ShineError(f"shine demo needs the demo extra: pip install 'shine-hf[demo]' ({error}).") from None
        if model is None and (backbone is not None or revision is not None):
            raise InvalidInputError("--backbone and --revision apply to a checkpoint given with --model.")
        check_device(device)
        transformers_logging.disable_progress_bar()  # the spinner says what is loading
        loading = {"backbone": backbone, "revision": revision}
        with console.status(Text(f"Loading {model or 'the shipped toy models'}")):
            loaded, content = load_demo_model(model, device=device, dtype=dtype,
                                              **{key: value for key, value in loading.items() if value is not None})
            page = build_demo(loaded, content, max_new_tokens=max_new_tokens)
        url = serve(page, host=host, port=port, share=share)
    print_success(f"SHINE demo ({content.model_name}) running at {url}")
    console.print(Text("Press Ctrl+C to stop.", style="dim"))
    page.block_thread()
