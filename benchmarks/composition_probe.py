#!/usr/bin/env python
"""Do composition-aware chunk adapters key their facts to their person? An overfitting probe.

Composition-aware training (`train(compose_chunks=K)`) on a few FIXED training documents of
`synthetic_facts(**FACTS_DATA)`, continuing a trained facts hypernetwork. The training groups
(1..K documents per sample, drawn once) are fitted until the loss is near zero. Every
`--eval-every` steps, the same documents are joined in OTHER groups of 4 (`long_documents`, seeded
orders), read one per chunk and composed with `concat`; their F1 is printed. Each chunk's LoRA depends only
on its own chunk, so if the adapters were keyed to their person, fitting the training groups would
carry over to any grouping of the same documents. If F1 on other groupings stays low while the
training loss falls, the hypernetwork fits each group as a whole (the chunk adapters cancel each
other in ways that work only with their training partners).

    python benchmarks/composition_probe.py --documents 8 --lr 2e-3 --cpu-minutes 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import composed_f1

from shine_hf import ShineForCausalLM
from shine_hf.assets import FACTS_BACKBONE, FACTS_DATA, FACTS_SHINE
from shine_hf.testing.facts import synthetic_facts
from shine_hf.train import train


class ProbeAndBudget(TrainerCallback):
    """Scores other groupings every `every` steps; stops after `cpu_minutes` of this process's CPU time."""

    def __init__(self, records, every: int, cpu_minutes: float, history: list) -> None:
        self.records, self.every, self.history = records, every, history
        self.last_loss: float | None = None  # the training loss last logged
        self.deadline = time.process_time() + cpu_minutes * 60

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = logs["loss"]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        stop = time.process_time() > self.deadline
        if state.global_step % self.every == 0 or stop:
            f1 = composed_f1(model, self.records, "concat")
            self.history.append({"step": state.global_step, "training_loss": self.last_loss,
                                 "other_groupings_f1": f1})
            print(f"[probe] step {state.global_step}: training loss {self.last_loss}, concat F1 on other "
                  f"groupings of the training documents {f1:.3f}", flush=True)
        control.should_training_stop = stop
        return control


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=8, help="fixed training documents (a multiple of 4)")
    parser.add_argument("--from", dest="from_checkpoint", default=str(FACTS_SHINE))
    parser.add_argument("--backbone", default=str(FACTS_BACKBONE))
    parser.add_argument("--compose-chunks", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--cpu-minutes", type=float, default=8.0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--output-dir", default="/tmp/composition-probe")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    records = synthetic_facts(**FACTS_DATA)["train"].select(range(args.documents))
    before = ShineForCausalLM.from_pretrained(args.from_checkpoint, backbone=args.backbone)
    history = [{"step": 0, "training_loss": None, "other_groupings_f1": composed_f1(before, records, "concat")}]
    print(f"[probe] before training: concat F1 on groupings of the documents {history[0]['other_groupings_f1']:.3f}")
    del before
    train(data=records, output_dir=args.output_dir, stage="ift", compose_chunks=args.compose_chunks,
          compose_method="concat", from_checkpoint=args.from_checkpoint,
          backbone=AutoModelForCausalLM.from_pretrained(args.backbone),
          tokenizer=AutoTokenizer.from_pretrained(args.backbone), learning_rate=args.lr, warmup_steps=50,
          max_warmup_fraction=0.1, per_device_train_batch_size=8, max_steps=100_000, logging_steps=10,
          save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, shuffle_qa=True,
          callbacks=[ProbeAndBudget(records, args.eval_every, args.cpu_minutes, history)])
    print(json.dumps({"args": vars(args), "history": history}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
