"""Greedy answers to rendered prompts, with the token counts the cost figures need.

`ShineForCausalLM.generate_text` renders and answers in one call but returns only text; the
evaluation also needs, per question, how many prompt tokens the backbone read and how many tokens
it generated. `generate_batch` takes prompts already rendered by `shine_hf.modeling.prompting` and
answers them with the same `generate_from_prompts` that `generate_text` uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..modeling.prompting import generate_from_prompts

__all__ = ["GeneratedAnswers", "generate_batch"]


@dataclass
class GeneratedAnswers:
    """Answers to a batch of prompts.

    Attributes:
        texts: The decoded new text of each row (special tokens skipped, stripped).
        prompt_tokens: Tokens of each row's prompt (padding excluded).
        generated_tokens: Tokens each row generated, up to and including its first end-of-sequence
            token (what the backbone really decoded for it; padding after it excluded).
    """

    texts: list[str]
    prompt_tokens: list[int]
    generated_tokens: list[int]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _generated_lengths(new_tokens: torch.Tensor, eos_ids: set[int]) -> list[int]:
    lengths = []
    for row in new_tokens.tolist():
        stop = next((i for i, token in enumerate(row) if token in eos_ids), None)
        lengths.append(len(row) if stop is None else stop + 1)
    return lengths


@torch.no_grad()
def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    adapter: Any = None,
    eos_token_id: int | None = None,
) -> GeneratedAnswers:
    """Greedy answers to ``prompts`` (left-padded into one batch).

    Args:
        model: A ``ShineForCausalLM`` or a plain causal LM (anything with ``generate``).
        tokenizer: Tokenizes the prompts (no special tokens added: the chat template has them).
        prompts: Fully rendered prompts (``shine_hf.modeling.prompting.question_prompt``).
        max_new_tokens: Generation budget per row.
        adapter: A ``ShineAdapter`` with one adapter, or one per prompt (SHINE models only).
        eos_token_id: Stop token overriding the model's generation config.
    """
    extra: dict[str, Any] = {} if eos_token_id is None else {"eos_token_id": eos_token_id}
    output = generate_from_prompts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, adapter=adapter,
                                   **extra)
    eos_ids = {eos_token_id} if eos_token_id is not None else _eos_ids(model, tokenizer)
    return GeneratedAnswers(output.texts, [len(i) for i in output.prompt_ids],
                            _generated_lengths(output.new_tokens, eos_ids))
