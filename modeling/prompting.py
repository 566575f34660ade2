"""Prompt rendering shared by SHINE answers, the baselines and the training data.

SHINE answers put the question in the user turn of the backbone's chat template, with no system
prompt and no think block (DESIGN.md section 1, step 6). Qwen3's own template *adds* an empty
`<think>\\n\\n</think>\\n\\n` block to the generation prompt when `enable_thinking=False`; the
reference code renders the prompt without it, so we strip it to reproduce the reference prompt
`<|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n`.
"""

from __future__ import annotations

from typing import Any

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
