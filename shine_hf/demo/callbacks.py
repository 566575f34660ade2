"""The demo's event handlers: read an upload, internalize a document, answer with and without it.

Handlers take and return plain values (and gradio updates), so tests call them without a browser.
What a user can get wrong (nothing to read, no question yet, a document too long for the
backbone: every `ShineError`) becomes a `gradio.Error`, shown on the page as a message. Every time
shown is measured with `time.perf_counter` around the model call alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ..modeling import ShineAdapter, ShineError, ShineForCausalLM
from ..modeling.prompting import IN_CONTEXT_TEMPLATE

SUPPORTED_UPLOADS = (".txt", ".md")


@dataclass(frozen=True)
class InternalizedDocument:
    """A document the demo has read (one per browser session, kept in a `gradio.State`).

    Attributes:
        document: The text, as internalized (the in-context baseline reads the same text).
        adapter: Its generated LoRA.
        seconds: Wall time of `model.internalize(document)`.
        zip_path: The adapter as a zipped PEFT adapter directory.
    """

    document: str
    adapter: ShineAdapter
    seconds: float
    zip_path: Path


def format_seconds(seconds: float) -> str:
    """`0.0123` -> `"12 ms"`, `2.5` -> `"2.50 s"`."""
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_size(num_bytes: int) -> str:
    """`2048` -> `"2 KB"`, `3_500_000` -> `"3.3 MB"` (binary units)."""
    if num_bytes < 1024 * 1024:
        return f"{max(1, round(num_bytes / 1024))} KB"
    return f"{num_bytes / 1024 / 1024:.1f} MB"


@contextlib.contextmanager
def shown_on_page() -> Iterator[None]:
    """Turn a `ShineError` (a problem with what the user gave) into a message on the page."""
    try:
        yield
    except ShineError as error:
        raise gr.Error(" ".join(str(error).split())) from error


def write_adapter_zip(adapter: ShineAdapter, destination: Path) -> Path:
    """Save `adapter` as a PEFT adapter directory zipped into `destination`; returns `destination`.

    The archive holds one folder named like the zip (`shine-adapter-1a2b/adapter_config.json`, ...)
    so unzipping gives a directory `peft.PeftModel.from_pretrained` loads. It is written under a
    temporary name and renamed, so `destination` is never a half-written zip.
    """
    folder = destination.name.removesuffix(".zip")
    with tempfile.TemporaryDirectory(dir=destination.parent) as staging:
        adapter_dir = Path(staging) / folder
        adapter.save_pretrained(adapter_dir)
        partial = Path(staging) / destination.name
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(adapter_dir.iterdir()):
                archive.write(file, f"{folder}/{file.name}")
        os.replace(partial, destination)
    return destination


class DemoCallbacks:
    """The handlers of one demo page, bound to the model it runs.

    The model's LoRA hooks hold one active adapter at a time, so the page must not run two of these
    handlers at once (`build_demo` gives every model event one gradio concurrency group of size 1).

    Args:
        model: The SHINE model.
        context_template: User turn of the in-context baseline (`{context}`, `{question}`).
        max_new_tokens: Longest answer, in tokens.
    """

    def __init__(
        self,
        model: ShineForCausalLM,
        *,
        context_template: str = IN_CONTEXT_TEMPLATE,
        max_new_tokens: int = 64,
    ) -> None:
        self.model = model
        self.context_template = context_template
        self.max_new_tokens = max_new_tokens
        # Adapter zips live here until the demo is garbage-collected or the process exits.
        self._workdir = tempfile.TemporaryDirectory(prefix="shine-demo-")
        self.workdir = Path(self._workdir.name)

    def read_upload(self, path: str | None) -> str:
        """The text of an uploaded file, for the document box."""
        if path is None:
            raise gr.Error("No file was uploaded.")
        file = Path(path)
        if file.suffix.lower() not in SUPPORTED_UPLOADS:
            raise gr.Error(f"{file.name} is not a text file: upload {' or '.join(SUPPORTED_UPLOADS)}.")
        try:
            return file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise gr.Error(f"{file.name} is not UTF-8 text.") from None

    def internalize(
        self, document: str, progress: gr.Progress = gr.Progress()  # noqa: B008 (gradio's progress idiom)
    ) -> tuple[InternalizedDocument, str, dict[str, Any]]:
        """Read `document` once into a LoRA; returns the session state, a status line and the
        download button's update (the zipped PEFT adapter)."""
        if not document or not document.strip():
            raise gr.Error("Paste or upload a document first.")
        progress(0.0, desc="Reading the document: one forward pass of the hypernetwork")
        with shown_on_page():
            start = time.perf_counter()
            adapter = self.model.internalize(document)
            seconds = time.perf_counter() - start
        progress(0.8, desc="Writing the PEFT adapter")
        digest = hashlib.sha256(document.encode("utf-8")).hexdigest()[:12]
        zip_path = write_adapter_zip(adapter, self.workdir / f"shine-adapter-{digest}.zip")
        internalized = InternalizedDocument(document, adapter, seconds, zip_path)
        status = (
            f"✓ Internalized {len(document.split())} words in **{format_seconds(seconds)}** (one forward pass). "
            f"A rank-{adapter.rank} LoRA now holds the document: ask questions below, or download it."
        )
        download = gr.update(
            value=str(zip_path),
            label=f"Download the adapter (PEFT zip, {format_size(zip_path.stat().st_size)})",
            interactive=True,
        )
        return internalized, status, download

    def _check_ready(self, question: str, internalized: InternalizedDocument | None) -> str:
        if internalized is None:
            raise gr.Error("Internalize a document first.")
        if not question or not question.strip():
            raise gr.Error("Type a question first.")
        return question.strip()

    def answer_with_adapter(
        self, question: str, internalized: InternalizedDocument | None
    ) -> tuple[str, str, str, str]:
        """SHINE's answer: the question alone, through the document's LoRA. Returns the answer, its
        timing, and an empty in-context answer and timing (cleared until `answer_in_context` runs)."""
        question = self._check_ready(question, internalized)
        with shown_on_page():
            start = time.perf_counter()
            answer = self.model.generate_text(question, adapter=internalized.adapter,
                                              max_new_tokens=self.max_new_tokens)
            seconds = time.perf_counter() - start
        return answer, f"Answered in **{format_seconds(seconds)}**: the question alone, through the LoRA.", "", ""

    def answer_in_context(self, question: str, internalized: InternalizedDocument | None) -> tuple[str, str]:
        """The usual way, for comparison: the document in the prompt, no adapter. Returns the answer
        and its timing."""
        question = self._check_ready(question, internalized)
        with shown_on_page():
            start = time.perf_counter()
            answer = self.model.generate_text(
                question,
                context=internalized.document,
                system_prompt=self.model.config.system_prompt,
                context_template=self.context_template,
                max_new_tokens=self.max_new_tokens,
            )
            seconds = time.perf_counter() - start
        return answer, f"Answered in **{format_seconds(seconds)}**: the whole document in the prompt."
