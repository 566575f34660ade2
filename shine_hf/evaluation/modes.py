"""Answer quality of SHINE against its baselines: SQuAD-style F1 / exact match in three modes.

- ``"shine"``: the question alone (no system prompt) with the LoRA generated from the document;
- ``"in_context"``: the document in the prompt (the user turn is ``context_template``, by default
  the reference's ``IN_CONTEXT_TEMPLATE``, as ``ShineForCausalLM.generate_text(context=...)``) with
  the baseline system prompt (``model.config.system_prompt``) — the upper bound;
- ``"question_only"``: the question with the baseline system prompt and no document — the floor.

Answers are decoded greedily and scored by ``shine_hf.evaluation.metrics`` (SQuAD v1.1 F1 / EM).
``shine_hf.evaluation.run_eval`` (``shine eval``) is the full evaluation: it adds the SFT baseline
and cost figures, internalizes each document once, and writes resumable results.

    from shine_hf.evaluation import evaluate_qa
    scores = evaluate_qa(model, dataset["test"])   # {"shine": {"f1": ..., "em": ..., "n": ...}, ...}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..modeling.prompting import IN_CONTEXT_TEMPLATE, in_context_question, question_prompt
from .generation import generate_batch
from .metrics import score_answers

__all__ = ["MODES", "evaluate_backbone", "evaluate_qa", "generate_answers", "qa_pairs", "with_other_contexts"]

MODES = ("shine", "in_context", "question_only")

def with_other_contexts(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The same records, each with the NEXT record's context (the last takes the first's): a
    control for SHINE, whose answers must then stop matching (they come from the adapter)."""
    rows = [dict(record) for record in records]
    if len(rows) < 2:
        raise ValueError("with_other_contexts needs at least two records.")
    contexts = [row["context"] for row in rows]
    return [{**row, "context": contexts[(i + 1) % len(rows)]} for i, row in enumerate(rows)]


def qa_pairs(records: Iterable[Mapping[str, Any]], limit: int | None = None) -> list[tuple[str, str, str]]:
    """Flatten QA records (``context`` + ``questions``/``answers`` or ``question``/``answer``) to
    ``(context, question, answer)`` triples; ``limit`` keeps the first ``limit`` records."""
    triples = []
    for index, record in enumerate(records):
        if limit is not None and index >= limit:
            break
        if record.get("questions") is not None:
            questions, answers = list(record["questions"]), list(record["answers"])
        else:
            questions, answers = [record["question"]], [record.get("answer", record.get("answers"))]
        triples += [(record["context"], q, a) for q, a in zip(questions, answers, strict=True)]
    return triples


def _user_turn(question: str, context: str | None, template: str) -> str:
    # Same layout as ShineForCausalLM.generate_text(context=..., context_template=...).
    return question if context is None else in_context_question(context, question, template)


