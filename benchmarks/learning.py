#!/usr/bin/env python
"""Does a SHINE hypernetwork learn to internalize? Train one on synthetic facts and compare.

Backbone: the shipped small Llama (``shine_hf.assets.FACTS_BACKBONE``, made by
``scripts/make_small_backbone.py``), frozen. Data: ``synthetic_facts(**FACTS_DATA)`` — the
hypernetwork trains on documents about TRAIN-split entities (the canonical documents plus, with
``--fresh-seeds``, new random facts about the same entities) and is scored on the TEST split,
whose entities it never saw. Printed at the end, on held-out documents:

- answer F1 / EM of (a) SHINE (question only + generated LoRA), (b) in-context (document in the
  prompt, baseline system prompt), (c) question only (system prompt, no document);
- (d) a control: SHINE with the adapter of ANOTHER test document (answers must then be wrong:
  they come from the generated LoRA, not from the question);
- F1 per attribute (birth date, city, ...) for every mode;
- (a)/(b) against training time (SHINE F1 on validation documents at checkpoints);
- a loss-curve PNG and the trained hypernetwork (``save_pretrained`` layout) in ``--output-dir``.

Training goes through ``shine_hf.train.train`` (``transformers.Trainer``), with an optional
reconstruction/completion pretraining stage first (``--pretrain-minutes``). A wall-clock budget
stops each stage (``--minutes``). ``--from`` continues a trained hypernetwork (fresh optimizer);
``--compose-chunks K --compose-method RULE`` trains composition-aware (``train(compose_chunks=...)``:
samples of 1..K documents whose LoRAs are composed inside the graph), and the checkpoints then also
score SHINE on validation documents of 4 joined documents, read in chunks and composed with RULE
(``benchmarks/long_documents.py``).

    python benchmarks/learning.py --minutes 30 --output-dir /tmp/shine-learning
    python benchmarks/learning.py --eval-only shine_hf/assets/facts-shine   # score a trained one
    python benchmarks/learning.py --from shine_hf/assets/facts-shine --compose-chunks 4 --compose-method mean \
        --minutes 15 --lr 3e-4 --output-dir /tmp/shine-compose              # composition-aware
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from datasets import Dataset, concatenate_datasets
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from shine_hf import ShineForCausalLM
from shine_hf.assets import FACTS_BACKBONE, FACTS_CONTEXT_TEMPLATE, FACTS_DATA
from shine_hf.data import TRAINING_COMPOSE_METHODS
from shine_hf.evaluation import evaluate_qa, f1_by_question_type, with_other_contexts
from shine_hf.testing.facts import fact_attribute, synthetic_facts, synthetic_facts_about
from shine_hf.train import train


class BudgetAndEval(TrainerCallback):
    """Stops at the wall-clock budget; every `every` steps scores SHINE on validation documents (and,
    with `compose`, on long validation documents read in chunks and composed with that rule)."""

    def __init__(self, minutes: float, every: int, records, label: str, history: list, offset_minutes: float,
                 compose: str | None = None, clock=time.time):
        self.clock = clock  # time.time (wall clock) or time.process_time (this process's CPU time)
        self.deadline = clock() + minutes * 60
        self.every, self.records, self.label, self.compose = every, records, label, compose
        self.history, self.offset = history, offset_minutes
        self.start = clock()
        self.eval_seconds = 0.0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0 and self.label == "ift":
            t = self.clock()
            scores = evaluate_qa(model, self.records, ("shine",))["shine"]
            row = {"stage": self.label, "step": state.global_step, "shine_f1": scores["f1"], "shine_em": scores["em"]}
            if self.compose:
                row[f"chunked_{self.compose}_4_f1"] = composed_f1(model, self.records, self.compose)
            self.eval_seconds += self.clock() - t
            minutes = self.offset + (self.clock() - self.start - self.eval_seconds) / 60
            self.history.append({**row, "train_minutes": round(minutes, 2)})
            composed = f", 4 chunks {self.compose} {row[f'chunked_{self.compose}_4_f1']:.3f}" if self.compose else ""
            print(f"[checkpoint] step {state.global_step} {minutes:.1f} train-min SHINE val F1 {scores['f1']:.3f}"
                  f"{composed}", flush=True)
        if self.clock() > self.deadline:
            control.should_training_stop = True
        return control


def composed_f1(model, records, rule: str) -> float:
    """SHINE F1 on `records` joined 4 at a time, read one document per chunk and composed with `rule`."""
    from long_documents import chunked, long_documents, score  # beside this script

    chunk_tokens = max(len(model.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in records["context"])
    was_training = model.training
    model.eval()
    try:
        return score(model, long_documents(records, 4, 1), chunked(rule, chunk_tokens))["f1"]
    finally:
        model.train(was_training)


def f1_by_attribute(predictions) -> dict[str, float]:
    """Mean F1 per synthetic-facts attribute (city, birth_date, ...), rounded to 3 digits."""
    return {kind: round(f1, 3) for kind, f1 in f1_by_question_type(predictions, fact_attribute).items()}


def loss_points(trainer, stage: str, offset_step: int = 0) -> list[dict]:
    return [{"stage": stage, "step": offset_step + h["step"], "loss": h["loss"]}
            for h in trainer.state.log_history if "loss" in h]


def plot(losses: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage in dict.fromkeys(p["stage"] for p in losses):
        pts = [p for p in losses if p["stage"] == stage]
        ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], label=stage)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_hypernetwork(args, records, validation, out: Path, history: list, losses: list, steps: dict):
    """Train on `records` (optionally RECON/COMP pretraining first); fills history, losses, steps."""
    backbone = AutoModelForCausalLM.from_pretrained(args.backbone)
    tokenizer = AutoTokenizer.from_pretrained(args.backbone)
    hyper = dict(lora_rank=args.lora_rank, metalora_rank=args.metalora_rank, m2p_num_layers=args.m2p_layers,
                 lora_scale=args.scale)
    print(f"train records {len(records)}, hypernetwork {args.from_checkpoint or hyper}", flush=True)
    common = dict(backbone=backbone, tokenizer=tokenizer, learning_rate=args.lr, warmup_steps=100,
                  max_warmup_fraction=0.1, gradient_accumulation_steps=1, per_device_train_batch_size=args.batch_size,
                  max_steps=100_000, logging_steps=10, save_strategy="no", report_to="none", seed=args.seed,
                  disable_tqdm=True, dataloader_num_workers=0)
    from_checkpoint = args.from_checkpoint
    pretrain_steps = 0
    clock = time.process_time if args.cpu_minutes else time.time
    if args.pretrain_minutes > 0:
        texts = Dataset.from_dict({"text": list(records["context"])})
        cb = BudgetAndEval(args.pretrain_minutes, 0, None, "pretrain", history, 0.0, clock=clock)
        result = train(data=texts, output_dir=str(out / "pretrain"), stage="pretrain", callbacks=[cb], **hyper,
                       **common)
        losses += loss_points(result.trainer, "pretrain (RECON/COMP)")
        pretrain_steps = result.trainer.state.global_step
        from_checkpoint = str(out / "pretrain")
        print(f"pretraining: {pretrain_steps} steps, final loss {losses[-1]['loss'] if losses else 'n/a'}", flush=True)
    compose = args.compose_method if args.compose_chunks > 1 else None
    cb = BudgetAndEval(args.minutes, args.eval_every, validation, "ift", history, args.pretrain_minutes, compose,
                       clock=clock)
    result = train(data=records, output_dir=str(out), stage="ift", shuffle_qa=not args.keep_qa_order,
                   compose_chunks=args.compose_chunks, compose_method=args.compose_method,
                   from_checkpoint=from_checkpoint, callbacks=[cb], **({} if from_checkpoint else hyper), **common)
    losses += loss_points(result.trainer, "instruction tuning (QA)", pretrain_steps)
    steps.update(ift=result.trainer.state.global_step, pretrain=pretrain_steps)
    return result.model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=str(FACTS_BACKBONE))
    parser.add_argument("--output-dir", default="/tmp/shine-learning")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget of instruction tuning")
    parser.add_argument("--pretrain-minutes", type=float, default=0.0, help="RECON/COMP stage first (0: none)")
    parser.add_argument("--cpu-minutes", action="store_true",
                        help="budgets and checkpoint times count this process's CPU time, not wall time (a shared "
                             "machine)")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--metalora-rank", type=int, default=16)
    parser.add_argument("--m2p-layers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=0.01, help="lora_scale s")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fresh-seeds", type=int, default=20, help="extra fact draws for the train entities")
    parser.add_argument("--eval-every", type=int, default=200, help="steps between SHINE validation checks")
    parser.add_argument("--val-docs", type=int, default=20)
    parser.add_argument("--test-docs", type=int, default=100)
    parser.add_argument("--context-template", default=FACTS_CONTEXT_TEMPLATE,
                        help="in-context user turn (default: the one the facts backbone was trained with)")
    parser.add_argument("--keep-qa-order", action="store_true",
                        help="train on each document's questions in their fixed order (default: shuffled, "
                             "see shine_hf.data.shuffle_qa_pairs)")
    parser.add_argument("--from", dest="from_checkpoint", default=None, metavar="CHECKPOINT",
                        help="continue this trained hypernetwork (fresh optimizer; its sizes, not --lora-rank etc.)")
    parser.add_argument("--compose-chunks", type=int, default=1,
                        help="composition-aware training: samples of 1..K documents as chunks (1: off)")
    parser.add_argument("--compose-method", default="concat", choices=TRAINING_COMPOSE_METHODS,
                        help="how --compose-chunks composes a sample's chunk LoRAs")
    parser.add_argument("--eval-only", default=None, metavar="CHECKPOINT",
                        help="no training: score this saved SHINE hypernetwork (e.g. shine_hf/assets/facts-shine)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="loss-curve PNG path (default: OUTPUT_DIR/loss.png)")
    args = parser.parse_args(argv)
    if args.from_checkpoint and args.pretrain_minutes:
        parser.error("--from continues a trained hypernetwork: it takes no --pretrain-minutes stage.")

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.time(), time.process_time()
    splits = synthetic_facts(**FACTS_DATA)
    validation = splits["validation"].select(range(min(args.val_docs, len(splits["validation"]))))
    test = splits["test"].select(range(min(args.test_docs, len(splits["test"]))))
    history: list[dict] = []
    losses: list[dict] = []
    steps = {"ift": 0, "pretrain": 0}
    if args.eval_only:
        model = ShineForCausalLM.from_pretrained(args.eval_only, backbone=args.backbone)
    else:
        train_entities = {e for row in splits["train"] for e in row["entities"]}
        records = splits["train"]
        if args.fresh_seeds:
            fresh = synthetic_facts_about(train_entities, range(1, 1 + args.fresh_seeds), **FACTS_DATA)
            records = concatenate_datasets([records, fresh])
        records = records.remove_columns("entities").shuffle(seed=args.seed)
        model = train_hypernetwork(args, records, validation, out, history, losses, steps)
    model.eval()
    train_minutes, train_cpu_minutes = (time.time() - start) / 60, (time.process_time() - cpu_start) / 60
    # final scores on held-out (test-split) documents
    t = time.time()
    final = evaluate_qa(model, test, return_predictions=True, context_template=args.context_template)
    reference_prompt = evaluate_qa(model, test, ("in_context",))["in_context"]  # the reference's template
    control = evaluate_qa(model, with_other_contexts(test), ("shine",))["shine"]
    chunked_4 = {rule: composed_f1(model, test, rule) for rule in ("concat", "mean")}
    eval_seconds = time.time() - t
    ic, qo = final["in_context"]["f1"], final["question_only"]["f1"]
    for row in history:
        row["shine_over_in_context"] = row["shine_f1"] / ic if ic else float("nan")
    summary = {
        "args": vars(args),
        "torch": torch.__version__,
        "ift_steps": steps["ift"],
        "pretrain_steps": steps["pretrain"],
        "wall_minutes_training": round(train_minutes, 2),
        "cpu_minutes_training": round(train_cpu_minutes, 2),
        "test_eval_seconds": round(eval_seconds, 1),
        "test": {m: {k: v for k, v in s.items() if k != "predictions"} for m, s in final.items()},
        "in_context_with_reference_template": reference_prompt,
        "control_shine_with_another_documents_adapter": control,
        "shine_4_documents_in_chunks_composed_f1": chunked_4,
        "shine_over_in_context": final["shine"]["f1"] / ic if ic else None,
        "shine_over_question_only": final["shine"]["f1"] / qo if qo else None,
        "f1_by_attribute": {mode: f1_by_attribute(s["predictions"]) for mode, s in final.items()},
        "history": history,
        "examples": final["shine"]["predictions"][:6],
    }
    (out / "learning_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "losses.json").write_text(json.dumps(losses) + "\n")
    if losses:
        c = model.config  # with --from, the sizes are the checkpoint's, not the command line's
        compose = ""
        if args.compose_chunks > 1:
            compose = f", composition-aware (K={args.compose_chunks}, {args.compose_method})"
        plot(losses, Path(args.plot) if args.plot else out / "loss.png",
             f"SHINE on facts-llama: r={c.lora_rank} R={c.metalora_rank} M2P={c.m2p_num_layers} s={c.lora_scale:g}"
             f"{compose}")
    print("\n| mode | F1 | EM | n |\n|---|---|---|---|")
    for mode, s in final.items():
        print(f"| {mode} | {s['f1']:.3f} | {s['em']:.3f} | {s['n']} |")
    print(f"| control: shine with another document's adapter | {control['f1']:.3f} | {control['em']:.3f} | "
          f"{control['n']} |")
    attributes = list(summary["f1_by_attribute"]["shine"])
    print("\n| F1 by attribute | " + " | ".join(attributes) + " |\n|---|" + "---|" * len(attributes))
    for mode, by_attribute in summary["f1_by_attribute"].items():
        print(f"| {mode} | " + " | ".join(f"{by_attribute.get(a, float('nan')):.3f}" for a in attributes) + " |")
    print("SHINE on 4 test documents joined, one per chunk, composed: "
          + ", ".join(f"{rule} F1 {f1:.3f}" for rule, f1 in chunked_4.items()))
    print(f"\nSHINE / in-context = {summary['shine_over_in_context']}; "
          f"SHINE / question-only = {summary['shine_over_question_only']}")
    print("\n| step | train minutes | SHINE val F1 | SHINE / in-context (test) |\n|---|---|---|---|")
    for row in history:
        ratio = row["shine_over_in_context"]
        print(f"| {row['step']} | {row['train_minutes']} | {row['shine_f1']:.3f} | {ratio:.2f} |")
    print("examples:", summary["examples"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
