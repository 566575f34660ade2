"""The summary of an evaluation as a rich table and a PNG bar chart (F1, seconds per question)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .results import write_atomic

__all__ = ["CONDITION_LABELS", "chunking_label", "plot_summary", "summary_table"]

CONDITION_LABELS = {"shine": "SHINE", "in_context": "in-context", "question_only": "question only", "sft": "SFT"}


def chunking_label(chunking: Mapping[str, Any]) -> str:
    """How the shine condition read long documents (the ``chunking`` setting of a run), e.g.
    ``SHINE reads documents over 40 tokens in chunks (overlap 8), routed: top-1 chunk per question``."""
    overlap = f" (overlap {chunking['overlap_tokens']})" if chunking["overlap_tokens"] else ""
    if chunking["compose"] == "route":
        k = chunking["top_k"]
        read = f"routed: top-{k} chunk{'s' if k > 1 else ''} per question{' (concat)' if k > 1 else ''}"
    else:
        read = f"composed by {chunking['compose']}"
    return f"SHINE reads documents over {chunking['chunk_tokens']} tokens in chunks{overlap}, {read}"


def _milliseconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    value = seconds * 1e3
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def summary_table(summary: Mapping[str, Mapping[str, Any]], title: str | None = None):
    """A ``rich.table.Table`` with one row per condition (fits 80 columns)."""
    from rich import box
    from rich.table import Table

    steps = ", ".join(f"{CONDITION_LABELS.get(c, c)} {s['prepare_step']}" for c, s in summary.items()
                      if s.get("prepare_step"))
    caption = (f"prep: the per-document step ({steps}); total: answering plus prep divided over the questions; "
               f"peak: memory above the loaded model (MiB)") if steps else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    table.add_column("condition", no_wrap=True)
    for header in ("n", "F1", "EM", "prep ms/doc", "answer ms/q", "total ms/q", "tok/q", "peak"):
        table.add_column(header, justify="right")
    for condition, s in summary.items():
        table.add_row(CONDITION_LABELS.get(condition, condition), str(s["n"]), f"{s['f1']:.3f}", f"{s['em']:.3f}",
                      _milliseconds(s["prepare_seconds_per_document"]),
                      _milliseconds(s["answer_seconds_per_question"]), _milliseconds(s["seconds_per_question"]),
                      f"{s['tokens_per_question']:.1f}",
                      f"{s['peak_memory_mb']:.1f}")
    return table


def plot_summary(summary: Mapping[str, Mapping[str, Any]], path: Path, title: str | None = None) -> None:
    """Write a PNG: F1 / EM per condition (left) and milliseconds per question (right, log scale:
    the total with the per-document step divided over the questions, and answering alone inside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(summary)
    labels = [CONDITION_LABELS.get(c, c) for c in conditions]
    x = range(len(conditions))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.38
    for offset, key, name, color in ((-width / 2, "f1", "F1", "#3b6ea8"), (width / 2, "em", "exact match", "#9cc0e6")):
        values = [summary[c][key] for c in conditions]
        bars = left.bar([i + offset for i in x], values, width, label=name, color=color)
        left.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8, padding=2)
    left.set_ylim(0, 1.15)
    left.set_ylabel("score (SQuAD v1.1 normalisation)")
    left.set_title("Answer quality")
    left.legend(loc="upper right", fontsize=8)
    # total per question (answering + the per-document step over its questions), answering inside it
    totals = [summary[c]["seconds_per_question"] * 1e3 for c in conditions]
    answering = [summary[c]["answer_seconds_per_question"] * 1e3 for c in conditions]
    bars = right.bar(list(x), totals, 0.7, color="#7a3f12", label="+ internalize / fine-tune, per question")
    right.bar_label(bars, labels=[f"{v:.3g} ms" for v in totals], fontsize=8, padding=2)
    inner = right.bar(list(x), answering, 0.4, color="#e0a36b", label="answering")
    right.bar_label(inner, labels=[f"{a:.3g}" if t > 1.05 * a else "" for a, t in zip(answering, totals)],
                    fontsize=8, label_type="center")
    right.set_yscale("log")
    right.margins(y=0.25)
    right.set_ylabel("milliseconds per question (log scale)")
    right.set_title("Cost")
    right.legend(loc="upper left", fontsize=8)
    for axis in (left, right):
        axis.set_xticks(list(x), labels)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_atomic(Path(path), buffer.getvalue())
