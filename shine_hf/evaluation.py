"""Answer quality of SHINE against its baselines: SQuAD-style F1 / exact match in three modes.

- ``"shine"``: the question alone (no system prompt) with the LoRA generated from the document;
- ``"in_context"``: the document in the prompt (the user turn is ``context_template``, by default
  the reference's ``IN_CONTEXT_TEMPLATE``, as ``ShineForCausalLM.generate_text(context=...)``) with
  the baseline system prompt (``model.config.system_prompt``) — the upper bound;
- ``"question_only"``: the question with the baseline system prompt and no document — the floor.

Answers are decoded greedily. Scores follow the SQuAD evaluation script: lower-case, drop
punctuation and the articles a/an/the, collapse whitespace; F1 over the bag of tokens, best over
the references.

    from shine_hf.evaluation import evaluate_qa
    scores = evaluate_qa(model, dataset["test"])   # {"shine": {"f1": ..., "em": ..., "n": ...}, ...}
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from .modeling import pad_token_ids
from .modeling.prompting import IN_CONTEXT_TEMPLATE, in_context_question, question_prompt

__all__ = [
    "MODES",
    "evaluate_backbone",
    "evaluate_qa",
    "exact_match",
    "f1_by_question_type",
    "f1_score",
    "generate_answers",
    "normalize_answer",
    "qa_pairs",
    "score_answers",
    "with_other_contexts",
]

MODES = ("shine", "in_context", "question_only")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _references(reference: str | Sequence[str]) -> list[str]:
    refs = [reference] if isinstance(reference, str) else list(reference)
    if not refs:
        raise ValueError("An answer needs at least one reference.")
    return refs


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, reference: str | Sequence[str]) -> float:
    """Token-level F1 of the normalised answer, best over the reference(s)."""
    return max(_f1(prediction, r) for r in _references(reference))


def exact_match(prediction: str, reference: str | Sequence[str]) -> float:
    """1.0 when the normalised answer equals a normalised reference, else 0.0."""
    return float(any(normalize_answer(prediction) == normalize_answer(r) for r in _references(reference)))


def score_answers(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Mean F1 and exact match over paired predictions and references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    n = len(predictions)
    if n == 0:
        return {"f1": 0.0, "em": 0.0, "n": 0}
    f1 = sum(f1_score(p, r) for p, r in zip(predictions, references)) / n
    em = sum(exact_match(p, r) for p, r in zip(predictions, references)) / n
    return {"f1": f1, "em": em, "n": n}


def f1_by_question_type(
    predictions: Iterable[tuple[str, Any, str]], question_type: Callable[[str], str | None]
) -> dict[str, float]:
    """Mean F1 per question type of ``(question, reference, prediction)`` rows (what
    ``evaluate_qa(..., return_predictions=True)`` returns), sorted by type; questions whose type
    is None count as ``"other"``. E.g. ``question_type=shine_hf.data.fact_attribute``."""
    scores: dict[str, list[float]] = {}
    for question, reference, prediction in predictions:
        scores.setdefault(question_type(question) or "other", []).append(f1_score(prediction, reference))
    return {kind: sum(values) / len(values) for kind, values in sorted(scores.items())}


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


@torch.no_grad()
def _generate_plain(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, mask = pad_token_ids(ids, pad_id=pad_id or 0, side="left")
    width = input_ids.shape[1]
    device = model.get_input_embeddings().weight.device
    output = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
                            max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                            eos_token_id=tokenizer.eos_token_id)
    return [t.strip() for t in tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)]


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
            out = _generate_plain(model, tok, prompts, max_new_tokens)
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
        from .modeling.configuration_shine import DEFAULT_SYSTEM_PROMPT

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
