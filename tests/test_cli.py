"""The `shine convert` command."""

from __future__ import annotations

import subprocess
import sys

import pytest

# pytest puts tests/ on sys.path (rootdir-less test modules, prepend import mode)
from reference_impl import build_reference_checkpoint, save_reference_checkpoint
from typer.testing import CliRunner

from shine_hf import ShineForCausalLM
from shine_hf.cli import app
from shine_hf.testing import tiny_backbone

runner = CliRunner()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A saved tiny Qwen3 backbone, a hidden-64 one, a narrower-MLP one, and a reference checkpoint for the first."""
    root = tmp_path_factory.mktemp("cli")
    backbone = tiny_backbone("qwen3", seed=0)
    backbone.save_pretrained(root / "backbone")
    tiny_backbone("qwen3", seed=0, hidden_size=64).save_pretrained(root / "wide")
    tiny_backbone("qwen3", seed=0, intermediate_size=48).save_pretrained(root / "narrow")
    save_reference_checkpoint(build_reference_checkpoint(backbone, 2, 3, 2, seed=1), root / "reference")
    return root


def test_convert(paths, tmp_path):
    out = tmp_path / "shine"
    result = runner.invoke(app, ["convert", str(paths / "reference"), str(out), "--backbone",
                                 str(paths / "backbone"), "--lora-scale", "0.01", "--m2p-num-heads", "2"])
    assert result.exit_code == 0, result.output
    assert "Converted" in result.stdout and str(out) in result.stdout
    config = ShineForCausalLM.from_pretrained(out).config
    assert (config.lora_scale, config.m2p_num_heads, config.lora_rank, config.metalora_rank) == (0.01, 2, 2, 5)
    assert config.backbone_name_or_path == str(paths / "backbone")


def test_mismatched_backbone_is_one_clean_line(paths, tmp_path):
    result = runner.invoke(app, ["convert", str(paths / "reference"), str(tmp_path / "out"), "--backbone",
                                 str(paths / "wide")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "mem_tokens" in lines[0] and "(32, 32)" in lines[0] and "(32, 64)" in lines[0]
    assert not (tmp_path / "out").exists()


def test_bracketed_tensor_names_are_printed_verbatim(paths, tmp_path):
    """Rich must not read `[0]['mlp']` in a message as markup."""
    result = runner.invoke(app, ["convert", str(paths / "reference"), str(tmp_path / "out"), "--backbone",
                                 str(paths / "narrow")])
    assert result.exit_code == 1
    assert "metalora.pth[0]['mlp']['gate']['B'] has shape (1, 5, 64), the backbone needs (1, 5, 48)" in result.stderr


def test_missing_source(paths, tmp_path):
    result = runner.invoke(app, ["convert", str(tmp_path / "nowhere" / "x"), str(tmp_path / "out"), "--backbone",
                                 str(paths / "backbone")])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and "not a directory" in result.stderr
    assert "Traceback" not in result.output


def test_backbone_is_required(paths, tmp_path):
    result = runner.invoke(app, ["convert", str(paths / "reference"), str(tmp_path / "out")])
    assert result.exit_code != 0 and "--backbone" in result.output


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "shine_hf.cli", "convert", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--backbone", "--m2p-num-heads", "--lora-scale", "--revision"):
        assert option in result.stdout
