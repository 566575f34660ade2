"""The results file of an evaluation: per-example predictions, per-batch costs, the summary.

The file is rewritten atomically (temporary file + rename) after every batch, so a crash leaves
the last complete state. Rerunning with the same settings and data resumes: batches already in
the file are skipped, and the summary is recomputed from everything in the file — the same
formula over the same per-example scores as an uninterrupted run.

Layout (JSON)::

    {"format": "shine-hf-eval/1", "complete": true,
     "settings": {...},      # what must match to resume (model, data, conditions, batch size, ...)
     "environment": [{...}], # device, versions, threads of each run (a resume appends one)
     "data": {"source", "layout", "examples", "documents", "skipped", "fingerprint"},
     "summary": {condition: {...}},            # see `summarize`
     "examples": [{"id", "document", "question", "answers",
                   "predictions": {condition: {"prediction", "f1", "em",
                                               "prompt_tokens", "generated_tokens"}}}],
     "batches": {condition: [{"index", "documents", "examples", "prepare_seconds",
                              "answer_seconds", "peak_memory_bytes", "document_tokens"[, "losses"]
                              [, "chunks"]}]}}   # losses: sft; chunks (per document): shine, chunked
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..modeling.errors import InvalidInputError

__all__ = ["RESULTS_FORMAT", "ResultsFile", "check_writable", "summarize", "write_atomic"]

RESULTS_FORMAT = "shine-hf-eval/1"

# Conditions with a per-document step before answering, and what that step is.
PREPARE_STEPS = {"shine": "internalize", "sft": "fine-tune"}


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename: never half a file."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # what open() would have given a new file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_writable(path: Path, what: str) -> None:
    """Raise InvalidInputError unless a file can be written (atomically) at ``path``."""
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"The {what} path {path} is a directory; give a file name.")
    parent = path.parent
    if not parent.is_dir():
        raise InvalidInputError(f"Cannot write the {what} {path}: the directory {parent} does not exist.")
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as error:
        raise InvalidInputError(f"Cannot write the {what} {path}: {error.strerror or error}.") from None
    os.close(handle)
    os.unlink(probe)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(results: Mapping[str, Any], conditions: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-condition figures from the examples and batches in ``results``.

    - ``n``, ``documents``: questions answered and distinct documents among them.
    - ``f1``, ``em``: mean SQuAD v1.1 F1 / exact match, in [0, 1].
    - ``prepare_seconds_per_document``: the per-document step (shine: internalize; sft: fine-tune),
      seconds per document; None for conditions without one.
    - ``answer_seconds_per_question``: generation only.
    - ``seconds_per_question``: (every per-document step + all answering) / n.
    - ``peak_memory_mb``: the largest peak memory increase of a batch over the memory in use when
      the batch started (MiB; see ``shine_hf.evaluation.costs``).
    - ``prompt_tokens_per_question``, ``generated_tokens_per_question``: read and decoded per
      question; ``document_tokens_per_question``: tokens of the per-document step divided over the
      questions (shine: document + memory tokens, read once per document; sft: document tokens
      times training steps); ``tokens_per_question``: their sum.
    - sft only: ``sft_first_loss`` / ``sft_last_loss``: mean training loss at the first and last step.
    - shine with ``chunk_tokens`` only: ``chunks_per_document``: contexts read per document (1 for a
      document read whole).
    """
    summary: dict[str, dict[str, Any]] = {}
    for condition in conditions:
        rows = [(e["document"], e["predictions"][condition]) for e in results["examples"]
                if condition in e["predictions"]]
        if not rows:
            continue
        batches = results["batches"].get(condition, [])
        n = len(rows)
        predictions = [p for _, p in rows]
        prepare = sum(b["prepare_seconds"] for b in batches)
        answer = sum(b["answer_seconds"] for b in batches)
        prepared_documents = sum(len(b["documents"]) for b in batches)
        prompt = sum(p["prompt_tokens"] for p in predictions) / n
        generated = sum(p["generated_tokens"] for p in predictions) / n
        document = sum(b["document_tokens"] for b in batches) / n
        entry: dict[str, Any] = {
            "n": n,
            "documents": len({d for d, _ in rows}),
            "f1": _mean([p["f1"] for p in predictions]),
            "em": _mean([p["em"] for p in predictions]),
            "prepare_step": PREPARE_STEPS.get(condition),
            "prepare_seconds_per_document": prepare / prepared_documents if condition in PREPARE_STEPS else None,
            "answer_seconds_per_question": answer / n,
            "seconds_per_question": (prepare + answer) / n,
            "peak_memory_mb": max(b["peak_memory_bytes"] for b in batches) / 2**20,
            "prompt_tokens_per_question": prompt,
            "generated_tokens_per_question": generated,
            "document_tokens_per_question": document,
            "tokens_per_question": prompt + generated + document,
        }
        if any("chunks" in b for b in batches):
            entry["chunks_per_document"] = sum(sum(b["chunks"]) for b in batches) / prepared_documents
        runs = [run for b in batches for run in b.get("losses", [])]
        if runs:
            entry["sft_first_loss"] = _mean([run[0] for run in runs])
            entry["sft_last_loss"] = _mean([run[-1] for run in runs])
        summary[condition] = entry
    return summary


