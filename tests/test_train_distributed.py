"""Two CPU processes under `accelerate launch` (DDP, gloo) train the same hypernetwork as one
process with twice the per-device batch.

Why they agree: with a sequential or seeded sampler, accelerate hands process k the batches
k, k+2, ... of the single-process order, so each optimizer step sees the same samples; the
Trainer counts the supervised tokens across processes (`average_tokens_across_devices`), so the
DDP-averaged gradient equals the single-process token mean. Float noise (different reduction
orders) is all that differs, so the settings keep training from amplifying it: AdamW with a large
epsilon (some gradients are zero in exact arithmetic, e.g. attention key biases, which softmax
ignores, and plain Adam turns their ~1e-9 noise into full-size steps) and a small learning rate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from shine_hf.testing.models import tiny_shine
from shine_hf.train import ShineTrainer

REPO = Path(__file__).resolve().parents[1]
DDP_CONFIG = REPO / "examples" / "accelerate" / "ddp.yaml"

WORKER = textwrap.dedent(
    """
    import json
    import sys

    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    from shine_hf.data import build_qa_dataset
    from shine_hf.testing.models import tiny_shine
    from shine_hf.train import ShineTrainer, build_training_arguments

    hf_logging.set_verbosity_error()


    def run(output_dir, per_device_batch, trainer_class=ShineTrainer, resume=None):
        model = tiny_shine("qwen3", seed=0)
        records = [
            {"context": f"Person {i} lives in city {i * 7} and works as baker number {i}.",
             "question": f"Where does person {i} live?", "answer": f"city {i * 7}"}
            for i in range(12)
        ]
        dataset = build_qa_dataset(Dataset.from_list(records), model.tokenizer)[0]
        args = build_training_arguments(
            output_dir, "ift", learning_rate=1e-3, warmup_steps=1, gradient_accumulation_steps=2,
            per_device_train_batch_size=per_device_batch, max_steps=4, logging_steps=1, save_steps=2,
            adam_epsilon=1e-3, disable_tqdm=True, dataloader_pin_memory=False, seed=7,
        )
        trainer = trainer_class(model, args, train_dataset=dataset)
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(output_dir)
        if trainer.is_world_process_zero():
            with open(f"{output_dir}/world.json", "w") as handle:
                json.dump({"world_size": trainer.args.world_size, "log": trainer.state.log_history}, handle)
        return trainer


    if __name__ == "__main__":
        run(sys.argv[1], int(sys.argv[2]), resume=sys.argv[3] if len(sys.argv) > 3 else None)
    """
)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate launcher not installed next to this Python")
def test_two_processes_match_one_process_with_the_doubled_batch(tmp_path, monkeypatch):
    worker = tmp_path / "shine_ddp_worker.py"
    worker.write_text(WORKER)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "MASTER_PORT": "29517"}
    launch = [accelerate, "launch", "--config_file", str(DDP_CONFIG), "--num_processes", "2",
              "--main_process_port", "29517", str(worker)]
    launched = subprocess.Popen([*launch, str(tmp_path / "ddp"), "1"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    # Meanwhile, the single-process reference run (per-device batch 2 = 2 processes x 1).
    monkeypatch.syspath_prepend(str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import shine_ddp_worker as reference

        single = reference.run(str(tmp_path / "single"), 2, ShineTrainer)
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("shine_ddp_worker", None)

    output, _ = launched.communicate(timeout=240)
    assert launched.returncode == 0, output[-4000:]

    ddp = json.loads((tmp_path / "ddp" / "world.json").read_text())
    assert ddp["world_size"] == 2 and single.args.world_size == 1
    ddp_losses = {h["step"]: h["loss"] for h in ddp["log"] if "loss" in h}
    single_losses = {h["step"]: h["loss"] for h in single.state.log_history if "loss" in h}
    assert sorted(ddp_losses) == sorted(single_losses) == [1, 2, 3, 4]
    for step, loss in single_losses.items():
        assert ddp_losses[step] == pytest.approx(loss, rel=1e-5), step

    ddp_weights = _tensors(tmp_path / "ddp" / "model.safetensors")
    single_weights = _tensors(tmp_path / "single" / "model.safetensors")
    assert ddp_weights.keys() == single_weights.keys()
    initial = tiny_shine("qwen3", seed=0).hypernetwork_state_dict()
    moved = max((tensor - initial[name]).abs().max().item() for name, tensor in single_weights.items())
    assert moved > 1e-3  # the weights moved 200 times further than the tolerance below
    for name, tensor in single_weights.items():
        difference = (ddp_weights[name] - tensor).abs().max().item()
        assert difference < 5e-6, (name, difference)

    # Checkpoints written under DDP hold every rank's RNG state, and resuming with two processes
    # from checkpoint-2 ends where the uninterrupted two-process run ended.
    checkpoint = tmp_path / "ddp" / "checkpoint-2"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    resumed = subprocess.run([*launch, str(tmp_path / "resumed"), "1", str(checkpoint)], env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    resumed_log = json.loads((tmp_path / "resumed" / "world.json").read_text())["log"]
    assert {h["step"]: h["loss"] for h in resumed_log if "loss" in h} == pytest.approx(ddp_losses, rel=1e-6)
    resumed_weights = _tensors(tmp_path / "resumed" / "model.safetensors")
    for name, tensor in ddp_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=0, atol=1e-6)
