"""The plain-script twins of the notebooks (examples/quickstart.py, examples/released_checkpoint.py) run
offline with `--tiny`, and `shine_hf.testing.examples` gives each notebook its tiny-mode values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_notebooks import offline_environment

from shine_hf.testing.examples import NOTEBOOKS, held_out_facts, tiny_parameters

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_script(name: str, workdir: Path) -> str:
    """`python examples/<name> --tiny` in `workdir`, offline and without a Hub token; its output."""
    result = subprocess.run([sys.executable, str(EXAMPLES / name), "--tiny"], cwd=workdir, capture_output=True,
                            text=True, timeout=300, env=offline_environment(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_quickstart_script_answers_saves_round_trips_and_skips_the_push(tmp_path):
    record = held_out_facts()[0]
    out = run_script("quickstart.py", tmp_path)
    answer = record["answers"][0]
    assert f"  SHINE (question + adapter): {answer}\n" in out
    assert f"  document in the prompt:     {answer}\n" in out
    assert f"merged backbone, question alone: {answer}\n" in out
    difference = float(out.split("live adapter vs PeftModel: ")[1].split()[0])
    assert difference < 1e-4  # float32 logits of the toy through two summation orders of one rank-8 product
    assert (tmp_path / "my-first-shine-adapter" / "adapter_config.json").is_file()
    assert "No Hugging Face token found: skipping the push" in out


def test_released_checkpoint_script_converts_and_answers_with_a_4bit_backbone(tmp_path):
    pytest.importorskip("bitsandbytes", reason="the quantization extra (bitsandbytes) is not installed")
    record = held_out_facts()[0]
    out = run_script("released_checkpoint.py", tmp_path)
    assert "is a Linear4bit" in out
    for question, answer in zip(record["questions"], record["answers"], strict=True):
        assert f"Q: {question}\n   SHINE: {answer}\n" in out
    assert "merge refused, backbone unchanged" in out
    assert (tmp_path / "shine-converted" / "model.safetensors").is_file()


def test_tiny_parameters_are_python_literals_and_point_at_files_that_exist(tmp_path):
    for stem in NOTEBOOKS:
        values = tiny_parameters(stem, tmp_path / stem)
        assert values["TINY"] is True
        for name, value in values.items():
            assert eval(repr(value)) == value, name  # written into the notebook as source text
            if name in ("TRAIN_DATA", "EVAL_DATA", "DATA", "RELEASED_HYPERNETWORK", "SHINE_MODEL"):
                assert Path(value).exists(), (stem, name)


def test_an_unknown_notebook_is_named_in_the_error(tmp_path):
    with pytest.raises(ValueError, match=r"06_nothing.*01_quickstart"):
        tiny_parameters("06_nothing", tmp_path)