def generate_answers(
    model: Any,
    questions: Sequence[str],
    *,
    contexts: Sequence[str] | None = None,
    system_prompt: str | None = None,
    tokenizer: Any = None,
    internalize: bool = False,
    context_template: str = IN_CONTEXT_TEMPLATE,
    max_new_tokens: int = 16,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers to ``questions``, in batches.

    Args:
        model: A ``ShineForCausalLM``, or a plain causal LM (then pass ``tokenizer``; no SHINE mode).
        questions: The questions.
        contexts: One document per question: put in the prompt, or (``internalize=True``) turned
            into the question's SHINE adapter.
        system_prompt: System prompt of the prompt (None: none).
        tokenizer: Tokenizer of a plain causal LM (default: ``model.tokenizer``).
        internalize: Answer with the LoRA generated from each row's context instead of putting the
            context in the prompt.
        context_template: User turn of the in-context prompt (``{context}``, ``{question}``).
    """
    if contexts is not None and len(contexts) != len(questions):
        raise ValueError(f"{len(contexts)} contexts for {len(questions)} questions.")
    is_shine = hasattr(model, "internalize")
    if internalize and (not is_shine or contexts is None):
        raise ValueError("internalize=True needs a ShineForCausalLM and contexts.")
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        batch_q = list(questions[start:start + batch_size])
        batch_c = None if contexts is None else list(contexts[start:start + batch_size])
        if is_shine:
            adapter = model.internalize(batch_c) if internalize else None
            extra = {} if internalize or batch_c is None else {"context_template": context_template}
            out = model.generate_text(batch_q, adapter=adapter, system_prompt=system_prompt,
                                      context=None if internalize else batch_c, max_new_tokens=max_new_tokens,
                                      **extra)
        else:
            tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
            if tok is None:
                raise ValueError("Pass the tokenizer of a plain causal LM.")
            prompts = [
                question_prompt(tok, _user_turn(q, None if batch_c is None else batch_c[i], context_template),
                                system_prompt)
                for i, q in enumerate(batch_q)
            ]
            out = generate_batch(model, tok, prompts, max_new_tokens=max_new_tokens,
                                 eos_token_id=tok.eos_token_id).texts
        answers += list(out)
    return answers


def evaluate_qa(
    model: Any,
    records: Iterable[Mapping[str, Any]],
    modes: Sequence[str] = MODES,
    *,
    tokenizer: Any = None,
    system_prompt: str | None = None,
    limit: int | None = None,
    context_template: str = IN_CONTEXT_TEMPLATE,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    return_predictions: bool = False,
) -> dict[str, dict[str, Any]]:
    """F1 / EM of ``model`` on QA records in each of ``modes`` (see the module docstring).

    Args:
        model: A ``ShineForCausalLM`` (any mode), or a plain causal LM with ``tokenizer``
            (``in_context`` and ``question_only`` only).
        records: QA records (``context``, ``questions``/``answers``, as ``shine_hf.data`` makes).
        modes: Subset of ``MODES``.
        system_prompt: Baselines' system prompt; default ``model.config.system_prompt`` (the
            SHINE default prompt for plain LMs). SHINE answers never use one.
        limit: Use only the first ``limit`` records.
        context_template: User turn of the in-context mode (default: the reference template).
        return_predictions: Add ``"predictions"`` (list of (question, answer, prediction)).

    Returns:
        ``{mode: {"f1", "em", "n"[, "predictions"]}}``.
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"Unknown mode(s) {unknown}; choose from {MODES}.")
    if system_prompt is None:
        from ..modeling.configuration_shine import DEFAULT_SYSTEM_PROMPT

        system_prompt = getattr(getattr(model, "config", None), "system_prompt", None) or DEFAULT_SYSTEM_PROMPT
    triples = qa_pairs(records, limit)
    contexts = [c for c, _, _ in triples]
    questions = [q for _, q, _ in triples]
    references = [a for _, _, a in triples]
    common = dict(tokenizer=tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size)
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    results: dict[str, dict[str, Any]] = {}
    try:
        for mode in modes:
            if mode == "shine":
                preds = generate_answers(model, questions, contexts=contexts, internalize=True, **common)
            elif mode == "in_context":
                preds = generate_answers(model, questions, contexts=contexts, system_prompt=system_prompt,
                                         context_template=context_template, **common)
            else:
                preds = generate_answers(model, questions, system_prompt=system_prompt, **common)
            results[mode] = score_answers(preds, references)
            if return_predictions:
                results[mode]["predictions"] = list(zip(questions, references, preds))
    finally:
        if was_training:
            model.train()
    return results


def evaluate_backbone(
    model: Any,
    tokenizer: Any,
    records: Iterable[Mapping[str, Any]],
    *,
    system_prompt: str | None = None,
    limit: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """In-context F1 / EM of a plain causal LM (the document-in-the-prompt baseline)."""
    return evaluate_qa(model, records, ("in_context",), tokenizer=tokenizer, system_prompt=system_prompt,
                       limit=limit, **kwargs)["in_context"]
