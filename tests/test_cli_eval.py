"""The `shine eval` command end to end on the shipped facts models (CliRunner and a real process
killed mid-way and resumed), long documents routed to their chunks, and its one-line user errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

# pytest puts tests/ on sys.path (rootdir-less test modules, prepend import mode)
from cli_checks import one_line_error
from typer.testing import CliRunner

from shine_hf.assets import FACTS_CONTEXT_TEMPLATE, FACTS_DATA, FACTS_SHINE
from shine_hf.cli import app
from shine_hf.testing.facts import synthetic_facts

runner = CliRunner()
MEASURED = {"prepare_seconds_per_document", "answer_seconds_per_question", "seconds_per_question", "peak_memory_mb"}
TEMPLATE_ARG = FACTS_CONTEXT_TEMPLATE.replace("\n", "\\n")  # as typed in a shell


def write_held_out(path, documents):
    """Held-out (test-split) facts documents as a JSONL file in the records layout."""
    rows = synthetic_facts(**FACTS_DATA)["test"].select(range(documents))
    path.write_text("".join(json.dumps({"context": r["context"], "questions": r["questions"],
                                        "answers": r["answers"]}) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_eval_reproduces_the_ordering_on_held_out_documents(tmp_path):
    data = write_held_out(tmp_path / "facts.jsonl", 3)
    output = tmp_path / "results.json"
    result = runner.invoke(app, ["eval", "--model", str(FACTS_SHINE), "--data", str(data), "--output", str(output),
                                 "--batch-size", "4", "--max-new-tokens", "8", "--context-template", TEMPLATE_ARG,
                                 "--sft-steps", "5", "--threads", "1"])
    assert result.exit_code == 0, result.output
    for label in ("SHINE", "in-context", "question only", "SFT", "18 questions about 3 documents"):
        assert label in result.stdout
    summary = json.loads(output.read_text())["summary"]
    # the shipped toys on held-out documents (RESULTS.md: 1.000 / 1.000 / 0.11 on 100 documents)
    assert summary["shine"]["f1"] >= 0.9 and summary["in_context"]["f1"] >= 0.9
    assert summary["question_only"]["f1"] <= 0.3
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--conditions", "shine,oracle"], "Unknown condition(s) 'oracle'"),
        (["--output", "{tmp}/missing/results.json"], "the directory {tmp}/missing does not exist"),
        (["--data", "{tmp}/bad.jsonl"], "has no field 'question'"),
        (["--data", "{tmp}/empty-context.jsonl"], "the context is empty"),
        (["--dtype", "float8"], "Unknown dtype 'float8'"),
        (["--model", "{tmp}/no-checkpoint"], "no-checkpoint"),
        (["--data", "{tmp}/long.jsonl"], "pass chunk_tokens / --chunk-tokens to read it in chunks"),
        (["--compose", "sum"], "'sum' is not one of 'concat', 'mean', 'route'"),
        (["--chunk-tokens", "0"], "Invalid value for '--chunk-tokens'"),
        (["--top-k", "0"], "Invalid value for '--top-k'"),
        (["--compose", "route"], "compose applies to documents read in chunks: pass chunk_tokens / --chunk-tokens"),
        (["--chunk-tokens", "8", "--overlap-tokens", "8"], "chunk_tokens (8) must be larger than overlap_tokens (8)"),
        (["--chunk-tokens", "40", "--top-k", "2"], "top_k=2 applies to routed chunks"),
        (["--chunk-tokens", "5000"], "chunk_tokens=5000 is beyond what the backbone can read"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(tmp_path, args, message):
    data = write_held_out(tmp_path / "facts.jsonl", 1)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"context": "doc", "answers": ["a"]}) + "\n")
    (tmp_path / "empty-context.jsonl").write_text(json.dumps({"context": "", "question": "q", "answers": ["a"]}))
    write_long(tmp_path / "long.jsonl", 10)  # 340 tokens: the toy backbone reads 328 with its memory tokens
    base = {"--model": str(FACTS_SHINE), "--data": str(data), "--output": str(tmp_path / "results.json")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value.format(tmp=tmp_path)
    result = runner.invoke(app, ["eval", *[x for pair in base.items() for x in pair]])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert message.format(tmp=tmp_path) in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "results.json").exists()


def write_long(path, parts, documents=1):
    """`documents` long documents, each `parts` held-out facts documents joined, with all their questions."""
    records = synthetic_facts(**FACTS_DATA)["test"].select(range(parts * documents))
    rows = [records.select(range(start, start + parts)) for start in range(0, parts * documents, parts)]
    path.write_text("".join(json.dumps({"context": " ".join(rows_["context"]),
                                        "questions": [q for qs in rows_["questions"] for q in qs],
                                        "answers": [a for answers in rows_["answers"] for a in answers]}) + "\n"
                            for rows_ in rows))
    return path


def test_eval_routes_the_questions_of_long_documents_to_their_chunks(tmp_path):
    data = write_long(tmp_path / "long.jsonl", 4, documents=2)
    output = tmp_path / "results.json"
    arguments = ["eval", "--model", str(FACTS_SHINE), "--data", str(data), "--output", str(output), "--conditions",
                 "shine,question_only", "--max-new-tokens", "8", "--threads", "1", "--chunk-tokens", "40"]
    result = runner.invoke(app, [*arguments, "--compose", "route"])
    assert result.exit_code == 0, result.output
    assert "48 questions about 2 documents; SHINE reads documents over 40 tokens in chunks, routed: top-1 chunk " \
           "per question" in " ".join(result.stdout.split())
    results = json.loads(output.read_text())
    assert results["settings"]["chunking"] == {"chunk_tokens": 40, "overlap_tokens": 0, "compose": "route",
                                               "top_k": 1}
    assert results["summary"]["shine"]["f1"] == 1.0 and results["summary"]["shine"]["chunks_per_document"] == 4
    assert results["summary"]["question_only"]["f1"] <= 0.3
    refused = runner.invoke(app, [*arguments, "--compose", "concat"])  # another reading of the same results file
    one_line_error(refused, f"{output} holds a run with other settings (chunking)")
    assert json.loads(output.read_text()) == results


def _command(data, output):
    return [sys.executable, "-m", "shine_hf.cli", "eval", "--model", str(FACTS_SHINE), "--data", str(data),
            "--output", str(output), "--conditions", "question_only,sft", "--sft-steps", "25", "--batch-size", "6",
            "--max-new-tokens", "8", "--threads", "1"]


def _unmeasured(summary):
    return {c: {k: v for k, v in s.items() if k not in MEASURED} for c, s in summary.items()}


def test_a_killed_process_resumes_with_the_same_command(tmp_path):
    data = write_held_out(tmp_path / "facts.jsonl", 4)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    output = tmp_path / "results.json"
    process = subprocess.Popen(_command(data, output), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_with = None
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        if output.exists():
            content = json.loads(output.read_text())
            if content["batches"].get("sft"):
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed_with = content
                break
        time.sleep(0.05)
    assert killed_with is not None, "the run ended before it could be killed mid-way"
    partial = json.loads(output.read_text())
    assert not partial["complete"] and 1 <= len(partial["batches"]["sft"]) < 4
    resumed = subprocess.run(_command(data, output), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "question_only: 24 of 24 examples already in" in resumed.stderr
    done = len(partial["batches"]["sft"])
    assert f"sft: {6 * done} of 24 examples already in" in resumed.stderr
    final = json.loads(output.read_text())
    assert final["complete"]
    # the killed run's batches (and their measurements) are kept, not redone
    assert final["batches"]["question_only"] == partial["batches"]["question_only"]
    assert final["batches"]["sft"][:done] == partial["batches"]["sft"]
    uninterrupted = tmp_path / "uninterrupted.json"  # the same command in this process, never interrupted
    threads = torch.get_num_threads()
    try:
        result = runner.invoke(app, _command(data, uninterrupted)[3:])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    expected = json.loads(uninterrupted.read_text())
    assert _unmeasured(final["summary"]) == _unmeasured(expected["summary"])
    assert [r["predictions"] for r in final["examples"]] == [r["predictions"] for r in expected["examples"]]


def test_the_compose_choices_are_run_evals():
    """eval's --compose choices are declared without importing the runner (it imports torch): the same values."""
    from shine_hf.cli.eval import EvalCompose
    from shine_hf.evaluation.runner import COMPOSE_MODES

    assert [choice.value for choice in EvalCompose] == list(COMPOSE_MODES)
