"""The `shine eval` command end to end on the shipped facts models (CliRunner and a real process
killed mid-way and resumed), and its one-line user errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
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
    ],
)
def test_user_errors_are_one_line_and_exit_1(tmp_path, args, message):
    data = write_held_out(tmp_path / "facts.jsonl", 1)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"context": "doc", "answers": ["a"]}) + "\n")
    (tmp_path / "empty-context.jsonl").write_text(json.dumps({"context": "", "question": "q", "answers": ["a"]}))
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
