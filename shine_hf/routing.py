"""Routing questions to chunk adapters: a long document kept as one adapter per chunk plus its text.

Composing every chunk's LoRA into one adapter (`ShineAdapter.compose`) asks the hypernetwork to
write deltas that add up without interfering: each chunk's delta must act only on questions about
that chunk. A `RoutedAdapter` does not ask that of the weights. It keeps each chunk's adapter and
the chunk's text, scores the chunks against each question with BM25 (Okapi BM25+, over lower-cased
words; `rank_bm25`), and answers the question with the composition of its `top_k` best chunks'
adapters. This is retrieval, done once per question over the chunk *texts*; the answer still comes
from the weights, with no document in the prompt.

- `top_k=1`: the question is answered from the one chunk that matches it best, with that chunk's
  adapter as it is (no composition).
- `top_k > 1`: the chunks' adapters are composed with `method` (`concat` or `mean`, as
  `ShineAdapter.compose`), in document order.
- A question that shares no word with any chunk (all scores equal) gets the composition of every
  chunk: nothing says which chunk it is about.

A router saves as a directory (`save_pretrained`): one standard PEFT adapter per chunk in
`chunk-00000/`, `chunk-00001/`, … , `shine_router.json` with the chunk texts and the routing
settings, and a `README.md` card. `push_to_hub` uploads that directory in one commit;
`RoutedAdapter.from_pretrained` reads it back from a directory or a Hub repo.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .modeling.adapter import (
    ADAPTER_CARD_NAME,
    ADAPTER_CONFIG_NAME,
    ADAPTER_FILES,
    ROUTER_CONFIG_NAME,
    ShineAdapter,
    hub_base_model,
    push_saved,
)
from .modeling.adapter import is_router_chunk_directory as _is_chunk_directory
from .modeling.composition import COMPOSE_METHODS
from .modeling.errors import CheckpointError, InvalidInputError
from .modeling.io_utils import atomic_directory
from .modeling.peft_io import check_hub_kwargs
from .modeling.pretrained import is_local_reference

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

    from .modeling import ShineForCausalLM

__all__ = ["ROUTER_CONFIG_NAME", "ROUTE_METHODS", "RoutedAdapter", "is_router", "is_router_directory"]

ROUTER_FORMAT_VERSION = 1
ROUTE_METHODS = tuple(m for m in COMPOSE_METHODS if m != "weighted")
_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _chunk_directory(index: int) -> str:
    return f"chunk-{index:05d}"


# What a router on the Hub holds (the files `from_pretrained` downloads).
_ROUTER_FILE_PATTERNS = [ROUTER_CONFIG_NAME, ADAPTER_CARD_NAME, "chunk-*/*"]


def is_router_directory(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `RoutedAdapter.save_pretrained`."""
    return (Path(path) / ROUTER_CONFIG_NAME).is_file()


