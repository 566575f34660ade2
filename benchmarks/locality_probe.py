#!/usr/bin/env python
"""Can a locality loss teach chunk adapters to key their facts to their person? A training probe.

Composition-aware training (`train(compose_chunks=K)`) levels off at the random-person score on
the facts toy: summed chunk adapters keep every person's facts but attach them to the wrong
names (`benchmarks/composition_probe.py`). Knowledge-editing methods add a *locality* term: an
edit must leave unrelated inputs alone. This probe trains a facts hypernetwork with

    loss = CE(answers | concat of the group's chunk adapters)
           + λ · KL(backbone ‖ backbone + chunk i's adapter alone) on the answers about the OTHER
             chunks of its group,

so each chunk's adapter is pushed to act only on questions about its own person, in a plain
PyTorch loop (groups of 4 training documents, AdamW, the backbone frozen), continuing the shipped
hypernetwork. Every `--eval-every` steps it prints the 4-chunk `concat` F1 on validation documents
(`benchmarks/long_documents.py`'s conditions) and the mean locality KL; at the end, the test F1 at
4 chunks (`concat`, `mean`) and of each test document alone (its own adapter, its own
questions). λ = 0 is the control: the same loop without the locality term.

    python benchmarks/locality_probe.py --weight 1.0 --cpu-minutes 20 --output /tmp/locality.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import composed_f1  # beside this script
from long_documents import long_documents, score, single_chunks

from shine_hf import ShineAdapter, ShineForCausalLM
from shine_hf.assets import FACTS_DATA, FACTS_SHINE
from shine_hf.data import IGNORE_INDEX, tokenize_conversation
from shine_hf.modeling.composition import compose_groups, select_rows
from shine_hf.modeling.inputs import pad_token_ids
from shine_hf.testing.facts import synthetic_facts


def padded(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def conversation(tokenizer, records: list[dict], rng: random.Random) -> tuple[list[int], list[int]]:
    """All questions of `records`, shuffled, as one tokenized conversation with answer-only labels."""
    pairs = [(q, a) for r in records for q, a in zip(r["questions"], r["answers"], strict=True)]
    rng.shuffle(pairs)
    tokenized = tokenize_conversation(tokenizer, [q for q, _ in pairs], [a for _, a in pairs])
    return tokenized.input_ids, tokenized.labels


def batch_inputs(tokenizer, conversations: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = padded([c[0] for c in conversations], pad)
    labels = padded([c[1] for c in conversations], IGNORE_INDEX)
    mask = padded([[1] * len(c[0]) for c in conversations], 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def step_losses(model: ShineForCausalLM, records: list[dict], groups: int, rng: random.Random):
    """(composed CE, locality KL) of one batch of `groups` groups of 4 training documents."""
    tokenizer = model.tokenizer
    chosen = [rng.sample(range(len(records)), 4) for _ in range(groups)]
    chunks = [records[i]["context"] for group in chosen for i in group]
    ids, mask = pad_token_ids([tokenizer(c, add_special_tokens=False)["input_ids"] for c in chunks],
                              tokenizer.pad_token_id or 0)
    lora = model.internalize(ids, mask, requires_grad=True).lora  # (4G, ...)
    adapter = lambda rows_lora: ShineAdapter(rows_lora, model.targets, model.layers_path)  # noqa: E731

    composed = compose_groups(lora, [list(range(4 * g, 4 * g + 4)) for g in range(groups)], "concat")
    inputs = batch_inputs(tokenizer, [conversation(tokenizer, [records[i] for i in group], rng) for group in chosen])
    ce = model(**inputs, adapter=adapter(composed)).loss

    # chunk k of group g alone, on the questions about the other 3 documents of its group
    others = [conversation(tokenizer, [records[j] for j in group if j != i], rng) for group in chosen for i in group]
    inputs = batch_inputs(tokenizer, others)
    labels = inputs.pop("labels")
    answer = (labels != IGNORE_INDEX)[:, 1:]  # positions whose next token is an answer token
    with torch.no_grad():
        base = model(**inputs).logits[:, :-1].log_softmax(-1)
    edited = model(**inputs, adapter=adapter(select_rows(lora, range(4 * groups)))).logits[:, :-1].log_softmax(-1)
    kl = F.kl_div(edited[answer], base[answer], log_target=True, reduction="batchmean")
    return ce, kl


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", default=str(FACTS_SHINE))
    parser.add_argument("--weight", type=float, default=1.0, help="λ of the locality term (0: the control)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--groups", type=int, default=4, help="groups of 4 documents per step")
    parser.add_argument("--cpu-minutes", type=float, default=20)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--val-docs", type=int, default=40)
    parser.add_argument("--test-docs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    model = ShineForCausalLM.from_pretrained(args.source)
    data = synthetic_facts(**FACTS_DATA)
    records = list(data["train"])
    validation = data["validation"].select(range(args.val_docs))
    optimizer = torch.optim.AdamW([p for p in model.hypernetwork.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=0.0)
    history = [{"step": 0, "val_concat_f1": composed_f1(model, validation, "concat")}]
    print(f"step 0: 4-chunk concat val F1 {history[0]['val_concat_f1']:.3f}", flush=True)
    deadline = time.process_time() + args.cpu_minutes * 60
    step, window = 0, []
    model.train()
    while time.process_time() < deadline:
        ce, kl = step_losses(model, records, args.groups, rng)
        loss = ce + args.weight * kl
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.hypernetwork.parameters(), 1.0)
        optimizer.step()
        step += 1
        window.append((ce.item(), kl.item()))
        if step % args.eval_every == 0:
            f1 = composed_f1(model, validation, "concat")
            ce_mean = sum(c for c, _ in window) / len(window)
            kl_mean = sum(k for _, k in window) / len(window)
            history.append({"step": step, "ce": ce_mean, "kl": kl_mean, "val_concat_f1": f1,
                            "cpu_minutes": round(time.process_time() / 60, 1)})
            print(f"step {step}: CE {ce_mean:.3f}, locality KL {kl_mean:.3f}, 4-chunk concat val F1 {f1:.3f}",
                  flush=True)
            window = []
    model.eval()
    test = data["test"].select(range(args.test_docs))
    with torch.no_grad():
        single = score(model, long_documents(test, 4, 1), single_chunks)["f1"]
    result = {"args": vars(args), "steps": step, "history": history,
              "test_concat_f1": composed_f1(model, test, "concat"), "test_mean_f1": composed_f1(model, test, "mean"),
              "test_single_f1": single}
    print(f"test, 4 chunks: concat {result['test_concat_f1']:.3f}, mean {result['test_mean_f1']:.3f}; each "
          f"document alone: {single:.3f}", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
