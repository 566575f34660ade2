"""Prompts and text: chat rendering shared by SHINE answers, the baselines and the training data,
and `TextGenerationMixin.generate_text` (questions in, answers out).

SHINE answers put the question in the user turn of the backbone's chat template, with no system
prompt and no think block (docs/method.md, "Answering"). Qwen3's own template *adds* an empty
`<think>\\n\\n</think>\\n\\n` block to the generation prompt when `enable_thinking=False`; the
reference code renders the prompt without it, so we strip it to reproduce the reference prompt
`<|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .errors import InvalidInputError
from .inputs import pad_token_ids

EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"

# The in-context baseline's user turn, as in the reference evaluation code.
IN_CONTEXT_TEMPLATE = "Reference:\n{context}\n\nBased on the reference, answer this question:\n{question}"


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, str]],
    add_generation_prompt: bool,
) -> str:
    """Render `messages` with the tokenizer's chat template, thinking disabled, think block removed.

    Falls back to a plain "role: content" layout when the tokenizer has no chat template (base
    models such as GPT-2), so every backbone gets a deterministic prompt.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=False,
        )
        if add_generation_prompt and text.endswith(EMPTY_THINK_BLOCK):
            text = text[: -len(EMPTY_THINK_BLOCK)]
        return text
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    if add_generation_prompt:
        lines.append("assistant:")
    return "\n".join(lines) + ("" if add_generation_prompt else "\n")


def question_prompt(tokenizer: Any, question: str, system_prompt: str | None = None) -> str:
    """The generation prompt for one question: user turn only unless a system prompt is given."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question})
    return render_chat(tokenizer, messages, add_generation_prompt=True)


def in_context_question(context: str, question: str, template: str = IN_CONTEXT_TEMPLATE) -> str:
    """The user turn of the in-context baseline: `template` with `{context}` and `{question}`."""
    return template.format(context=context, question=question)


def generation_pad_id(tokenizer: Any) -> int:
    """The id used to left-pad prompts: the tokenizer's pad token, else its eos token, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


class GeneratedText(NamedTuple):
    """New text for a batch of prompts: `texts` (decoded, special tokens skipped, stripped), the
    prompts' token ids, and the generated token ids (B, new tokens; padded after an early stop)."""

    texts: list[str]
    prompt_ids: list[list[int]]
    new_tokens: torch.Tensor


@torch.no_grad()
def generate_from_prompts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    adapter: Any = None,
    **generate_kwargs: Any,
) -> GeneratedText:
    """Greedy answers to rendered prompts, left-padded into one batch (no special tokens added: the
    chat template has them). `model` is a `ShineForCausalLM` (`adapter` applies) or any causal LM."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad_id = generation_pad_id(tokenizer)
    input_ids, attention_mask = pad_token_ids(ids, pad_id=pad_id, side="left")
    device = model.get_input_embeddings().weight.device
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("pad_token_id", pad_id)
    if adapter is not None:
        generate_kwargs["adapter"] = adapter
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                            max_new_tokens=max_new_tokens, **generate_kwargs)
    new_tokens = output[:, input_ids.shape[1]:].cpu()
    texts = [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return GeneratedText(texts, ids, new_tokens)


class TextGenerationMixin:
    """`generate_text`: questions as text in, answers as text out (for `ShineForCausalLM`)."""

    def generate_text(
        self,
        question: str | Sequence[str],
        adapter: Any = None,
        *,
        max_new_tokens: int = 64,
        system_prompt: str | None = None,
        context: str | Sequence[str] | None = None,
        context_template: str = IN_CONTEXT_TEMPLATE,
        adapter_index: Sequence[int] | None = None,
        **generate_kwargs: Any,
    ) -> str | list[str]:
        """Answer question(s) with greedy decoding; returns only the new text.

        The question is the user turn of the backbone's chat template (no system prompt, no think
        block) as the reference does for SHINE answers. `system_prompt` and `context` exist for the
        baselines: with `context`, the user turn is the reference's "Reference:\n{context}\n\nBased on
        the reference, answer this question:\n{question}" (`context_template` changes it).

        Args:
            question: One question or a list.
            adapter: A `ShineAdapter` holding one adapter (used for every question) or one per question,
                or a `shine_hf.routing.RoutedAdapter` (each question answered from the chunks it matches).
            adapter_index: For an adapter batch of another size than the questions: the adapter row
                each question uses (e.g. `[0, 0, 1, 1]` for two questions about each of two documents).
        """
        tokenizer = self._require_tokenizer()
        questions = [question] if isinstance(question, str) else list(question)
        if adapter is not None and hasattr(adapter, "adapters_for"):  # routed: each question picks its chunks
            if adapter_index is not None:
                raise InvalidInputError("adapter_index does not apply to a routed adapter: it picks the chunks of "
                                        "every question itself.")
            adapter = adapter.adapters_for(questions)
        if context is not None:
            contexts = [context] * len(questions) if isinstance(context, str) else list(context)
            questions = [in_context_question(c, q, context_template) for c, q in zip(contexts, questions, strict=True)]
        if adapter is not None and adapter_index is not None:
            adapter = type(adapter).stack([adapter[int(i)] for i in adapter_index])
        prompts = [question_prompt(tokenizer, q, system_prompt) for q in questions]
        texts = generate_from_prompts(self, tokenizer, prompts, max_new_tokens=max_new_tokens, adapter=adapter,
                                      **generate_kwargs).texts
        return texts[0] if isinstance(question, str) else texts
