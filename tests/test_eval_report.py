"""The summary table and the PNG chart of an evaluation."""

from __future__ import annotations

from rich.console import Console

from shine_hf.evaluation.report import plot_summary, summary_table


def summary_row(f1, prepare, answer, n=6):
    return {"n": n, "documents": 1, "f1": f1, "em": f1 / 2, "prepare_step": "internalize" if prepare else None,
            "prepare_seconds_per_document": prepare, "answer_seconds_per_question": answer,
            "seconds_per_question": answer + (prepare or 0) / n, "peak_memory_mb": 12.5,
            "tokens_per_question": 40.0}


SUMMARY = {"shine": summary_row(0.98, 0.02, 0.01), "in_context": summary_row(1.0, None, 0.02),
           "question_only": summary_row(0.1, None, 0.01), "sft": summary_row(0.6, 3.0, 0.01)}


def test_the_table_has_one_row_per_condition():
    console = Console(record=True, width=80)
    console.print(summary_table(SUMMARY, title="facts"))
    text = console.export_text()
    for label in ("SHINE", "in-context", "question only", "SFT"):
        assert label in text
    assert "SHINE internalize" in text  # the caption names each per-document step
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows["SHINE"][1:] == ["6", "0.980", "0.490", "20.0", "10.0", "13.3", "40.0", "12.5"]
    assert rows["in-context"][4] == "—"  # no per-document step


def test_the_chart_is_a_png_written_whole(tmp_path):
    path = tmp_path / "chart.png"
    plot_summary(SUMMARY, path, title="facts")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]
