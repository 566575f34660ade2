"""Evaluation of SHINE against its baselines: scores, costs, data loaders, reports.

- ``run_eval`` (the ``shine eval`` command): SHINE / in-context / question-only / SFT on QA data,
  with F1 / EM, seconds, peak memory and tokens per question, resumable JSON results, a table and
  a chart (``runner``, ``results``, ``report``, ``sft``, ``costs``).
- ``load_examples``: JSONL/JSON records and the Hub layouts of SQuAD, HotpotQA, MS MARCO and
  MuSiQue (``loaders``).
- ``f1_score``, ``exact_match``, ``score_answers``: the SQuAD v1.1 scorer (``metrics``), also
  shipped as an ``evaluate`` metric module: ``evaluate.load(METRIC_PATH)``.
- ``evaluate_qa``: the quick three-mode evaluation used during training (``modes``).

Guide: docs/evaluation.md.
"""

from pathlib import Path

from .loaders import LAYOUTS, EvalData, EvalExample, load_examples
from .metrics import exact_match, f1_by_question_type, f1_score, normalize_answer, score_answers
from .modes import MODES, evaluate_backbone, evaluate_qa, generate_answers, qa_pairs, with_other_contexts
from .runner import CONDITIONS, run_eval
from .sft import SftConfig

METRIC_PATH = Path(__file__).resolve().parent.parent / "metrics" / "shine_qa"
"""The ``evaluate`` metric module's folder: ``evaluate.load(str(METRIC_PATH))`` (works offline)."""

__all__ = [
    "CONDITIONS",
    "LAYOUTS",
    "METRIC_PATH",
    "MODES",
    "EvalData",
    "EvalExample",
    "SftConfig",
    "evaluate_backbone",
    "evaluate_qa",
    "exact_match",
    "f1_by_question_type",
    "f1_score",
    "generate_answers",
    "load_examples",
    "normalize_answer",
    "qa_pairs",
    "run_eval",
    "score_answers",
    "with_other_contexts",
]
