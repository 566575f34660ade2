"""Loading a SHINE model and internalizing documents with progress, for `shine internalize` and
`shine chat`.

Imported by command functions only: it imports torch and shine_hf.modeling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..modeling import ShineAdapter, ShineForCausalLM
from ..modeling.chunking import check_chunking, split_text
from ..modeling.errors import CheckpointError, InvalidInputError, ShineError
from ._documents import Document

if TYPE_CHECKING:
    from ..routing import RoutedAdapter


def check_device(device: str | None) -> None:
    """Raise InvalidInputError unless torch can put a tensor on `device` (before anything is loaded)."""
    if device is None:
        return
    try:
        torch.empty(0, device=torch.device(device))
    except (RuntimeError, AssertionError, ValueError) as error:
        raise InvalidInputError(f"Cannot use the device {device!r}: {first_line(error)}") from None


def check_chunk_options(chunk_tokens: int | None, overlap_tokens: int) -> None:
    """Raise InvalidInputError, naming the options, for an overlap that would never let chunking
    advance; before the model is loaded (`internalize_documents` checks the rest against the model)."""
    if chunk_tokens is not None and overlap_tokens >= chunk_tokens:
        raise InvalidInputError(f"--overlap-tokens ({overlap_tokens}) must be smaller than --chunk-tokens "
                                f"({chunk_tokens}), or chunking would never advance.")


@contextlib.contextmanager
def _without_transformers_progress_bars() -> Iterator[None]:
    """transformers' own loading bars off for the block (a rich spinner says what is loading)."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def load_model(model: str, *, backbone: str | None = None, revision: str | None = None, dtype: str | None = None,
               device: str | None = None, console: Console) -> ShineForCausalLM:
    """`ShineForCausalLM.from_pretrained` under a spinner on `console`; a checkpoint that cannot be
    found or read is a `CheckpointError` (one line on the command line)."""
    check_device(device)
    with _without_transformers_progress_bars(), console.status(Text(f"Loading {model}")):
        try:
            loaded = ShineForCausalLM.from_pretrained(model, backbone=backbone, revision=revision, dtype=dtype,
                                                      device_map=None if device is None else {"": device})
        except OSError as error:
            if isinstance(error, ShineError):
                raise
            raise CheckpointError(f"Could not load the SHINE checkpoint {model!r}: {error}") from error
    if loaded.tokenizer is None:
        raise CheckpointError(f"{model} has no tokenizer, and neither has its backbone: documents cannot be read.")
    return loaded


@dataclass(frozen=True)
class Internalized:
    """One document's adapter, and how it was read."""

    document: Document
    adapter: ShineAdapter
    tokens: int
    chunks: int
    """1: read whole; more: read in this many chunks, their adapters composed."""


def internalize_documents(
    model: ShineForCausalLM,
    documents: Sequence[Document],
    *,
    batch_size: int,
    chunk_tokens: int | None,
    overlap_tokens: int,
    compose: str,
    console: Console,
) -> Iterator[Internalized]:
    """One adapter per document, under a progress bar over documents on `console`.

    Documents that fit are read whole, `batch_size` per `internalize` call. A document longer than
    `chunk_tokens` (default: `model.max_context_tokens`, the longest the backbone can read) is read in
    chunks of at most that many tokens, `batch_size` chunks per forward pass, and its chunk
    adapters are composed with `compose` (see `ShineForCausalLM.internalize`). Documents that fit
    come first, in order, then the chunked ones.

    Raises:
        InvalidInputError: a chunk size the backbone cannot read, or an overlap that never advances.
    """
    tokenizer = model.tokenizer
    chunk_at = _chunk_size(model, chunk_tokens, overlap_tokens)
    # as `internalize` counts them; verbose=False: documents longer than the backbone's limit get chunked
    lengths = [len(tokenizer(document.text, verbose=False)["input_ids"]) for document in documents]
    fits = [chunk_at is None or length <= chunk_at for length in lengths]
    whole = [i for i, fit in enumerate(fits) if fit]
    chunked = [i for i, fit in enumerate(fits) if not fit]
    with _progress(console) as bar:
        task = bar.add_task("Internalizing", total=len(documents))
        for start in range(0, len(whole), batch_size):
            rows = whole[start : start + batch_size]
            bar.update(task, description=f"Internalizing {_names(documents, rows)}")
            adapters = model.internalize([documents[i].text for i in rows])
            for position, i in enumerate(rows):
                yield Internalized(documents[i], adapters[position], lengths[i], 1)
                bar.advance(task)
        for i in chunked:
            document = documents[i]
            chunks = len(split_text(document.text, tokenizer, chunk_at, overlap_tokens))
            bar.update(task, description=f"Internalizing {document.path.name} ({chunks} chunks)")
            adapter = model.internalize(document.text, chunk_tokens=chunk_at, overlap_tokens=overlap_tokens,
                                        compose=compose, chunk_batch_size=batch_size, show_progress=False)
            yield Internalized(document, adapter, lengths[i], chunks)
            bar.advance(task)


