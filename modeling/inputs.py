"""Turning what users pass as contexts into checked (input_ids, attention_mask) tensors, and padding.

Accepted context forms (what transformers users pass everywhere):

- a string, or a list/tuple of strings (tokenized with a plain tokenizer call);
- token ids: a 1-D or 2-D integer tensor / NumPy array, a list of ids (one context) or a list of
  id lists (a batch), with an optional attention mask of the same shape (1 = token, 0 = padding,
  either side);
- the output of a tokenizer call: a `BatchEncoding` or any mapping with `input_ids` (and
  `attention_mask`), batched or not, tensors or lists.

Anything else raises `InvalidInputError` naming what was expected; a context without tokens raises
`EmptyContextError`, one longer than the backbone allows `ContextTooLongError`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import ContextTooLongError, EmptyContextError, InvalidInputError

EXPECTED_CONTEXT = (
    "a string, a list of strings, token ids (an integer tensor or a list of int lists) or a tokenizer "
    "output (a BatchEncoding / mapping with input_ids and attention_mask)"
)
# Keys of a tokenizer output that do not change what a decoder-only backbone reads.
_IGNORED_ENCODING_KEYS = frozenset({"token_type_ids", "special_tokens_mask", "offset_mapping", "length",
                                    "overflow_to_sample_mapping", "num_truncated_tokens"})


class _Ragged(Exception):
    """Internal: a batch of id lists of different lengths (padded by `context_tensors`)."""

    def __init__(self, rows: list[Sequence[int]]):
        super().__init__()
        self.rows = rows


def pad_token_ids(
    sequences: Sequence[Sequence[int]], pad_id: int = 0, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to one (B, N) LongTensor on `side`; returns (input_ids, attention_mask)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}.")
    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if not len(seq):
            continue
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def context_tensors(
    context: Any,
    attention_mask: Any = None,
    *,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    max_tokens: int | None = None,
    num_memory_tokens: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check and convert `context` (see the module docstring) to (input_ids, attention_mask) (B, N).

    Args:
        context: The context(s).
        attention_mask: Mask for token-id input (same shape as the ids).
        tokenizer: Used for string contexts.
        vocab_size: Ids must lie in [0, vocab_size).
        max_tokens: Longest allowed context (the backbone's positions minus the memory tokens).
        num_memory_tokens: Only for the message of `ContextTooLongError`.
    """
    if isinstance(context, Mapping):
        context, attention_mask = _from_encoding(context, attention_mask)
    if isinstance(context, str):
        context = [context]
    if isinstance(context, (list, tuple)) and context and all(isinstance(c, str) for c in context):
        if attention_mask is not None:
            raise InvalidInputError("attention_mask applies to token ids, not to string contexts.")
        input_ids, attention_mask = _tokenize(list(context), tokenizer)
    else:
        try:
            input_ids = _as_id_tensor(context)
        except _Ragged as ragged:  # id lists of different lengths: padded here, so the mask is ours
            if attention_mask is not None:
                raise InvalidInputError(
                    "attention_mask cannot be combined with id lists of different lengths: pad them first."
                ) from None
            input_ids, attention_mask = pad_token_ids(ragged.rows)
        attention_mask = _as_mask_tensor(attention_mask, input_ids)
    _check_ids(input_ids, attention_mask, vocab_size)
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)  # padding ids are never read, only embedded
    lengths = attention_mask.sum(dim=1)
    empty_rows = torch.nonzero(lengths == 0).flatten().tolist()
    if empty_rows:
        raise EmptyContextError(f"Context(s) {empty_rows} have no tokens: nothing to internalize.")
    longest = int(lengths.max())
    if max_tokens is not None and longest > max_tokens:
        raise ContextTooLongError(
            f"A context is {longest} tokens long; with {num_memory_tokens} memory tokens the backbone's "
            f"{max_tokens + num_memory_tokens} positions allow at most {max_tokens}. Split the document into "
            f"chunks of at most {max_tokens} tokens and internalize each."
        )
    return input_ids, attention_mask


def _from_encoding(encoding: Mapping[str, Any], attention_mask: Any) -> tuple[Any, Any]:
    if "input_ids" not in encoding:
        raise InvalidInputError(
            f"A mapping passed as context must hold input_ids (a tokenizer output); got keys {sorted(encoding)}."
        )
    unexpected = set(encoding) - {"input_ids", "attention_mask"} - _IGNORED_ENCODING_KEYS
    if unexpected:
        raise InvalidInputError(f"Unexpected key(s) {sorted(unexpected)} in the tokenizer output passed as context.")
    if attention_mask is not None and encoding.get("attention_mask") is not None:
        raise InvalidInputError("attention_mask was given twice: in the tokenizer output and as an argument.")
    mask = encoding.get("attention_mask", attention_mask)
    return encoding["input_ids"], mask


