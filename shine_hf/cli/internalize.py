"""`shine internalize`: one PEFT adapter per document, written to `--out DIR/<document name>/` (with
`--route`: one router directory per document, an adapter per chunk)."""

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
    route_option,
    top_k_option,
)


def internalize_command(
    documents: Annotated[list[Path], typer.Argument(
        metavar="DOCUMENT", show_default=False, help="UTF-8 text files, one adapter each.")],
    model: Annotated[str, model_option()],
    out: Annotated[Path, out_option(
        "Directory for the adapters (created if needed): DIR/<document name>/, the file name without its "
        "suffix; an adapter (or router) already there is replaced.")],
    batch_size: Annotated[int, batch_size_option(
        "Documents per forward pass (and chunks per pass for long documents).")] = 8,
    chunk_tokens: Annotated[int | None, chunk_tokens_option()] = None,
    overlap_tokens: Annotated[int, overlap_tokens_option()] = 0,
    compose: Annotated[ComposeMethod, compose_option(
        "How several adapters become one (a long document's chunks; with --compose-all, the documents; with "
        "--route, a question's top-K chunks): concat (the sum of their deltas, ranks stacked) or mean (their "
        "average).")] = ComposeMethod.concat,
    compose_all: Annotated[str | None, typer.Option(
        "--compose-all", metavar="NAME",
        help="Write one adapter, DIR/NAME, that composes every document (with --compose) instead of one "
             "per document.")] = None,
    route: Annotated[bool, route_option(
        "Write one router per document instead, DIR/<document name>/: the document in chunks (--chunk-tokens), "
        "an adapter per chunk plus the chunk texts; shine chat -a DIR answers each question from the chunks it "
        "matches best.")] = False,
    top_k: Annotated[int | None, top_k_option(
        "With --route: the router answers each question from the K chunks that match it best, composed with "
        "--compose (default 1; a document with fewer chunks: all of them).")] = None,
    backbone: Annotated[str | None, backbone_option()] = None,
    revision: Annotated[str | None, revision_option()] = None,
    device: Annotated[str | None, device_option()] = None,
    dtype: Annotated[str | None, dtype_option()] = None,
) -> None:
    r"""Internalize documents: one PEFT LoRA adapter per document, in one pass of the hypernetwork.

    Each adapter is a standard PEFT adapter (peft.PeftModel.from_pretrained loads it onto the
    backbone); `shine chat --adapter DIR` answers questions from it. With --route, each document
    is kept as a router instead: one adapter per chunk and the chunk texts; `shine chat --adapter
    DIR` then answers each question from the chunks it matches best (BM25 over their words).

    Examples:
      shine internalize docs/*.txt --model org/shine-qwen3-8b --out adapters/
      shine internalize report.txt --model ./my-shine --out adapters/ \
          --chunk-tokens 1024 --overlap-tokens 64 --device cuda
      shine internalize a.txt b.txt --model ./my-shine --out adapters/ \
          --compose-all handbook
      shine internalize book.txt --model ./my-shine --out routers/ \
          --route --top-k 2 --chunk-tokens 512
    """
    from ..modeling.errors import InvalidInputError
    from ._documents import check_unique_names, read_documents
    from ._model import (
        check_chunk_options,
        compose_adapters,
        describe,
        describe_router,
        internalize_documents,
        load_model,
        route_documents,
    )

    with fail_cleanly():
        if route and compose_all is not None:
            raise InvalidInputError("--route keeps each document as its own router: it cannot be combined with "
                                    "--compose-all.")
        if top_k is not None and not route:
            raise InvalidInputError("--top-k applies to routers: add --route (one router per document).")
        docs = read_documents(documents)
        if compose_all is None:
            check_unique_names(docs)
        elif compose_all in ("", ".", "..") or Path(compose_all).name != compose_all:
            raise InvalidInputError(f"--compose-all {compose_all!r} is not a plain name: give the adapter's "
                                    f"directory name inside --out.")
        targets = _check_out(out, [compose_all] if compose_all is not None else [doc.name for doc in docs])
        check_chunk_options(chunk_tokens, overlap_tokens)
        loaded = load_model(model, backbone=backbone, revision=revision, dtype=dtype, device=device, console=console)
        if route:
            for routed in route_documents(loaded, docs, batch_size=batch_size, chunk_tokens=chunk_tokens,
                                          overlap_tokens=overlap_tokens, top_k=1 if top_k is None else top_k,
                                          compose=compose.value, console=console):
                target = targets[routed.document.name]
                routed.router.save_pretrained(target)
                print_success(f"{routed.document.path} → {target} ({describe_router(routed.router)})")
            return
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