class ResultsFile:
    """The state of one evaluation run, kept in (and resumed from) a JSON file.

    Args:
        path: The JSON file, or None to keep results in memory only.
        settings: What must match for a resume.
        environment: Informative facts of this run (device, versions); a resume appends them.
        data: The ``data`` block (source, layout, counts, fingerprint).
        examples: The example rows without predictions (``id``, ``document``, ``question``,
            ``answers``).
    """

    def __init__(self, path: Path | None, settings: dict[str, Any], environment: dict[str, Any],
                 data: dict[str, Any], examples: list[dict[str, Any]]):
        self.path = None if path is None else Path(path)
        self.content: dict[str, Any] = {
            "format": RESULTS_FORMAT, "complete": False, "settings": settings, "environment": [environment],
            "data": data, "summary": {}, "examples": examples, "batches": {},
        }
        self.resumed_examples = 0
        if self.path is not None and self.path.exists():
            self._resume(self._read())

    def _read(self) -> dict[str, Any]:
        try:
            content = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidInputError(f"{self.path} exists and is not a results file of shine eval ({error}); "
                                    f"remove it or choose another --output.") from None
        if not isinstance(content, dict) or content.get("format") != RESULTS_FORMAT:
            raise InvalidInputError(f"{self.path} exists and is not a results file of shine eval "
                                    f"(format {RESULTS_FORMAT}); remove it or choose another --output.")
        return content

    def _resume(self, old: dict[str, Any]) -> None:
        mine, theirs = self.content["settings"], old.get("settings", {})
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if old.get("data", {}).get("fingerprint") != self.content["data"]["fingerprint"]:
            differ.append("data (the examples differ)")
        if differ:
            raise InvalidInputError(f"{self.path} holds a run with other settings ({', '.join(differ)}); rerun "
                                    f"with the same command to resume it, or choose another --output.")
        for row, old_row in zip(self.content["examples"], old["examples"], strict=True):
            row["predictions"] = old_row.get("predictions", {})
        self.content["batches"] = old.get("batches", {})
        self.content["environment"] = [*old.get("environment", []), *self.content["environment"]]
        self.resumed_examples = sum(len(row["predictions"]) for row in self.content["examples"])

    @property
    def examples(self) -> list[dict[str, Any]]:
        return self.content["examples"]

    def done(self, condition: str) -> set[int]:
        """Indices of the batches of ``condition`` already in the file."""
        return {b["index"] for b in self.content["batches"].get(condition, [])}

    def answered(self, condition: str) -> int:
        return sum(condition in row["predictions"] for row in self.examples)

    def record(self, condition: str, batch: dict[str, Any], predictions: Mapping[int, dict[str, Any]]) -> None:
        """Add a finished batch and its predictions (example index -> prediction), then save."""
        for index, prediction in predictions.items():
            self.examples[index]["predictions"][condition] = prediction
        self.content["batches"].setdefault(condition, []).append(batch)
        self.save()

    def finish(self, conditions: Sequence[str]) -> dict[str, Any]:
        """Compute the summary, mark the run complete, save; returns the whole content."""
        self.content["summary"] = summarize(self.content, conditions)
        self.content["complete"] = True
        self.save()
        return self.content

    def save(self) -> None:
        if self.path is not None:
            text = json.dumps(self.content, indent=1, ensure_ascii=False) + "\n"
            write_atomic(self.path, text.encode("utf-8"))
