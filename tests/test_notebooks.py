"""examples/*.ipynb: every notebook runs headless (nbclient) in tiny mode, offline, without a cell error;
the committed files are stripped, built from scripts/build_notebooks.py, and badge their own Colab URL.

Tiny mode: the cell tagged "parameters" is replaced by `shine_hf.testing.examples.tiny_parameters`
(the shipped toy models, held-out synthetic-facts documents); every other cell runs as committed. A
last cell added here prints the values the assertions read, as JSON.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import sys
import time
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from shine_hf.testing.examples import NOTEBOOKS, held_out_facts, tiny_parameters

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CELL_TIMEOUT = 300  # seconds; every tiny-mode cell takes a few at most
PROBE_MARKER = "NOTEBOOK-PROBE:"


def _notebook(stem: str) -> nbformat.NotebookNode:
    return nbformat.read(EXAMPLES / f"{stem}.ipynb", as_version=4)


def _parameters_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{len(cells)} cells tagged 'parameters'"
    assert cells[0].cell_type == "code"
    return cells[0]


def offline_environment(workdir: Path) -> dict[str, str]:
    """The test process's environment, offline, with no Hub token and a Hub home of its own.

    One torch thread: the toy models gain nothing from more, and on a shared machine threads that spin
    while waiting for a busy core made one notebook 5x slower (65 s instead of 12 s)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    environment.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                       HF_HOME=str(workdir / "hf-home"), TOKENIZERS_PARALLELISM="false",
                       OMP_NUM_THREADS="1")
    return environment


def run_tiny(stem: str, workdir: Path, probe: dict[str, str]) -> tuple[dict, str]:
    """Execute `stem` in tiny mode in `workdir`; returns the probed values (expression name -> value)
    and the text the notebook's cells showed (printed, displayed or returned). A cell error fails the
    test with its traceback."""
    notebook = _notebook(stem)
    values = tiny_parameters(stem, workdir / "inputs")
    _parameters_cell(notebook).source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    fields = ", ".join(f"{name!r}: ({expression})" for name, expression in probe.items())
    notebook.cells.append(nbformat.v4.new_code_cell(
        f"import json as _json, sys as _sys\nprint({PROBE_MARKER!r} + _json.dumps({{{fields}}}, default=str))"))
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    start = time.perf_counter()
    client.execute(env=offline_environment(workdir))
    print(f"{stem}: {time.perf_counter() - start:.1f} s")
    printed = "\n".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                        for cell in notebook.cells[:-1] if cell.cell_type == "code" for output in cell.outputs)
    probe = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    return json.loads(probe.strip().removeprefix(PROBE_MARKER)), printed


# ------------------------------------------------------------------------------- running them
def test_quickstart_answers_from_the_adapter_and_round_trips_through_peft(tmp_path):
    record = held_out_facts()[0]
    probe = {"shine": "shine_answer", "in_context": "in_context_answer", "merged": "merged_answer",
             "difference": "max_logit_difference", "largest_logit": "shine_logits.abs().max().item()",
             "files": "adapter_files", "python": "_sys.executable"}
    values, printed = run_tiny("01_quickstart", tmp_path, probe)
    assert values["python"] == sys.executable  # the kernel runs this environment
    assert values["shine"] == record["answers"][0]  # the question alone + the held-out document's LoRA
    assert values["in_context"] == record["answers"][0]
    assert values["merged"] == values["shine"]  # merged into the backbone by PEFT: the same answer, no adapter
    # float32 (eps 1.2e-7), logits below 50 in magnitude (ulp <= 4e-6): live hooks and PEFT differ only in
    # summation order, a few ulps per op over 4 layers; 1e-4 leaves an order of magnitude of margin.
    assert values["largest_logit"] < 50
    assert values["difference"] < 1e-4
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(values["files"])
    assert (tmp_path / "my-first-shine-adapter" / "adapter_model.safetensors").is_file()
    assert "No Hugging Face token found: skipping the push" in printed


def test_training_notebook_lowers_the_loss_and_scores_three_conditions(tmp_path):
    probe = {"losses": "list(losses)", "summary": "results['summary']", "output_dir": "str(result.output_dir)"}
    values, printed = run_tiny("02_train_your_own", tmp_path, probe)
    losses = values["losses"]
    assert len(losses) == 8  # logged every step
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3
    assert list(values["summary"]) == ["shine", "in_context", "question_only"]
    assert values["summary"]["in_context"]["f1"] == 1.0  # the toy backbone reads held-out documents perfectly
    assert (tmp_path / values["output_dir"] / "model.safetensors").is_file()
    assert "loss" in printed