def _tokenize(texts: list[str], tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise EmptyContextError(f"Context(s) {empty} are empty or whitespace only: nothing to internalize.")
    if tokenizer is None:
        raise InvalidInputError(
            "String contexts need a tokenizer: pass token ids, or set model.tokenizer "
            "(or pass tokenizer= to from_backbone/from_pretrained)."
        )
    # verbose=False: transformers' "longer than the maximum ... indexing errors" warning is wrong here:
    # a context too long for the backbone is a ContextTooLongError, or is read in chunks
    return pad_token_ids([tokenizer(text, verbose=False)["input_ids"] for text in texts])


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_id_tensor(context: Any) -> torch.Tensor:
    if not isinstance(context, torch.Tensor) and type(context).__module__ == "numpy":
        context = torch.as_tensor(context)
    if isinstance(context, torch.Tensor):
        if context.dtype.is_floating_point or context.dtype.is_complex or context.dtype == torch.bool:
            raise InvalidInputError(f"Token ids must be integers, got a tensor of dtype {context.dtype}.")
        if context.dim() not in (1, 2):
            raise InvalidInputError(f"Token ids must be 1-D or 2-D (batch, tokens), got shape {tuple(context.shape)}.")
        if context.numel() == 0:
            raise EmptyContextError("The token-id tensor is empty: nothing to internalize.")
        return (context if context.dim() == 2 else context[None]).long()
    if isinstance(context, (list, tuple)):
        if not context:
            raise EmptyContextError("No context given: the list is empty.")
        if all(_is_int(c) for c in context):
            return torch.as_tensor([list(context)], dtype=torch.long)
        rows = []
        for index, row in enumerate(context):
            if isinstance(row, torch.Tensor) and row.dim() == 1 and not row.dtype.is_floating_point:
                row = row.tolist()
            if not isinstance(row, (list, tuple)) or not all(_is_int(v) for v in row):
                raise InvalidInputError(
                    f"Context {index} is {_describe(row)}; a list passed as context must hold only strings, only "
                    f"ints (one context's ids) or only int lists (a batch): expected {EXPECTED_CONTEXT}."
                )
            rows.append(row)
        if any(len(row) == 0 for row in rows):
            empty = [i for i, row in enumerate(rows) if len(row) == 0]
            raise EmptyContextError(f"Context(s) {empty} have no tokens: nothing to internalize.")
        if len({len(row) for row in rows}) > 1:
            raise _Ragged(rows)
        return torch.as_tensor(rows, dtype=torch.long)
    raise InvalidInputError(f"Cannot internalize {_describe(context)}: expected {EXPECTED_CONTEXT}.")


def _as_mask_tensor(attention_mask: Any, input_ids: torch.Tensor) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor):
        try:
            attention_mask = torch.as_tensor(attention_mask)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InvalidInputError(f"attention_mask must be a tensor or a list of 0/1 lists: {error}") from None
    if attention_mask.dim() == 1:
        attention_mask = attention_mask[None]
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise InvalidInputError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the token ids have shape "
            f"{tuple(input_ids.shape)}."
        )
    if not torch.all((attention_mask == 0) | (attention_mask == 1)):
        raise InvalidInputError("attention_mask must hold only 0 and 1.")
    return attention_mask.long()


def _check_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int | None) -> None:
    real = input_ids[attention_mask.bool()]
    if real.numel() and int(real.min()) < 0:
        raise InvalidInputError(f"Token ids must be >= 0, got {int(real.min())}.")
    if vocab_size is not None and real.numel() and int(real.max()) >= vocab_size:
        raise InvalidInputError(
            f"Token id {int(real.max())} is outside the backbone's vocabulary of {vocab_size} embeddings "
            f"(was the context tokenized with another tokenizer?)."
        )


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value})
        return f"a {type(value).__name__} of {', '.join(kinds)}"
    return f"a {type(value).__name__} ({value!r:.40})"


def default_batch_tokens(device: torch.device) -> int:
    """Tokens per reading pass of `internalize` when the model does not set `internalize_batch_tokens`:
    on CPUs a pass of ~2K tokens already keeps the cores busy and longer ones read no faster (short
    documents still share a pass; benchmarks/RESULTS.md), on accelerators batching is where the
    throughput comes from, so passes are long."""
    return 2048 if device.type == "cpu" else 65536


def length_buckets(lengths: Sequence[int], budget: int, overhead: int = 0) -> list[list[int]]:
    """Row indices grouped into batches of similar length: longest first, each batch holding at most
    `budget` tokens counted as rows x (longest length + `overhead`); a row longer than the budget is a
    batch of its own."""
    order = sorted(range(len(lengths)), key=lambda row: -lengths[row])
    buckets: list[list[int]] = []
    for row in order:
        if buckets and (len(buckets[-1]) + 1) * (lengths[buckets[-1][0]] + overhead) <= budget:
            buckets[-1].append(row)
        else:
            buckets.append([row])
    return buckets
