"""Two CPU processes under `accelerate launch` (DDP, gloo) train as one process with the same
effective batch: every optimizer step sees the same samples and uses their correctly averaged
gradient, the two replicas stay identical, and a resumed run repeats the uninterrupted one.

How the tolerances follow from the arithmetic (u = 2**-24, float32's unit roundoff;
gamma(n) = n u / (1 - n u) bounds the relative error of n chained float32 roundings):

- Both runs compute every sample's gradient g_s the same way: micro-batches of one sample, one
  thread, the loss normalised by the token count of the whole optimizer step (the Trainer counts
  tokens across processes), so the per-sample arithmetic is identical, operation for operation.
  (The loss that DDP scales by the number of processes, and its averaging, are exact powers of
  two.) They differ only in the order in which the four g_s of a step are added: the single
  process accumulates ((g1 + g2) + g3) + g4, DDP adds each rank's two and then the two ranks'
  sums. A float32 sum of the same numbers in any order of depth d is within gamma(d) * sum |g_s|
  of the exact sum, element by element. So the step's gradient is checked against the exact
  (float64) sum of the per-sample gradients, recomputed in this process at the parameters DDP
  had at that step, to gamma(2) * sum_s |g_s|: a bound from the reduction length alone (4
  terms, depth 2), whatever the CPU. A wrong average (a factor 2, per-process token counts,
  missing synchronisation) is off by a large fraction of |g|, far outside it.
- Parameters after several steps are not compared with the single process's: this tiny model's
  backward pass is ill-conditioned (saturated attention: a rounding-level change of the
  parameters moves the next gradient by far more), and Adam turns gradient differences into
  parameter differences of the same relative size, so two runs whose first gradients agree to
  1e-7 drift apart by ~10x per step; a tolerance there would only record what one CPU did. The
  check above, made at every step at DDP's own parameters, covers every update instead, and the
  single-process run shows that it takes the same samples at every step.
- DDP applies the same averaged gradient on both ranks, and resuming replays the same
  operations on the same inputs: both are compared for exact equality.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
DDP_CONFIG = REPO / "examples" / "accelerate" / "ddp.yaml"
UNIT_ROUNDOFF = 2.0**-24  # float32

WORKER = textwrap.dedent(
    """
    import json
    import sys

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    from shine_hf.data import build_qa_dataset
    from shine_hf.testing.models import tiny_shine
    from shine_hf.train import ShineTrainer, ShineTrainingArguments

    hf_logging.set_verbosity_error()


    def build():
        model = tiny_shine("qwen3", seed=0)
        records = [
            {"context": f"Person {i} lives in city {i * 7} and works as baker number {i}.",
             "question": f"Where does person {i} live?", "answer": f"city {i * 7}"}
            for i in range(12)
        ]
        return model, build_qa_dataset(Dataset.from_list(records), model.tokenizer)[0]


    class RecordingTrainer(ShineTrainer):
        \"\"\"Records each micro-batch's samples (their ids) and the step's token count.\"\"\"

        micro_batches = None

        def training_step(self, model, inputs, num_items_in_batch=None):
            rows = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
            self.micro_batches.append({"step": self.state.global_step, "rows": rows, "items": int(num_items_in_batch)})
            return super().training_step(model, inputs, num_items_in_batch)


    class RecordSteps(TrainerCallback):
        \"\"\"The parameters each update starts from and the gradient the optimizer applies.\"\"\"

        def __init__(self):
            self.steps = []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.steps.append({name: (p.detach().clone(), p.grad.detach().clone())
                               for name, p in model.hypernetwork.named_parameters()})


    def run(output_dir, per_device_batch, accumulation, resume=None):
        model, dataset = build()
        args = ShineTrainingArguments(
            output_dir=output_dir, learning_rate=1e-3, warmup_steps=0, max_grad_norm=0.0,
            gradient_accumulation_steps=accumulation, per_device_train_batch_size=per_device_batch, max_steps=4,
            logging_steps=1, save_steps=2, disable_tqdm=True, dataloader_pin_memory=False, seed=7,
        )
        steps = RecordSteps()
        trainer = RecordingTrainer(model, args, train_dataset=dataset, callbacks=[steps])
        trainer.micro_batches = []
        trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(output_dir)
        rank = trainer.args.process_index
        final = {name: t.detach().clone() for name, t in model.hypernetwork.state_dict().items()}
        torch.save({"steps": steps.steps, "final": final}, f"{output_dir}/tensors_rank{rank}.pt")
        with open(f"{output_dir}/record_rank{rank}.json", "w") as handle:
            json.dump({"world_size": trainer.args.world_size, "micro_batches": trainer.micro_batches,
                       "log": trainer.state.log_history}, handle)
        return trainer


    if __name__ == "__main__":
        run(sys.argv[1], 1, 2, resume=sys.argv[2] if len(sys.argv) > 2 else None)
    """
)


def gamma(n: int) -> float:
    """Bound on the relative error of n chained float32 roundings."""
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def _record(directory: Path, rank: int = 0) -> dict:
    return json.loads((directory / f"record_rank{rank}.json").read_text())


def _tensors(directory: Path, rank: int = 0) -> dict:
    return torch.load(directory / f"tensors_rank{rank}.pt", weights_only=True)


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}


def _samples_per_step(records: list[dict], index: dict[tuple[int, ...], int]) -> dict[int, Counter]:
    steps: dict[int, Counter] = {}
    for record in records:
        for micro_batch in record["micro_batches"]:
            steps.setdefault(micro_batch["step"], Counter()).update(index[tuple(r)] for r in micro_batch["rows"])
    return steps


def _per_sample_gradients(model, parameters, dataset, samples, items):
    """Each sample's gradient at `parameters`, the way a one-sample micro-batch computes it."""
    from shine_hf.data import ShineDataCollator

    model.hypernetwork.load_state_dict(parameters)
    model.train()
    collate = ShineDataCollator(model.tokenizer)
    gradients = []
    for sample in samples:
        model.zero_grad()
        loss = model(**collate([dataset[sample]]), num_items_in_batch=torch.tensor(items)).loss
        loss.backward()
        gradients.append({name: p.grad.detach().clone() for name, p in model.hypernetwork.named_parameters()})
    return gradients


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate launcher not installed next to this Python")
def test_two_processes_match_one_process_with_the_same_effective_batch(tmp_path, monkeypatch):
    worker_path = tmp_path / "shine_ddp_worker.py"
    worker_path.write_text(WORKER)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "MASTER_PORT": "29517"}
    launch = [accelerate, "launch", "--config_file", str(DDP_CONFIG), "--num_processes", "2",
              "--main_process_port", "29517", str(worker_path)]
    launched = subprocess.Popen([*launch, str(tmp_path / "ddp")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    # Meanwhile the single-process run with the same effective batch: 1 sample x 4 micro-batches.
    monkeypatch.syspath_prepend(str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import shine_ddp_worker as worker

        worker.run(str(tmp_path / "single"), 1, 4)
        output, _ = launched.communicate(timeout=240)
        assert launched.returncode == 0, output[-4000:]
        model, dataset = worker.build()
        initial = {name: t.clone() for name, t in model.hypernetwork.state_dict().items()}
        index = {tuple(ids): i for i, ids in enumerate(dataset["input_ids"])}
        ddp_records = [_record(tmp_path / "ddp", rank) for rank in (0, 1)]
        single_record = _record(tmp_path / "single")
        assert [r["world_size"] for r in ddp_records] == [2, 2] and single_record["world_size"] == 1

        # The same samples, and the same token count, at every optimizer step.
        ddp_samples = _samples_per_step(ddp_records, index)
        assert ddp_samples == _samples_per_step([single_record], index)
        assert sorted(ddp_samples) == [0, 1, 2, 3] and all(sum(c.values()) == 4 for c in ddp_samples.values())
        items = {b["step"]: b["items"] for r in [*ddp_records, single_record] for b in r["micro_batches"]}
        assert len(items) == 4 and all(
            b["items"] == items[b["step"]] for r in [*ddp_records, single_record] for b in r["micro_batches"])

        # Both replicas saw the same gradients and hold the same parameters.
        ddp = [_tensors(tmp_path / "ddp", rank) for rank in (0, 1)]
        for step_0, step_1 in zip(ddp[0]["steps"], ddp[1]["steps"], strict=True):
            assert all(torch.equal(step_0[n][k], step_1[n][k]) for n in step_0 for k in (0, 1))
        assert all(torch.equal(t, ddp[1]["final"][n]) for n, t in ddp[0]["final"].items())
        saved = _safetensors(tmp_path / "ddp" / "model.safetensors")
        assert all(torch.equal(saved[f"hypernetwork.{n}"], t) for n, t in ddp[0]["final"].items())

        # Every update used the exact average over the step's four samples, up to the order of
        # the float32 additions (module docstring).
        assert len(ddp[0]["steps"]) == 4
        for step, recorded in enumerate(ddp[0]["steps"]):
            parameters = {name: value for name, (value, _) in recorded.items()}
            samples = sorted(ddp_samples[step].elements())
            per_sample = _per_sample_gradients(model, parameters, dataset, samples, items[step])
            for name, (_, gradient) in recorded.items():
                terms = torch.stack([g[name].double() for g in per_sample])
                exact, magnitude = terms.sum(0), terms.abs().sum(0)
                error = (gradient.double() - exact).abs()
                assert (error <= gamma(2) * magnitude).all(), (step, name, (error / magnitude).max().item())
                assert exact.abs().max() > 0, (step, name)  # the bound is not vacuous
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("shine_ddp_worker", None)

    # The run trained: every hypernetwork tensor moved.
    assert all(not torch.equal(t, initial[n]) for n, t in ddp[0]["final"].items())

    # The logged loss of the first step (same parameters in both runs): the same per-sample sums,
    # added in another order: within gamma(3) of their sum for the single process, gamma(2) for DDP.
    first_loss = [next(h["loss"] for h in r["log"] if "loss" in h) for r in (ddp_records[0], single_record)]
    assert abs(first_loss[0] - first_loss[1]) <= (gamma(3) + gamma(2)) * first_loss[1]

    # Checkpoints written under DDP hold every rank's RNG state, and resuming with two processes
    # from checkpoint-2 repeats the uninterrupted run exactly (the same operations on the same inputs).
    checkpoint = tmp_path / "ddp" / "checkpoint-2"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    resumed = subprocess.run([*launch, str(tmp_path / "resumed"), str(checkpoint)], env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    losses = [{h["step"]: h["loss"] for h in _record(d)["log"] if "loss" in h} for d in (tmp_path / "ddp",
                                                                                         tmp_path / "resumed")]
    assert sorted(losses[0]) == [1, 2, 3, 4] and losses[1] == losses[0]
    resumed_final = _tensors(tmp_path / "resumed")["final"]
    assert all(torch.equal(resumed_final[n], t) for n, t in ddp[0]["final"].items())
