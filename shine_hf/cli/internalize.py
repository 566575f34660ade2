"""`shine internalize`: one PEFT adapter per document, written to `--out DIR/<document name>/`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import console, fail_cleanly, print_success
from ._options import (
    ComposeMethod,
    backbone_option,
    batch_size_option,
    chunk_tokens_option,
    compose_option,
    device_option,
    dtype_option,
    model_option,
    out_option,
    overlap_tokens_option,
    revision_option,
)


def internalize_command(
    documents: Annotated[list[Path], typer.Argument(
        metavar="DOCUMENT", show_default=False, help="UTF-8 text files, one adapter each.")],
    model: Annotated[str, model_option()],
    out: Annotated[Path, out_option(
        "Directory for the adapters (created if needed): DIR/<document name>/, the file name without its "
        "suffix; an adapter already there is replaced.")],
    batch_size: Annotated[int, batch_size_option(
        "Documents per forward pass (and chunks per pass for long documents).")] = 8,
    chunk_tokens: Annotated[int | None, chunk_tokens_option()] = None,
    overlap_tokens: Annotated[int, overlap_tokens_option()] = 0,
    compose: Annotated[ComposeMethod, compose_option(
        "How several adapters become one (a long document's chunks; with --compose-all, the documents): "
        "concat (the sum of their deltas, ranks stacked) or mean (their average).")] = ComposeMethod.concat,
    compose_all: Annotated[str | None, typer.Option(
        "--compose-all", metavar="NAME",
        help="Write one adapter, DIR/NAME, that composes every document (with --compose) instead of one "
             "per document.")] = None,
    backbone: Annotated[str | None, backbone_option()] = None,
    revision: Annotated[str | None, revision_option()] = None,
    device: Annotated[str | None, device_option()] = None,
    dtype: Annotated[str | None, dtype_option()] = None,
) -> None:
    r"""Internalize documents: one PEFT LoRA adapter per document, in one pass of the hypernetwork.

    Each adapter is a standard PEFT adapter (peft.PeftModel.from_pretrained loads it onto the
    backbone); `shine chat --adapter DIR` answers questions from it.

    Examples:
      shine internalize docs/*.txt --model org/shine-qwen3-8b --out adapters/
      shine internalize report.txt --model ./my-shine --out adapters/ \
          --chunk-tokens 1024 --overlap-tokens 64 --device cuda
      shine internalize a.txt b.txt --model ./my-shine --out adapters/ \
          --compose-all handbook
    """
    from ..modeling.errors import InvalidInputError
    from ._documents import check_unique_names, read_documents
    from ._model import check_chunk_options, compose_adapters, describe, internalize_documents, load_model

    with fail_cleanly():
        docs = read_documents(documents)
        if compose_all is None:
            check_unique_names(docs)
        elif compose_all in ("", ".", "..") or Path(compose_all).name != compose_all:
            raise InvalidInputError(f"--compose-all {compose_all!r} is not a plain name: give the adapter's "
                                    f"directory name inside --out.")
        targets = _check_out(out, [compose_all] if compose_all is not None else [doc.name for doc in docs])
        check_chunk_options(chunk_tokens, overlap_tokens)
        loaded = load_model(model, backbone=backbone, revision=revision, dtype=dtype, device=device, console=console)
        items = internalize_documents(loaded, docs, batch_size=batch_size, chunk_tokens=chunk_tokens,
                                      overlap_tokens=overlap_tokens, compose=compose.value, console=console)
        if compose_all is None:
            for item in items:
                target = targets[item.document.name]
                item.adapter.save_pretrained(target)
                print_success(f"{item.document.path} → {target} ({describe(item, compose.value)})")
            return
        read = list(items)
        adapter = compose_adapters([item.adapter for item in read], compose.value)
        adapter.save_pretrained(targets[compose_all])
    print_success(f"{len(read)} documents → {targets[compose_all]} ({sum(item.tokens for item in read)} tokens, "
                  f"{compose.value}, rank {adapter.rank})")


def _check_out(out: Path, names: list[str]) -> dict[str, Path]:
    """The adapter directory of each name under `out`, after refusing paths that are files."""
    from ..modeling.errors import InvalidInputError

    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file: give a directory for the adapters.")
    targets = {name: out / name for name in names}
    for target in targets.values():
        if target.exists() and not target.is_dir():
            raise InvalidInputError(f"{target} is a file, where the adapter directory would go: move it away.")
    return targets
