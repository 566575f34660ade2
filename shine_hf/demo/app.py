"""The demo page (a `gradio.Blocks`) and how it is served.

Paste or upload a document → Internalize (one forward pass, with a progress bar) → ask questions:
SHINE's answer (the question alone through the generated LoRA) beside the in-context answer (the
document in the prompt), each with its measured time; the LoRA downloads as a PEFT adapter zip.
The page makes no requests beyond its own server: no analytics, no share link unless asked.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..modeling import ShineError, ShineForCausalLM
from .callbacks import SUPPORTED_UPLOADS, DemoCallbacks
from .content import DemoContent, load_demo_model

# Every event that runs the model joins this queue group, one at a time (see DemoCallbacks).
MODEL_QUEUE = "shine-model"

INTRO = (
    "# SHINE: read a document once, answer from a LoRA\n"
    "The hypernetwork reads your document in **one forward pass** and writes a LoRA for the frozen "
    "language model. Questions are then answered **from the adapter**, without the document in the prompt; "
    "the usual in-context answer (the whole document in the prompt) is shown beside it."
)


# System fonts: with gradio's bundled web font, some bold capitals came from a fallback font.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


class ServerStartError(ShineError, OSError):
    """The demo server could not start (e.g. the port is already in use)."""


def build_demo(model: ShineForCausalLM, content: DemoContent | None = None, *, max_new_tokens: int = 64) -> gr.Blocks:
    """The demo page for `model`.

    Args:
        model: A loaded SHINE model (`ShineForCausalLM.from_pretrained`, or `load_demo_model`).
        content: The notice, example document and questions and the in-context template of the page;
            default: none, the reference in-context template.
        max_new_tokens: Longest answer, in tokens.
    """
    content = content or DemoContent(model_name=str(model.config.backbone_name_or_path))
    callbacks = DemoCallbacks(model, context_template=content.context_template, max_new_tokens=max_new_tokens)
    with gr.Blocks(title="SHINE demo", analytics_enabled=False) as demo:
        internalized = gr.State(None)
        gr.Markdown(INTRO)
        if content.notice:
            gr.Markdown(content.notice, elem_id="notice")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                document = gr.Textbox(label="1. Document", lines=6, max_lines=20, elem_id="document",
                                      placeholder="Paste a document here, or upload a text file below.")
                upload = gr.UploadButton(f"…or upload a text file ({', '.join(SUPPORTED_UPLOADS)})",
                                         file_types=list(SUPPORTED_UPLOADS), type="filepath", size="sm",
                                         elem_id="upload")
                if content.example_document:
                    gr.Examples([[content.example_document]], inputs=[document], label="Example document")
            with gr.Column(scale=2):
                internalize = gr.Button("2. Internalize", variant="primary", elem_id="internalize")
                status = gr.Markdown("No document internalized yet.", elem_id="status")
                download = gr.DownloadButton("Download the adapter (PEFT zip)", interactive=False,
                                             elem_id="download")
        with gr.Row(equal_height=True):
            question = gr.Textbox(label="3. Question", placeholder="Ask about the document", scale=5,
                                  elem_id="question")
            ask = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
        if content.example_questions:
            gr.Examples([[q] for q in content.example_questions], inputs=[question], label="Suggested questions")
        with gr.Row(equal_height=True):
            with gr.Column():
                gr.Markdown("### SHINE: question + generated LoRA\nThe document is **not** in the prompt.")
                shine_answer = gr.Textbox(label="SHINE answer", interactive=False, elem_id="shine-answer")
                shine_timing = gr.Markdown(elem_id="shine-timing")
            with gr.Column():
                gr.Markdown("### In context: document + question\nThe usual way, for comparison.")
                context_answer = gr.Textbox(label="In-context answer", interactive=False, elem_id="context-answer")
                context_timing = gr.Markdown(elem_id="context-timing")

        model_event: dict[str, Any] = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": 1}
        upload.upload(callbacks.read_upload, inputs=[upload], outputs=[document])
        internalize.click(callbacks.internalize, inputs=[document], outputs=[internalized, status, download],
                          **model_event)
        for trigger in (ask.click, question.submit):
            trigger(
                callbacks.answer_with_adapter, inputs=[question, internalized],
                outputs=[shine_answer, shine_timing, context_answer, context_timing], **model_event,
            ).success(
                callbacks.answer_in_context, inputs=[question, internalized],
                outputs=[context_answer, context_timing], **model_event,
            )
    return demo


def serve(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> str:
    """Start serving `demo` in the background; returns its URL (the share link when `share`).

    Raises:
        ServerStartError: the server could not start (port in use, host not available).
    """
    try:
        _, local_url, share_url = demo.launch(server_name=host, server_port=port, share=share,
                                              prevent_thread_lock=True, quiet=True, show_error=True,
                                              theme=THEME)
    except OSError as error:
        reason = str(error).split(". ")[0].rstrip(".")  # gradio's advice that follows is about its own API
        raise ServerStartError(f"The demo could not start on {host}:{port}: {reason}.") from error
    return share_url if share and share_url else local_url


def launch(
    model: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    max_new_tokens: int = 64,
) -> None:
    """Load `model` (default: the shipped toy models), serve its demo page, block until Ctrl+C.

    Args: as `load_demo_model` (model, device, dtype), `serve` (host, port, share) and `build_demo`.
    """
    loaded, content = load_demo_model(model, device=device, dtype=dtype)
    demo = build_demo(loaded, content, max_new_tokens=max_new_tokens)
    print(f"SHINE demo ({content.model_name}) running at {serve(demo, host=host, port=port, share=share)}")
    demo.block_thread()
