"""The `shine_hf` package itself: cheap to import, public names resolved on use, Auto classes registered."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import version

import pytest

import shine_hf
from shine_hf.testing import tiny_backbone
from shine_hf.testing.models import tiny_shine


def _run_python(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_is_cheap_until_a_name_is_used():
    seen = _run_python("""
        import json, sys
        import shine_hf
        before = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        version = shine_hf.__version__
        after_version = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        shine_hf.ShineConfig
        print(json.dumps({"before": before, "after_version": after_version, "version": version,
                          "after_use": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
    """)
    assert seen == {"before": [], "after_version": [], "version": version("shine-hf"),
                    "after_use": ["torch", "transformers"]}


def test_public_names():
    assert set(shine_hf.__all__) <= set(dir(shine_hf))
    for name in shine_hf.__all__:
        assert getattr(shine_hf, name) is not None
    assert shine_hf.ShineAdapter.__module__ == "shine_hf.modeling.adapter"
    assert issubclass(shine_hf.CheckpointError, shine_hf.ShineError)
    with pytest.raises(AttributeError, match="no_such_name"):
        shine_hf.no_such_name  # noqa: B018


def test_auto_classes_load_a_checkpoint_after_importing_the_class(tmp_path):
    """`from shine_hf import ShineForCausalLM` registers "shine": AutoModelForCausalLM loads a saved
    checkpoint without trust_remote_code, and saving writes the full model card."""
    tiny_backbone("qwen3").save_pretrained(tmp_path / "backbone")
    model = tiny_shine("qwen3")
    model.config.backbone_name_or_path = str(tmp_path / "backbone")
    model.save_pretrained(tmp_path / "shine")
    loaded = _run_python(f"""
        import json
        from shine_hf import ShineForCausalLM
        from transformers import AutoConfig, AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "shine")!r})
        config = AutoConfig.from_pretrained({str(tmp_path / "shine")!r})
        model.save_pretrained({str(tmp_path / "again")!r})
        print(json.dumps({{"model": type(model) is ShineForCausalLM, "config": type(config).__name__,
                           "card": open({str(tmp_path / "again" / "README.md")!r}).read()}}))
    """)
    assert loaded["model"] and loaded["config"] == "ShineConfig"
    assert "library_name: transformers" in loaded["card"] and "- shine-hf\n" in loaded["card"]  # not the fallback