def test_evaluation_notebook_writes_the_table_chart_and_results_of_four_conditions(tmp_path):
    probe = {"summary": "results['summary']", "complete": "results['complete']", "chart": "str(chart)",
             "rows": "len(rows)"}
    values, printed = run_tiny("03_evaluate", tmp_path, probe)
    assert list(values["summary"]) == ["shine", "in_context", "question_only", "sft"]
    assert values["complete"] is True
    assert values["summary"]["shine"]["f1"] == 1.0  # the shipped toy hypernetwork, 18 held-out questions
    assert values["summary"]["shine"]["n"] == 18
    assert (tmp_path / values["chart"]).read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "results.json").read_text())["complete"] is True
    for label in ("SHINE", "in-context", "question only", "SFT"):
        assert label in printed
    assert values["rows"] == 8


def test_long_documents_notebook_reads_in_chunks_and_scores_compositions(tmp_path):
    probe = {"scores": "scores", "chunks": "len(pieces)", "gap": "gap", "rank": "adapter.rank"}
    values, printed = run_tiny("04_long_documents", tmp_path, probe)
    assert values["chunks"] == 2  # two people per document, one chunk each
    assert values["rank"] == 2 * 8  # concat: the chunks' ranks add up
    assert values["gap"] < 1e-6  # the same sum of deltas, composed in two places
    scores = values["scores"]
    assert set(scores) == {"SHINE, chunks concat", "SHINE, chunks mean", "SHINE, chunks routed",
                           "document in the prompt", "question alone"}
    assert all(0.0 <= s["f1"] <= 1.0 and s["n"] == 36 for s in scores.values())
    # each question routed to its person's chunk, answered by that chunk's adapter as on single documents
    assert scores["SHINE, chunks routed"]["f1"] == 1.0
    assert "SHINE: " in printed and "SHINE, both documents: " in printed and "SHINE, routed: " in printed


def test_released_checkpoint_notebook_converts_and_answers_with_a_4bit_backbone(tmp_path):
    pytest.importorskip("bitsandbytes", reason="the quantization extra (bitsandbytes) is not installed")
    record = held_out_facts()[0]
    probe = {"answers": "answers", "layer": "type(projection).__name__"}
    values, printed = run_tiny("05_released_checkpoints", tmp_path, probe)
    assert values["layer"] == "Linear4bit"
    assert values["answers"] == list(record["answers"])  # converted from the reference layout, NF4 backbone
    assert "merge refused, backbone unchanged" in printed
    assert (tmp_path / "shine-converted" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------- the committed files
def _build_script():
    spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "scripts" / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _repository() -> str:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["urls"]["Repository"].rstrip("/")


def test_the_notebooks_are_exactly_those_the_build_script_writes():
    assert sorted(p.stem for p in EXAMPLES.glob("*.ipynb")) == sorted(NOTEBOOKS)
    assert _build_script().main(["--check"]) == 0


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_committed_notebooks_carry_no_outputs_or_execution_counts(stem):
    raw = json.loads((EXAMPLES / f"{stem}.ipynb").read_text(encoding="utf-8"))
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
        assert set(cell["metadata"]) <= {"tags"}


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_the_colab_badge_opens_the_notebooks_own_file(stem):
    first = _notebook(stem).cells[0]
    links = re.findall(r"\(https://colab\.research\.google\.com/github/([^)]*)\)", first.source)
    repository = _repository().removeprefix("https://github.com/")
    assert links == [f"{repository}/blob/main/examples/{stem}.ipynb"]


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_one_parameters_cell_and_the_tiny_values_name_exactly_its_parameters(stem, tmp_path):
    notebook = _notebook(stem)
    cell = _parameters_cell(notebook)
    names = [target.id for node in ast.parse(cell.source).body for target in node.targets]
    assert sorted(names) == sorted(tiny_parameters(stem, tmp_path))
    assert notebook.cells.index(cell) < min(i for i, c in enumerate(notebook.cells) if "%pip" in c.source)


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_the_install_cell_installs_this_repository_unless_tiny(stem):
    installs = [c.source for c in _notebook(stem).cells if "%pip" in c.source]
    assert len(installs) == 1
    match = re.search(r'if not TINY:\n    %pip install --quiet "shine-hf(\[[a-z,]+\])? @ git\+(\S+)"$', installs[0])
    assert match and match.group(2) == _repository()


def test_the_examples_readme_badges_every_notebook_with_its_own_colab_url():
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\(https://colab\.research\.google\.com/github/([^)]*)\)", readme)
    repository = _repository().removeprefix("https://github.com/")
    assert links == [f"{repository}/blob/main/examples/{stem}.ipynb" for stem in NOTEBOOKS]
