"""Saves that replace an earlier checkpoint: killed at every step, they never leave a mixture."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from shine_hf import CheckpointError, ShineForCausalLM
from shine_hf.modeling.io_utils import atomic_directory
from shine_hf.testing.models import tiny_shine

# Saves the "new" model (seed 1, lora_scale 0.02, sharded) into TARGET and SIGKILLs itself at the
# KILL_AT-th file-system step touching TARGET (0: never). Prints the steps it took.
CHILD = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    import transformers.modeling_utils as modeling_utils
    import shine_hf.modeling.io_utils as io_utils
    from shine_hf.testing.models import tiny_shine

    target, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    model = tiny_shine("qwen3", seed=1, lora_scale=0.02)
    steps = []

    def counted(name, function):
        def step(*args, **kwargs):
            if any(target.name in str(arg) for arg in args):
                steps.append(name)
                if len(steps) == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return step

    os.rename, os.replace = counted("rename", os.rename), counted("replace", os.replace)
    os.remove = counted("remove", os.remove)
    shutil.rmtree = counted("rmtree", shutil.rmtree)
    io_utils._exchange = counted("exchange", io_utils._exchange)
    modeling_utils.safe_save_file = counted("write", modeling_utils.safe_save_file)
    model.save_pretrained(target, max_shard_size="20KB")
    print(",".join(steps))
""")


def _old_and_new():
    return tiny_shine("qwen3", seed=0, lora_scale=0.01), tiny_shine("qwen3", seed=1, lora_scale=0.02)


def _run_child(target: Path, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, str(target), str(kill_at)], capture_output=True,
                          text=True, timeout=300)


def _state(target: Path, old: ShineForCausalLM, new: ShineForCausalLM) -> str:
    """"old" or "new" when the directory loads as exactly one of them (weights AND config), else fail;
    "incomplete" when a save was cut off between its files (then loading refuses it clearly)."""
    if not (target / "config.json").exists():
        with pytest.raises(CheckpointError, match=r"no config\.json"):
            ShineForCausalLM.from_pretrained(target, backbone=old.backbone)
        return "incomplete"
    loaded = ShineForCausalLM.from_pretrained(target, backbone=old.backbone)
    state = loaded.hypernetwork.state_dict()
    for name, model in (("old", old), ("new", new)):
        expected = model.hypernetwork.state_dict()
        if all(torch.equal(state[k], expected[k]) for k in expected):
            assert loaded.config.lora_scale == model.config.lora_scale, f"{name} weights beside another config"
            return name
    raise AssertionError("the directory holds a mixture of two saves")


def _temporaries(target: Path) -> list[str]:
    return [p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]


@pytest.mark.parametrize("foreign_file", [False, True], ids=["checkpoint-only", "with-other-files"])
def test_a_save_killed_at_any_step_leaves_old_new_or_a_refused_incomplete_directory(tmp_path, foreign_file):
    old, new = _old_and_new()
    target = tmp_path / "ckpt"

    def prepare():
        old.save_pretrained(target)  # single file: the new save's shards must not sit beside it
        if foreign_file:
            (target / "notes.txt").write_text("mine")

    prepare()
    dry = _run_child(target, 0)
    assert dry.returncode == 0, dry.stderr[-2000:]
    steps = dry.stdout.strip().splitlines()[-1].split(",")
    assert _state(target, old, new) == "new"
    expected_kinds = {"write", "exchange"} if not foreign_file else {"write", "remove", "replace"}
    assert expected_kinds <= set(steps), steps
    # the first and the last step of every run of steps of one kind (shard writes into staging, removals,
    # file moves, the final marker move, the swap, the clean-up)
    kill_points = [i + 1 for i, kind in enumerate(steps)
                   if i == 0 or steps[i - 1] != kind or i == len(steps) - 1 or steps[i + 1] != kind]
    seen = set()
    for kill_at in kill_points:
        import shutil

        shutil.rmtree(target)
        prepare()
        killed = _run_child(target, kill_at)
        assert killed.returncode == -9, (kill_at, killed.stderr[-2000:])
        state = _state(target, old, new)
        seen.add(state)
        if not foreign_file:
            assert state in ("old", "new"), (kill_at, steps[kill_at - 1], state)
        # the next save cleans up after the killed one and leaves exactly the new checkpoint
        new.save_pretrained(target, max_shard_size="20KB")
        assert _state(target, old, new) == "new"
        assert not _temporaries(target), (kill_at, _temporaries(target))
        assert not (target / "model.safetensors").exists()
        assert (target / "notes.txt").exists() == foreign_file
    assert "old" in seen and "new" in seen
    if foreign_file:
        assert "incomplete" in seen


def test_resaving_with_other_sharding_leaves_only_the_new_files(tmp_path):
    old, new = _old_and_new()
    target = tmp_path / "ckpt"
    old.save_pretrained(target, max_shard_size="20KB")
    assert (target / "model.safetensors.index.json").exists()
    new.save_pretrained(target)
    assert not (target / "model.safetensors.index.json").exists()
    assert not list(target.glob("model-*-of-*.safetensors"))
    assert _state(target, old, new) == "new"
    old.save_pretrained(target, max_shard_size="20KB")  # and back: the single file must go
    assert not (target / "model.safetensors").exists()
    assert _state(target, old, new) == "old"


def test_resaving_into_a_directory_with_other_files_keeps_them(tmp_path):
    old, new = _old_and_new()
    target = tmp_path / "run"
    old.save_pretrained(target)
    (target / "checkpoint-10").mkdir()
    (target / "checkpoint-10" / "trainer_state.json").write_text("{}")
    (target / "notes.txt").write_text("mine")
    new.save_pretrained(target, max_shard_size="20KB")
    assert (target / "notes.txt").read_text() == "mine"
    assert (target / "checkpoint-10" / "trainer_state.json").exists()
    assert not (target / "model.safetensors").exists()
    assert _state(target, old, new) == "new"


def test_saved_directories_follow_the_umask(tmp_path):
    model = tiny_shine("qwen3")
    previous = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "ckpt")
        model.internalize("Some text.").save_pretrained(tmp_path / "adapter")
    finally:
        os.umask(previous)
    for directory in (tmp_path / "ckpt", tmp_path / "adapter"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, oct(directory.stat().st_mode)


def test_a_failed_body_leaves_the_earlier_directory_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target, owns=lambda name: True) as staging:
        (staging / "a.txt").write_text("new")
        raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "old"
    assert not _temporaries(target)


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".out.tmp-{dead_pid}-abc").mkdir()
    (tmp_path / f".out.old-{dead_pid}-def").mkdir()
    (tmp_path / f".out.tmp-{os.getppid()}-ghi").mkdir()  # a running process (pytest's parent)
    with atomic_directory(target) as staging:
        (staging / "x").write_text("x")
    assert sorted(_temporaries(target)) == [f".out.tmp-{os.getppid()}-ghi"]


def test_saving_onto_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        tiny_shine("qwen3").save_pretrained(tmp_path / "taken")
