"""Answer scoring: SQuAD v1.1 normalisation, token F1 and exact match (the one home of the scorer).

Normalisation follows the official SQuAD v1.1 evaluation script: lower-case, drop punctuation,
drop the articles a/an/the, collapse whitespace. F1 is over the bag of normalised tokens; both
scores take the best over the gold answers. The `evaluate` metric module shipped with the package
(``shine_hf.evaluation.METRIC_PATH``) imports these functions, so both give the same numbers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["exact_match", "f1_by_question_type", "f1_score", "normalize_answer", "score_answers"]

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
    """Mean F1 and exact match over paired predictions and references (each one string or a list
    of gold answers): ``{"f1", "em", "n"}``, scores in [0, 1]."""
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
    is None count as ``"other"``. E.g. ``question_type=shine_hf.testing.facts.fact_attribute``."""
    scores: dict[str, list[float]] = {}
    for question, reference, prediction in predictions:
        scores.setdefault(question_type(question) or "other", []).append(f1_score(prediction, reference))
    return {kind: sum(values) / len(values) for kind, values in sorted(scores.items())}