@dataclass(frozen=True)
class Routed:
    """One document kept as a router: an adapter per chunk, with the chunk texts."""

    document: Document
    router: RoutedAdapter


def route_documents(
    model: ShineForCausalLM,
    documents: Sequence[Document],
    *,
    batch_size: int,
    chunk_tokens: int | None,
    overlap_tokens: int,
    top_k: int,
    compose: str,
    console: Console,
) -> Iterator[Routed]:
    """One `RoutedAdapter` per document, under a progress bar over documents on `console`.

    Every document is cut as `internalize_documents` cuts the long ones: chunks of at most
    `chunk_tokens` tokens (default: `model.max_context_tokens`), `batch_size` chunks per forward
    pass; a document that fits in one chunk gives a router of one chunk. Each question is answered
    from its `top_k` best chunks (all of them, for a document with fewer), composed with `compose`.

    Raises:
        InvalidInputError: a chunk size the backbone cannot read, or an overlap that never advances.
    """
    from ..routing import RoutedAdapter

    tokenizer = model.tokenizer
    chunk_at = _chunk_size(model, chunk_tokens, overlap_tokens)
    with _progress(console) as bar:
        task = bar.add_task("Internalizing", total=len(documents))
        for document in documents:
            chunks = 1 if chunk_at is None else len(split_text(document.text, tokenizer, chunk_at, overlap_tokens))
            bar.update(task, description=f"Internalizing {document.path.name} ({_count(chunks, 'chunk')})")
            k = min(top_k, chunks)
            if chunk_at is None:  # a backbone without a length limit reads any document whole
                router = RoutedAdapter([model.internalize(document.text)], [document.text], top_k=k, method=compose)
            else:
                router = RoutedAdapter.from_document(model, document.text, chunk_tokens=chunk_at,
                                                     overlap_tokens=overlap_tokens, top_k=k, method=compose,
                                                     chunk_batch_size=batch_size, show_progress=False)
            yield Routed(document, router)
            bar.advance(task)


def _chunk_size(model: ShineForCausalLM, chunk_tokens: int | None, overlap_tokens: int) -> int | None:
    """The chunk size documents are cut at (default: the longest the backbone reads), checked."""
    chunk_at = model.max_context_tokens if chunk_tokens is None else chunk_tokens
    if chunk_at is not None:
        check_chunking(chunk_at, overlap_tokens, model.max_context_tokens)
    return chunk_at


def _progress(console: Console) -> Progress:
    """The progress bar over documents that both internalize loops show."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def describe_router(router: RoutedAdapter) -> str:
    """`routed: 7 chunks, top-1, concat`: how a router answers."""
    return f"routed: {_count(len(router), 'chunk')}, top-{router.top_k}, {router.method}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _names(documents: Sequence[Document], rows: Sequence[int]) -> str:
    first = documents[rows[0]].path.name
    return first if len(rows) == 1 else f"{first} and {len(rows) - 1} more"


def describe(item: Internalized, compose: str) -> str:
    """`312 tokens in 2 chunks composed by concat, rank 16`: how a document became its adapter."""
    read = "" if item.chunks == 1 else f" in {item.chunks} chunks composed by {compose}"
    return f"{item.tokens} tokens{read}, rank {item.adapter.rank}"


def compose_adapters(adapters: Sequence[ShineAdapter], method: str) -> ShineAdapter:
    """`adapters` as one (itself when there is one): float32 on the first one's device."""
    if len(adapters) == 1:
        return adapters[0]
    device = adapters[0].device
    return ShineAdapter.compose([adapter.to(device=device, dtype=torch.float32) for adapter in adapters], method)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
