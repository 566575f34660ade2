#!/usr/bin/env python
"""Long documents and many documents: chunked internalize with composed LoRAs, on the facts models.

Backbone and hypernetworks: the shipped `facts-llama` (512 positions; with 184 memory tokens one
read holds at most 328 context tokens) and SHINE hypernetworks for it, trained on ONE short facts
document (34 tokens, one invented person) at a time. A *long document* joins 4 or 16 held-out
documents of `synthetic_facts(**FACTS_DATA)`'s test split (different people), so its facts are
spread over every chunk and its questions ask about every chunk. Chunks are cut by
`internalize(chunk_tokens=...)` (default: the length of one facts document, so each chunk is one
document; the script checks that). F1 (SQuAD) is reported per chunk position for:

- `first chunk`: truncation to the first chunk (its adapter alone);
- `one read`: the first 328 tokens read in one pass, the most one read holds (at 4 chunks the
  whole document: reading it unchunked);
- `chunked <rule>` for each hypernetwork (`--hypernetwork NAME=PATH`, repeatable) and each
  composition rule (concat, mean): every chunk read, the chunk LoRAs composed into one adapter;
  `chunked <rule>, to_rank(r)`: that adapter re-factorised to the rank of one chunk's (truncated SVD);
- `in-context`: the backbone with the whole document in its prompt, where it still fits its
  positions (4 chunks; 16 do not fit);
- `routed top-1` / `routed top-2 <rule>` for each hypernetwork: the chunk adapters kept apart with
  their texts (`shine_hf.RoutedAdapter`); each question is answered from the adapter of its
  best-matching chunk (BM25 over words), or from its 2 best chunks' adapters composed with `rule`;
- `in-context, routed chunk`: the backbone with each question's best-matching chunk in its prompt
  (retrieval-augmented in-context: the baseline for routing);
- `single chunk`: each chunk internalized alone and asked its own questions: the ceiling.

Besides F1, each condition reports how often an answer is another part's answer to the same kind
of question (another person's city, ...): facts that were kept but attached to the wrong person.

Each long document is asked all its questions with the one adapter built from it. Documents are
drawn in `K // 4` seeded orders of the 100 test documents (so every position gets ~150
questions at both sizes). Then peak memory: in fresh processes, the peak resident set (Linux
VmHWM, reset after loading the model) of internalizing one chunk and a 16-chunk document.

Each hypernetwork runs on the backbone its config names (`--backbone` puts them all on one); the
in-context condition uses the first one's backbone.

    python benchmarks/long_documents.py --hypernetwork composed=/tmp/compose-mean \\
        --output benchmarks/long-documents.json --plot benchmarks/long-documents.png
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from shine_hf import RoutedAdapter, ShineAdapter, ShineForCausalLM
from shine_hf.assets import FACTS_CONTEXT_TEMPLATE, FACTS_DATA, FACTS_SHINE
from shine_hf.evaluation.metrics import f1_score
from shine_hf.modeling.chunking import split_text
from shine_hf.modeling.configuration_shine import DEFAULT_SYSTEM_PROMPT
from shine_hf.testing.facts import fact_attribute, synthetic_facts

RULES = ("concat", "mean")
MAX_NEW_TOKENS = 8  # the longest answer ("12 November 1974", "188 cm") is 3 tokens


def long_documents(records: Any, chunks: int, rounds: int, seed: int = 0) -> list[dict[str, Any]]:
    """Long documents of `chunks` facts documents each, from `rounds` seeded orders of `records`.

    Each: `parts` (the documents), `context` (joined by spaces), `questions`, `answers` and
    `positions` (the part each question is about)."""
    documents = []
    for round_ in range(rounds):
        order = list(range(len(records)))
        random.Random(f"{seed}/{chunks}/{round_}").shuffle(order)
        for start in range(0, len(order) - chunks + 1, chunks):
            parts = [records[i] for i in order[start : start + chunks]]
            documents.append({
                "parts": [p["context"] for p in parts],
                "context": " ".join(p["context"] for p in parts),
                "questions": [q for p in parts for q in p["questions"]],
                "answers": [a for p in parts for a in p["answers"]],
                "positions": [i for i, p in enumerate(parts) for _ in p["questions"]],
            })
    return documents


def answer(model: ShineForCausalLM, questions: Sequence[str], adapter: ShineAdapter | None = None,
           index: Sequence[int] | None = None, **kwargs: Any) -> list[str]:
    """Greedy answers; `index` maps each question to a row of `adapter`."""
    return model.generate_text(list(questions), adapter=adapter, adapter_index=index, max_new_tokens=MAX_NEW_TOKENS,
                               **kwargs)


def chunked(rule: str, chunk_tokens: int, rank: int | None = None) -> Callable[[ShineForCausalLM, dict[str, Any]],
                                                                               list[str]]:
    """Read the document in chunks, compose with `rule` (and re-factorise to `rank`), answer every question."""
    def run(model, document):
        adapter = model.internalize(document["context"], chunk_tokens=chunk_tokens, compose=rule,
                                    show_progress=False)
        return answer(model, document["questions"], adapter if rank is None else adapter.to_rank(rank))
    return run


def routed(top_k: int, rule: str, chunk_tokens: int) -> Callable[[ShineForCausalLM, dict[str, Any]], list[str]]:
    """Read the document in chunks and keep them apart (`RoutedAdapter`): each question is answered
    from its `top_k` best-matching chunks (BM25), their adapters composed with `rule`."""
    def run(model, document):
        router = RoutedAdapter.from_document(model, document["context"], chunk_tokens=chunk_tokens, top_k=top_k,
                                             method=rule, show_progress=False)
        return answer(model, document["questions"], router)
    return run


def routed_in_context(chunk_tokens: int) -> Callable[[ShineForCausalLM, dict[str, Any]], list[str]]:
    """Retrieval-augmented in-context baseline: the backbone with each question's best-matching chunk
    (the one the router picks) in its prompt."""
    def run(model, document):
        chunks = split_text(document["context"], model.tokenizer, chunk_tokens, 0)
        router = RoutedAdapter(model.internalize(chunks), chunks)  # the adapters are not used here
        contexts = [" ".join(chunks[i] for i in router.route(q)) for q in document["questions"]]
        system_prompt = model.config.system_prompt or DEFAULT_SYSTEM_PROMPT
        return answer(model, document["questions"], context=contexts, context_template=FACTS_CONTEXT_TEMPLATE,
                      system_prompt=system_prompt)
    return run


def routing_accuracy(model: ShineForCausalLM, documents: list[dict[str, Any]], chunk_tokens: int) -> float:
    """Share of questions whose best-matching chunk (top-1 route) is the chunk they are about."""
    hits = total = 0
    for document in documents:
        chunks = split_text(document["context"], model.tokenizer, chunk_tokens, 0)
        router = RoutedAdapter(model.internalize(chunks), chunks)
        hits += sum(router.route(q) == [p] for q, p in zip(document["questions"], document["positions"], strict=True))
        total += len(document["questions"])
    return hits / total


def first_chunk(model, document):
    return answer(model, document["questions"], model.internalize(document["parts"][0]))


def one_read(model, document):
    ids = model.tokenizer(document["context"], add_special_tokens=False)["input_ids"]
    return answer(model, document["questions"], model.internalize([ids[: model.max_context_tokens]]))


def single_chunks(model, document):
    """Every part internalized alone (one batch), each question asked with its own part's adapter."""
    return answer(model, document["questions"], model.internalize(document["parts"]), index=document["positions"])


