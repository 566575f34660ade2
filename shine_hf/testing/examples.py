"""The tiny mode of `examples/`: offline values for the notebooks' parameters and the scripts' `--tiny`.

Every notebook in `examples/` has one cell tagged "parameters" whose defaults are real Hub models.
`tiny_parameters(notebook, workdir)` gives the values that replace them for an offline run on the
CPU (what tests/test_notebooks.py injects, and what `examples/quickstart.py --tiny` and
`examples/released_checkpoint.py --tiny` use): the shipped toy models of `shine_hf.assets`
(`facts-shine` for the `facts-llama` backbone) and held-out synthetic-facts documents, the only kind
of document the toy models understand. Files a notebook reads (data, a reference-format
checkpoint) are written into `workdir`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..assets import FACTS_BACKBONE, FACTS_CONTEXT_TEMPLATE, FACTS_DATA, FACTS_SHINE

__all__ = ["FACTS_LORA_SCALE", "NOTEBOOKS", "facts_reference_checkpoint", "held_out_facts", "tiny_parameters"]

# Shared by the notebooks that load a trained SHINE model: the shipped toy, nothing to convert.
_TOY_MODEL = {
    "TINY": True,
    "SHINE_MODEL": str(FACTS_SHINE),
    "CONVERT_FROM": None,
    "BACKBONE": str(FACTS_BACKBONE),
    "DTYPE": "float32",
    "CONTEXT_TEMPLATE": FACTS_CONTEXT_TEMPLATE,
    "MAX_NEW_TOKENS": 8,
}
# The toy's conversion settings: not stored in reference files, so the converter must be told.
FACTS_LORA_SCALE = 0.01


def held_out_facts():
    """The test split of the synthetic facts the toy models were trained and measured with: documents
    about entities they never saw (a `datasets.Dataset` of context / questions / answers)."""
    from .facts import synthetic_facts

    return synthetic_facts(**FACTS_DATA)["test"]


def facts_reference_checkpoint(directory: str | os.PathLike) -> Path:
    """The shipped toy hypernetwork (`FACTS_SHINE`) written in the reference code's file layout, the
    layout of the paper's released checkpoints: an offline stand-in for `Yewei-Liu/SHINE-ift_mqa`.

    Convert it back with `convert_reference_checkpoint(directory, FACTS_BACKBONE, out,
    lora_scale=FACTS_LORA_SCALE)`."""
    from ..convert import export_reference_checkpoint
    from ..modeling import ShineForCausalLM

    return export_reference_checkpoint(ShineForCausalLM.from_pretrained(FACTS_SHINE), directory)


def _write_records(records, path: Path) -> str:
    records.to_json(str(path), lines=True)
    return str(path)


def _quickstart(workdir: Path) -> dict[str, Any]:
    record = held_out_facts()[0]
    return {**_TOY_MODEL, "DEVICE_MAP": None, "DOCUMENT": record["context"], "QUESTION": record["questions"][0],
            "ADAPTER_DIR": "my-first-shine-adapter", "PUSH_TO": "my-first-shine-adapter"}


def _train(workdir: Path) -> dict[str, Any]:
    from .facts import synthetic_facts

    facts = synthetic_facts(**FACTS_DATA)
    return {
        "TINY": True, "BACKBONE": str(FACTS_BACKBONE), "BACKBONE_DTYPE": "float32",
        "TRAIN_DATA": _write_records(facts["train"].select(range(2)), workdir / "facts-train.jsonl"),
        "TRAIN_SPLIT": "train", "TRAIN_EXAMPLES": 8,
        "EVAL_DATA": _write_records(facts["test"].select(range(2)), workdir / "facts-test.jsonl"),
        "EVAL_SPLIT": "test", "EVAL_EXAMPLES": 12,
        "LORA_RANK": 2, "METALORA_RANK": 4, "M2P_LAYERS": 2, "LORA_SCALE": FACTS_LORA_SCALE,
        "LEARNING_RATE": 3e-3, "MAX_STEPS": 8, "BATCH_SIZE": 4, "GRADIENT_ACCUMULATION": 1, "WARMUP_STEPS": 0,
        "LOGGING_STEPS": 1, "OUTPUT_DIR": "my-shine", "CONTEXT_TEMPLATE": FACTS_CONTEXT_TEMPLATE, "MAX_NEW_TOKENS": 8,
    }


def _evaluate(workdir: Path) -> dict[str, Any]:
    return {**_TOY_MODEL, "DEVICE": "cpu",
            "DATA": _write_records(held_out_facts().select(range(3)), workdir / "facts-test.jsonl"),
            "SPLIT": "test", "DATA_CONFIG": None, "LIMIT": None, "BATCH_SIZE": 8, "SFT_STEPS": 5,
            "OUTPUT": "results.json"}


def _long_documents(workdir: Path) -> dict[str, Any]:
    from datasets import Dataset

    # Two held-out documents joined: one document about two people, read in one chunk per person.
    records = held_out_facts().select(range(6))
    joined = [
        {"context": records[i]["context"] + " " + records[i + 1]["context"],
         "questions": records[i]["questions"] + records[i + 1]["questions"],
         "answers": records[i]["answers"] + records[i + 1]["answers"]}
        for i in range(0, len(records), 2)
    ]
    return {**_TOY_MODEL, "DEVICE_MAP": None,
            "DATA": _write_records(Dataset.from_list(joined), workdir / "facts-pairs.jsonl"),
            "SPLIT": "test", "DATA_CONFIG": None, "LIMIT": None, "CHUNK_TOKENS": 40}


def _released_checkpoint(workdir: Path) -> dict[str, Any]:
    record = held_out_facts()[0]
    return {
        "TINY": True,
        "RELEASED_HYPERNETWORK": str(facts_reference_checkpoint(workdir / "facts-reference-checkpoint")),
        "BACKBONE": str(FACTS_BACKBONE), "LORA_SCALE": FACTS_LORA_SCALE, "CONVERTED_DIR": "shine-converted",
        "DEVICE": "cpu", "COMPUTE_DTYPE": "float32", "DOCUMENT": record["context"],
        "QUESTIONS": list(record["questions"]), "MAX_NEW_TOKENS": 8,
    }


_BUILDERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "01_quickstart": _quickstart,
    "02_train_your_own": _train,
    "03_evaluate": _evaluate,
    "04_long_documents": _long_documents,
    "05_released_checkpoints": _released_checkpoint,
}
NOTEBOOKS = tuple(_BUILDERS)
"""The notebooks of `examples/` (file stems), in reading order."""


def tiny_parameters(notebook: str, workdir: str | os.PathLike) -> dict[str, Any]:
    """The tiny-mode values of `notebook`'s parameters cell (plain Python literals), writing the
    files they point to into `workdir` (created if needed). Relative output paths among them are
    relative to the directory the notebook runs in."""
    if notebook not in _BUILDERS:
        raise ValueError(f"Unknown notebook {notebook!r}; choose from {', '.join(NOTEBOOKS)}.")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return _BUILDERS[notebook](workdir)
