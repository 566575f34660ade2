"""Held-out synthetic-facts documents as text files, for the command tests on the shipped toy models
(`shine_hf.assets`): the toy SHINE model answers their questions right from their adapters."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from shine_hf.assets import FACTS_DATA, FACTS_SHINE


@functools.cache
def held_out(count: int) -> tuple[dict[str, Any], ...]:
    """The first `count` test-split records (context, questions, answers): entities never trained on."""
    from shine_hf.testing.facts import synthetic_facts

    return tuple(synthetic_facts(**FACTS_DATA)["test"].select(range(count)))


def write_documents(directory: Path, records: Any, suffix: str = ".txt") -> list[Path]:
    """Each record's context as `directory/doc<i><suffix>` (UTF-8)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, record in enumerate(records):
        path = directory / f"doc{index}{suffix}"
        path.write_text(record["context"], encoding="utf-8")
        paths.append(path)
    return paths


def long_document(records: Any) -> str:
    """Several records' contexts in one text, longer than the toy backbone can read at once."""
    return " ".join(record["context"] for record in records)


@functools.cache
def facts_model():
    """The shipped toy SHINE model (loaded once per test process)."""
    from shine_hf import ShineForCausalLM

    return ShineForCausalLM.from_pretrained(FACTS_SHINE)
