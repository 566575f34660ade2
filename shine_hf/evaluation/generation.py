"""Greedy answers to rendered prompts, with the token counts the cost figures need.

`ShineForCausalLM.generate_text` renders and answers in one call but returns only text; the
evaluation also needs, per question, how many prompt tokens the backbone read and how many tokens
it generated. `generate_batch` takes prompts already rendered by `shine_hf.modeling.prompting`
(the same functions `generate_text` uses), so its answers are `generate_text`'s answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..modeling.inputs import pad_token_ids
from ..modeling.prompting import generation_pad_id

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
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad_id = generation_pad_id(tokenizer)
    input_ids, attention_mask = pad_token_ids(ids, pad_id=pad_id, side="left")
    device = model.get_input_embeddings().weight.device
    extra: dict[str, Any] = {} if adapter is None else {"adapter": adapter}
    if eos_token_id is not None:
        extra["eos_token_id"] = eos_token_id
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                            do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id, **extra)
    new_tokens = output[:, input_ids.shape[1]:].cpu()
    texts = [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    eos_ids = {eos_token_id} if eos_token_id is not None else _eos_ids(model, tokenizer)
    return GeneratedAnswers(texts, [len(i) for i in ids], _generated_lengths(new_tokens, eos_ids))