def in_context(model, document):
    system_prompt = model.config.system_prompt or DEFAULT_SYSTEM_PROMPT
    return answer(model, document["questions"], context=document["context"], context_template=FACTS_CONTEXT_TEMPLATE,
                  system_prompt=system_prompt)


def fits_in_context(model: ShineForCausalLM, document: dict[str, Any]) -> bool:
    """Whether the in-context prompt of the document's longest question fits the backbone's positions."""
    question = max(document["questions"], key=len)
    prompt = model.tokenizer.apply_chat_template(
        [{"role": "system", "content": model.config.system_prompt or DEFAULT_SYSTEM_PROMPT},
         {"role": "user", "content": FACTS_CONTEXT_TEMPLATE.format(context=document["context"], question=question)}],
        tokenize=False, add_generation_prompt=True)
    length = len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + MAX_NEW_TOKENS
    return length <= model.backbone.config.max_position_embeddings


def other_chunks_answers(document: dict[str, Any]) -> list[set[str]]:
    """Per question: the answers to the same kind of question (city, height, ...) about the OTHER parts."""
    kinds = [fact_attribute(q) for q in document["questions"]]
    return [{a for a, k, p in zip(document["answers"], kinds, document["positions"], strict=True)
             if k == kind and p != position}
            for kind, position in zip(kinds, document["positions"], strict=True)]