def _is_hub_name(name: str | os.PathLike) -> bool:
    """Whether `name` is read from the Hub: not a local directory, nor a path, but a valid repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = os.fspath(name)
    if os.path.isdir(name) or is_local_reference(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_router(name: str | os.PathLike, *, revision: str | None = None, token: bool | str | None = None) -> bool:
    """Whether `name` is a router: a directory written by `RoutedAdapter.save_pretrained`, or a Hub repo
    holding `shine_router.json` (`huggingface_hub.file_exists`; offline or unreachable, the HF cache
    is asked instead). A missing repo or revision is not a router: reading it then says what is wrong."""
    if not _is_hub_name(name):
        return is_router_directory(name)
    from huggingface_hub import file_exists, try_to_load_from_cache

    try:
        return file_exists(os.fspath(name), ROUTER_CONFIG_NAME, revision=revision, token=token)
    except OSError:  # offline mode, no connection, an HTTP error other than "not found"
        return isinstance(try_to_load_from_cache(os.fspath(name), ROUTER_CONFIG_NAME, revision=revision), str)


class RoutedAdapter:
    """Chunk adapters with their chunk texts; each question is answered from the chunks it matches best.

    Pass it wherever `generate_text` takes an adapter: `model.generate_text(questions, adapter=router)`
    picks the adapter of every question (`adapters_for`).

    Args:
        adapters: One adapter per chunk (a `ShineAdapter` batch, or a list of single adapters).
        chunks: The chunk texts, in the same order (what the router matches questions against).
        top_k: Chunks composed per question (1: the best chunk's adapter alone).
        method: How the `top_k` chunk adapters are composed: "concat" (the sum of their deltas) or
            "mean" (their average). Use the rule the hypernetwork was trained to compose with.

    Raises:
        InvalidInputError: no chunks, a chunk count that differs from the adapter count, a `top_k`
            outside 1..number of chunks, or an unknown method.
    """

    def __init__(
        self,
        adapters: ShineAdapter | Sequence[ShineAdapter],
        chunks: Sequence[str],
        *,
        top_k: int = 1,
        method: str = "concat",
    ) -> None:
        from rank_bm25 import BM25Plus

        if not isinstance(adapters, ShineAdapter):
            if not adapters:
                raise InvalidInputError("A RoutedAdapter needs at least one chunk adapter.")
            adapters = ShineAdapter.stack(list(adapters))
        chunks = list(chunks)
        if not chunks or not all(isinstance(c, str) for c in chunks):
            raise InvalidInputError("chunks must be a non-empty list of the chunk texts.")
        if len(chunks) != len(adapters):
            raise InvalidInputError(f"{len(chunks)} chunk texts for {len(adapters)} chunk adapters: give one text per "
                                    f"adapter, in the same order.")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(chunks):
            raise InvalidInputError(f"top_k must be an integer from 1 to the number of chunks ({len(chunks)}), "
                                    f"got {top_k!r}.")
        if method not in ROUTE_METHODS:
            raise InvalidInputError(f"Unknown method {method!r} for composing routed chunks: choose one of "
                                    f"{', '.join(ROUTE_METHODS)}.")
        self.adapters = adapters
        self.chunks = chunks
        self.top_k = top_k
        self.method = method
        self._index = BM25Plus([_words(chunk) for chunk in chunks])

    @classmethod
    def from_document(
        cls,
        model: ShineForCausalLM,
        document: str,
        *,
        chunk_tokens: int,
        overlap_tokens: int = 0,
        top_k: int = 1,
        method: str = "concat",
        chunk_batch_size: int = 8,
        show_progress: bool | None = None,
    ) -> RoutedAdapter:
        """Internalize `document` in chunks (as `model.internalize(document, chunk_tokens=...)` cuts
        them) and keep every chunk's adapter with its text.

        Raises:
            InvalidInputError: the document is not a string, or the chunking options are bad (see
                `ShineForCausalLM.internalize`).
        """
        from .modeling.chunking import check_chunking, split_text

        if not isinstance(document, str):
            raise InvalidInputError(f"RoutedAdapter.from_document reads one text document, got "
                                    f"{type(document).__name__}.")
        check_chunking(chunk_tokens, overlap_tokens, model.max_context_tokens)
        adapters = model.internalize(document, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens, compose=None,
                                     chunk_batch_size=chunk_batch_size, show_progress=show_progress)
        chunks = split_text(document, model._require_tokenizer(), chunk_tokens, overlap_tokens)
        return cls(adapters, chunks, top_k=top_k, method=method)

    def __len__(self) -> int:
        """The number of chunks."""
        return len(self.chunks)

    @property
    def base_model_name_or_path(self) -> str | None:
        """The backbone every chunk adapter is for (a Hub id, or a local directory's absolute path)."""
        return self.adapters.base_model_name_or_path

    def scores(self, question: str) -> list[float]:
        """The BM25+ score of every chunk for `question` (higher: a better match)."""
        return [float(s) for s in self._index.get_scores(_words(question))]

    def route(self, question: str) -> list[int]:
        """The chunks `question` is answered from, in document order: its `top_k` best (ties to the
        earlier chunk), or every chunk when no chunk matches better than another."""
        scores = self.scores(question)
        if max(scores) == min(scores):
            return list(range(len(scores)))
        ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return sorted(ranked[: self.top_k])

    def adapter_for(self, question: str) -> ShineAdapter:
        """The adapter that answers `question`: its routed chunks' adapters, composed with `method`."""
        rows = self.route(question)
        if len(rows) == 1:
            return self.adapters[rows[0]]
        return ShineAdapter.compose([self.adapters[i] for i in rows], method=self.method)

    def adapters_for(self, questions: Sequence[str]) -> ShineAdapter:
        """One adapter per question (a batch, for `generate_text`), ranks padded to the largest."""
        if not questions:
            raise InvalidInputError("No questions to route.")
        return ShineAdapter.stack([self.adapter_for(q) for q in questions])

    # ------------------------------------------------------------------ files
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write every chunk's PEFT adapter (`chunk-00000/`, …), `shine_router.json` (the chunk texts
        and settings) and a `README.md` card. The directory is assembled beside the target and then
        replaces an earlier router's files (or a plain adapter's, saved there before) in one step, so
        a failed save leaves the old router as it was; other files of the directory are kept."""
        from .hub import render_router_card

        config = {"format_version": ROUTER_FORMAT_VERSION, "top_k": self.top_k, "method": self.method,
                  "retriever": "bm25plus-words", "chunks": self.chunks}
        owned = {ROUTER_CONFIG_NAME, ADAPTER_CARD_NAME}
        # a plain adapter saved here before is replaced, not left beside the router
        if (Path(save_directory) / ADAPTER_CONFIG_NAME).is_file():
            owned |= ADAPTER_FILES
        with atomic_directory(save_directory, marker=ROUTER_CONFIG_NAME, owns=owned.__contains__,
                              owns_directory=_is_chunk_directory) as staging:
            for index in range(len(self)):
                self.adapters[index].save_pretrained(staging / _chunk_directory(index))
            (staging / ADAPTER_CARD_NAME).write_text(render_router_card(self), encoding="utf-8")
            (staging / ROUTER_CONFIG_NAME).write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n",
                                                      encoding="utf-8")

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        top_k: int | None = None, method: str | None = None, device: Any = None,
                        **hub_kwargs: Any) -> RoutedAdapter:
        """Read a router written by `save_pretrained` from a local directory, or pushed by `push_to_hub`
        to a Hub repo (`top_k` / `method` override the saved ones).

        Args:
            path_or_repo_id: A router directory, or a Hub repo id (its `shine_router.json`, card and
                `chunk-*/` files are downloaded with `huggingface_hub.snapshot_download`).
            revision: The Hub revision (branch, tag or commit).
            top_k, method: Override the saved routing settings.
            device: Where to load the tensors (default: CPU).
            **hub_kwargs: Other `snapshot_download` arguments (`token`, `cache_dir`, `local_files_only`, ...).

        Raises:
            CheckpointError: `shine_router.json` is missing or malformed, a chunk adapter is missing, or
                the Hub has no such repo or revision (or cannot be reached).
        """
        from huggingface_hub import snapshot_download

        check_hub_kwargs(hub_kwargs, snapshot_download, "RoutedAdapter.from_pretrained")
        directory = _router_directory(path_or_repo_id, revision, hub_kwargs)
        path = directory / ROUTER_CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{path_or_repo_id} is not a saved RoutedAdapter: {ROUTER_CONFIG_NAME} is missing.")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
            chunks = config["chunks"]
            version = config["format_version"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path} is not a valid router file: {error}") from error
        if version != ROUTER_FORMAT_VERSION:
            raise CheckpointError(f"{path} has router format {version!r}; this version of shine-hf reads "
                                  f"{ROUTER_FORMAT_VERSION}.")
        if not isinstance(chunks, list) or not chunks:
            raise CheckpointError(f"{path} lists no chunks.")
        adapters = []
        for index in range(len(chunks)):
            chunk_dir = directory / _chunk_directory(index)
            if not chunk_dir.is_dir():
                raise CheckpointError(f"{path} lists {len(chunks)} chunks, but {chunk_dir} is missing.")
            adapters.append(ShineAdapter.from_pretrained(chunk_dir, device=device))
        return cls(adapters, chunks, top_k=config.get("top_k", 1) if top_k is None else top_k,
                   method=config.get("method", "concat") if method is None else method)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        base_model_name_or_path: str | None = None,
        commit_message: str = "Upload SHINE router",
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> CommitInfo:
        """Create `repo_id` if needed and upload the router directory (`save_pretrained`: every chunk's
        PEFT adapter, `shine_router.json`, the card) in one commit.

        The base model follows `ShineAdapter.push_to_hub`'s rule: `base_model_name_or_path` if given
        (it then becomes every chunk adapter's own, and each pushed `adapter_config.json` names it),
        else the adapters'. A local path is refused before anything is created or uploaded.

        Args:
            repo_id: The repo to push to (`name` or `namespace/name`).
            base_model_name_or_path: The backbone's Hub id, required when the adapters name a local path.
            commit_message, commit_description: Of the commit.
            private: Visibility of a newly created repo.
            token: Hub token (default: the logged-in one).
            revision: Branch to push to (created from the default branch if it does not exist).
            create_pr: Open a pull request instead of committing to the branch.

        Returns:
            The commit's `huggingface_hub.CommitInfo` (a string: the commit URL; it also holds the PR URL).

        Raises:
            ConfigError: the base model would be a path of this machine.
        """
        self.adapters.base_model_name_or_path = hub_base_model(self.base_model_name_or_path, base_model_name_or_path,
                                                               "router")
        return push_saved(self, repo_id, commit_message=commit_message, commit_description=commit_description,
                          private=private, token=token, revision=revision, create_pr=create_pr)

    def __repr__(self) -> str:
        return (f"RoutedAdapter(chunks={len(self)}, top_k={self.top_k}, method={self.method!r}, "
                f"rank={self.adapters.rank}, base_model={self.adapters.base_model_name_or_path!r})")


def _router_directory(path_or_repo_id: str | os.PathLike, revision: str | None, hub_kwargs: dict[str, Any]) -> Path:
    """The local directory of a router: `path_or_repo_id` itself, or its Hub repo's files downloaded.

    Raises:
        CheckpointError: the Hub has no such repo or revision, or cannot be reached (one line).
    """
    if not _is_hub_name(path_or_repo_id):
        return Path(path_or_repo_id)
    from huggingface_hub import snapshot_download

    name = os.fspath(path_or_repo_id)
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=_ROUTER_FILE_PATTERNS, **hub_kwargs))
    except OSError as error:  # the Hub's HTTP errors (not found, unauthorized), offline, unreachable
        where = name if revision is None else f"{name} at revision {revision}"
        raise CheckpointError(f"Can't read the router {where}: it is not a local directory, and the Hub answered: "
                              f"{' '.join(str(error).split())}") from error
