"""Splitting long documents into chunks the backbone can read, at sentence ends where possible.

A chunk holds at most `chunk_tokens` tokens. Its end is the last sentence end (a token ending in
`.`, `!` or `?`, or followed by a line break) in the second half of the window; when there is none
the chunk ends exactly at `chunk_tokens`. The next chunk starts `overlap_tokens` before the end of
the previous one (for text: at the first word start from there). Text chunks are cut on the token
boundaries of the whole document's tokenization and returned as text, so each chunk is then
tokenized exactly as a document of its own would be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import InvalidInputError

_SENTENCE_END = (".", "!", "?", "\n")


def check_chunking(chunk_tokens: int, overlap_tokens: int, max_tokens: int | None) -> None:
    """Raise InvalidInputError for a chunk size the backbone cannot read or an overlap that never advances."""
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise InvalidInputError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}.")
    if isinstance(overlap_tokens, bool) or not isinstance(overlap_tokens, int) or overlap_tokens < 0:
        raise InvalidInputError(f"overlap_tokens must be an integer >= 0, got {overlap_tokens!r}.")
    if overlap_tokens >= chunk_tokens:
        raise InvalidInputError(
            f"chunk_tokens ({chunk_tokens}) must be larger than overlap_tokens ({overlap_tokens}), or chunking "
            f"would never advance."
        )
    if max_tokens is not None and chunk_tokens > max_tokens:
        raise InvalidInputError(
            f"chunk_tokens={chunk_tokens} is beyond what the backbone can read with the memory tokens "
            f"({max_tokens} tokens per chunk at most)."
        )


def chunk_spans(
    num_tokens: int,
    chunk_tokens: int,
    overlap_tokens: int,
    ends_sentence: Callable[[int], bool],
    starts_word: Callable[[int], bool] | None = None,
) -> list[tuple[int, int]]:
    """Token spans [start, end) covering `num_tokens` tokens; `ends_sentence(i)`: a sentence ends after
    token i; `starts_word(i)`: token i begins a word (an overlap then starts at a word, not inside one)."""
    spans: list[tuple[int, int]] = []
    start = 0
    while start < num_tokens:
        end = min(start + chunk_tokens, num_tokens)
        if end < num_tokens:
            for candidate in range(end, start + chunk_tokens // 2, -1):
                if ends_sentence(candidate - 1):
                    end = candidate
                    break
        spans.append((start, end))
        if end >= num_tokens:
            break
        next_start = max(end - overlap_tokens, start + 1)
        if starts_word is not None:
            next_start = next((i for i in range(next_start, end) if starts_word(i)), end)
        start = next_start
    return spans


def split_text(text: str, tokenizer: Any, chunk_tokens: int, overlap_tokens: int) -> list[str]:
    """`text` as chunk texts of at most `chunk_tokens` tokens (without the tokenizer's special tokens)."""
    # verbose=False: a document longer than the tokenizer's model_max_length is expected here (it is
    # what chunking is for), so no "indexing errors" warning.
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets: Sequence[tuple[int, int]] = encoding["offset_mapping"]
    if not offsets:
        return [text]

    def ends_sentence(index: int) -> bool:
        end = offsets[index][1]
        following = text[end : offsets[index + 1][0]] if index + 1 < len(offsets) else ""
        return text[end - 1 : end] in _SENTENCE_END or "\n" in following

    def starts_word(index: int) -> bool:
        first_char = text[offsets[index][0] : offsets[index][0] + 1]
        return index == 0 or offsets[index][0] > offsets[index - 1][1] or first_char.isspace()

    spans = chunk_spans(len(offsets), chunk_tokens, overlap_tokens, ends_sentence, starts_word)
    return [text[offsets[start][0] : offsets[end - 1][1]].strip() for start, end in spans]


def split_ids(ids: Sequence[int], chunk_tokens: int, overlap_tokens: int, tokenizer: Any = None) -> list[list[int]]:
    """Token ids as chunks of at most `chunk_tokens` ids (sentence ends found by decoding, if a tokenizer is given)."""
    ids = list(ids)

    def ends_sentence(index: int) -> bool:
        if tokenizer is None:
            return False
        piece = tokenizer.decode([ids[index]])
        return piece.rstrip(" ").endswith(_SENTENCE_END)

    return [ids[start:end] for start, end in chunk_spans(len(ids), chunk_tokens, overlap_tokens, ends_sentence)]