def score(model: ShineForCausalLM, documents: list[dict[str, Any]], method) -> dict[str, Any]:
    """F1 per chunk position and overall of `method(model, document) -> answers` on `documents`, and the
    share of answers that are another part's answer to the same kind of question (facts mixed up)."""
    by_position: dict[int, list[float]] = {}
    mixed_up = 0
    start = time.perf_counter()
    with torch.no_grad():
        for document in documents:
            predictions = method(model, document)
            for prediction, reference, position, others in zip(
                    predictions, document["answers"], document["positions"], other_chunks_answers(document),
                    strict=True):
                by_position.setdefault(position, []).append(f1_score(prediction, reference))
                mixed_up += prediction.strip() != reference and prediction.strip() in others
    per_position = [statistics.fmean(by_position[p]) for p in sorted(by_position)]
    every = [f for values in by_position.values() for f in values]
    return {"f1": statistics.fmean(every), "per_position": per_position, "n": len(every),
            "other_chunks_answer": mixed_up / len(every), "seconds": round(time.perf_counter() - start, 1)}


def check_chunks(model: ShineForCausalLM, documents: list[dict[str, Any]], chunk_tokens: int) -> bool:
    """Whether chunking every document gives exactly its parts (one facts document per chunk)."""
    return all(split_text(d["context"], model.tokenizer, chunk_tokens, 0) == d["parts"] for d in documents)


# ---------------------------------------------------------------------------------------------
# Peak memory (fresh process per measurement)

_MEMORY_CHILD = """
import gc, json, sys, torch
torch.set_num_threads({threads})
sys.path.insert(0, {here!r})
from long_documents import long_documents
from shine_hf import ShineForCausalLM
from shine_hf.assets import FACTS_DATA
from shine_hf.testing.facts import fact_attribute, synthetic_facts
model = ShineForCausalLM.from_pretrained({hypernetwork!r}).eval()
document = long_documents(synthetic_facts(**FACTS_DATA)["test"], {chunks}, 1)[0]
gc.collect()

def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field))

with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak resident set size (VmHWM) to the current one
loaded = status("VmRSS:")
with torch.no_grad():
    model.internalize(document["context"], chunk_tokens={chunk_tokens}, chunk_batch_size={batch},
                      show_progress=False)
print(json.dumps({{"loaded": loaded, "peak": status("VmHWM:")}}))
"""


def peak_memory(hypernetwork: str, chunk_tokens: int, threads: int) -> list[dict[str, Any]]:
    """Whole-process peak RSS of internalizing 1 chunk and 16 chunks (chunk batches of 8 and 1)."""
    here = str(Path(__file__).resolve().parent)
    rows = []
    for chunks, batch in ((1, 8), (16, 8), (16, 1)):
        code = _MEMORY_CHILD.format(here=here, hypernetwork=hypernetwork, chunks=chunks, chunk_tokens=chunk_tokens,
                                    batch=batch, threads=threads)
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows.append({"chunks": chunks, "chunk_batch_size": batch,
                     **json.loads(output.stdout.strip().splitlines()[-1])})
    return rows


# ---------------------------------------------------------------------------------------------
# Report


def print_table(sizes: dict[str, dict[str, Any]]) -> None:
    for size, result in sizes.items():
        conditions = result["conditions"]
        positions = len(next(iter(conditions.values()))["per_position"])
        shown = list(range(positions)) if positions <= 4 else [0, 1, 2, 3, positions // 2, positions - 1]
        print(f"\n{size} chunks per document ({result['documents']} documents, chunks = one facts document each: "
              f"{result['chunks_are_documents']})")
        print("| condition | F1 | min over positions | " + " | ".join(f"pos {p + 1}" for p in shown)
              + " | another chunk's answer |")
        print("|---|---|---|" + "---|" * len(shown) + "---|")
        for name, row in conditions.items():
            cells = " | ".join(f"{row['per_position'][p]:.3f}" for p in shown)
            print(f"| {name} | {row['f1']:.3f} | {min(row['per_position']):.3f} | {cells} | "
                  f"{row['other_chunks_answer']:.2f} |")


BASELINE_LEGENDS = {"first chunk": "first chunk only (truncation)", "one read": "one read (as many tokens as fit)",
                    "single chunk": "each chunk alone, own questions (ceiling)",
                    "in-context (backbone)": "in-context, whole document (backbone)"}


def plot(sizes: dict[str, dict[str, Any]], hypernetworks: Sequence[str], path: Path) -> None:
    """F1 per chunk position: the chunked rules of every hypernetwork (one line style each), the
    baselines of the first (colour per condition); the to_rank rows are in the table only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"single chunk": "black", "in-context (backbone)": "tab:purple", "first chunk": "tab:gray",
              "one read": "tab:brown", "chunked concat": "tab:blue", "chunked mean": "tab:orange",
              "routed top-1": "tab:green", "routed top-2 concat": "tab:olive"}
    styles = ["--", "-", ":", "-."]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.2 * len(sizes), 4.4), sharey=True, squeeze=False)
    for ax, (size, result) in zip(axes[0], sizes.items(), strict=True):
        for name, row in result["conditions"].items():
            label, _, owner = name.partition(" [")
            owner = owner.rstrip("]")
            index = hypernetworks.index(owner) if owner else 0
            if label not in colors or (index and not label.startswith(("chunked", "routed"))):
                continue
            chunked_rule = label.startswith(("chunked", "routed"))
            legend = f"{label} [{owner}]" if chunked_rule else BASELINE_LEGENDS.get(label, label)
            ax.plot(range(1, len(row["per_position"]) + 1), row["per_position"],
                    styles[index % len(styles)] if chunked_rule else "-", color=colors[label],
                    marker="o" if chunked_rule else None, markersize=3.5, linewidth=1.6,
                    label=legend if size == next(iter(sizes)) else None)
        ax.set_title(f"{size} facts documents joined, read in {size} chunks", fontsize=10)
        ax.set_xlabel("chunk position in the long document")
        ax.set_xticks(range(1, int(size) + 1))
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("answer F1 on the questions about that chunk")
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("SHINE on facts-llama: long documents read in chunks, chunk LoRAs composed or routed", fontsize=11)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hypernetwork", action="append", default=[], metavar="NAME=PATH",
                        help="a SHINE checkpoint for facts-llama to measure (repeatable; default: "
                             f"shipped={FACTS_SHINE})")
    parser.add_argument("--backbone", default=None,
                        help="run every hypernetwork on this backbone (default: each on the one its config names)")
    parser.add_argument("--sizes", default="4,16", help="chunks per long document")
    parser.add_argument("--chunk-tokens", type=int, default=None,
                        help="chunk size (default: the token count of the longest test document)")
    parser.add_argument("--memory", default=None, metavar="NAME",
                        help="measure peak memory with this hypernetwork (default: the first one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON with every figure")
    parser.add_argument("--plot", default=None, help="PNG: F1 per chunk position per condition")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    hypernetworks = dict(spec.split("=", 1) for spec in args.hypernetwork) or {"shipped": str(FACTS_SHINE)}
    backbone = {"backbone": args.backbone} if args.backbone else {}
    models = {name: ShineForCausalLM.from_pretrained(path, **backbone).eval() for name, path in hypernetworks.items()}
    first = next(iter(models.values()))
    test = synthetic_facts(**FACTS_DATA)["test"]
    chunk_tokens = args.chunk_tokens or max(len(first.tokenizer(c, add_special_tokens=False)["input_ids"])
                                            for c in test["context"])
    sizes: dict[str, dict[str, Any]] = {}
    for size in map(int, args.sizes.split(",")):
        documents = long_documents(test, size, max(1, size // 4), args.seed)
        conditions: dict[str, dict[str, Any]] = {}
        for name, model in models.items():
            for label, method in (("first chunk", first_chunk), ("one read", one_read)):
                conditions[f"{label} [{name}]"] = score(model, documents, method)
            for rule in RULES:
                conditions[f"chunked {rule} [{name}]"] = score(model, documents, chunked(rule, chunk_tokens))
            rank = model.config.lora_rank
            for rule in RULES:
                conditions[f"chunked {rule}, to_rank({rank}) [{name}]"] = score(model, documents,
                                                                               chunked(rule, chunk_tokens, rank))
            conditions[f"routed top-1 [{name}]"] = score(model, documents, routed(1, "concat", chunk_tokens))
            for rule in RULES:
                conditions[f"routed top-2 {rule} [{name}]"] = score(model, documents, routed(2, rule, chunk_tokens))
            conditions[f"single chunk [{name}]"] = score(model, documents, single_chunks)
            print(f"{size} chunks, {name}: " + ", ".join(f"{k} {v['f1']:.3f}" for k, v in conditions.items()
                                                         if k.endswith(f"[{name}]")), flush=True)
        if all(fits_in_context(first, d) for d in documents):
            conditions["in-context (backbone)"] = score(first, documents, in_context)
        conditions["in-context, routed chunk (backbone)"] = score(first, documents, routed_in_context(chunk_tokens))
        accuracy = routing_accuracy(first, documents, chunk_tokens)
        print(f"{size} chunks: top-1 route is the question's own chunk for {accuracy:.3f} of the questions")
        sizes[str(size)] = {"documents": len(documents), "chunk_tokens": chunk_tokens, "routing_accuracy": accuracy,
                            "chunks_are_documents": check_chunks(first, documents, chunk_tokens),
                            "conditions": conditions}
    print_table(sizes)

    memory_name = args.memory or next(iter(hypernetworks))
    memory = peak_memory(hypernetworks[memory_name], chunk_tokens, args.threads)
    print(f"\nPeak memory, fresh process per row, hypernetwork {memory_name} (MiB):")
    print("| chunks | chunk_batch_size | loaded RSS | peak RSS | peak / one chunk's peak | peak − loaded |")
    print("|---|---|---|---|---|---|")
    for row in memory:
        row["ratio_to_one_chunk"] = row["peak"] / memory[0]["peak"]
        loaded, peak = row["loaded"] / 2**20, row["peak"] / 2**20
        print(f"| {row['chunks']} | {row['chunk_batch_size']} | {loaded:.1f} | {peak:.1f} "
              f"| {row['ratio_to_one_chunk']:.3f} | {peak - loaded:.1f} |")

    summary = {"hypernetworks": hypernetworks, "sizes": sizes, "memory": memory, "args": vars(args),
               "machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "torch": torch.__version__, "threads": args.threads}}
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=1) + "\n")
    if args.plot:
        plot(sizes, list(hypernetworks), Path(args.plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
