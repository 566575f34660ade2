"""`shine eval`: SHINE against in-context, question-only and fine-tuning baselines, with costs."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ._common import console, error_console, fail_cleanly, print_success, unescape
from ._options import (
    ComposeMethod,
    backbone_option,
    batch_size_option,
    chunk_tokens_option,
    compose_option,
    device_option,
    dtype_option,
    max_new_tokens_option,
    model_option,
    out_option,
    overlap_tokens_option,
    top_k_option,
)

# What becomes of a long document's chunk adapters: composed into one (ComposeMethod), or routed.
# The same values as shine_hf.evaluation.runner.COMPOSE_MODES (not imported here: it imports torch).
EvalCompose = StrEnum("EvalCompose", {**{m.name: m.value for m in ComposeMethod}, "route": "route"})


def eval_command(
    model: Annotated[str, model_option()],
    data: Annotated[str, typer.Option("--data", help="QA data: a .jsonl/.json file (context, question, answers), "
                                                    "a .parquet/.csv file, a saved dataset directory, or a Hub "
                                                    "dataset id (SQuAD, HotpotQA, MS MARCO, MuSiQue layouts).")],
    output: Annotated[Path, out_option("Results JSON (per-example predictions + summary); rerun the same "
                                       "command to resume it.", "--output")] = Path("results.json"),
    conditions: Annotated[str, typer.Option("--conditions", help="Comma-separated, run in this order: shine, "
                                                                "in_context, question_only, sft.")]
    = "shine,in_context,question_only,sft",
    split: Annotated[str, typer.Option("--split", help="Split of a Hub or saved dataset.")] = "test",
    data_config: Annotated[str | None, typer.Option("--data-config", help="Hub dataset configuration (e.g. "
                                                                         "distractor for HotpotQA, v1.1 for MS "
                                                                         "MARCO).")] = None,
    layout: Annotated[str, typer.Option("--layout", help="Data layout: auto, records, squad, hotpotqa, msmarco, "
                                                        "musique.")] = "auto",
    limit: Annotated[int | None, typer.Option("--limit", help="Evaluate the first N examples (questions).")]
    = None,
    batch_size: Annotated[int, batch_size_option("Questions per generation batch; documents per internalize "
                                                 "call.")] = 8,
    max_new_tokens: Annotated[int, max_new_tokens_option("Answer length budget, in tokens.")] = 32,
    system_prompt: Annotated[str | None, typer.Option("--system-prompt", help="Baselines' system prompt "
                                                                             "(default: the checkpoint's).")]
    = None,
    context_template: Annotated[str | None, typer.Option("--context-template", help="In-context user turn with "
                                                                                   "{context} and {question} "
                                                                                   "(\\n for a newline; default: "
                                                                                   "the reference's).")] = None,
    sft_steps: Annotated[int, typer.Option("--sft-steps", help="SFT baseline: training steps per document.")] = 30,
    sft_lr: Annotated[float, typer.Option("--sft-lr", help="SFT baseline: learning rate.")] = 1e-3,
    chart: Annotated[Path | None, typer.Option("--chart", help="PNG bar chart (default: the output path with "
                                                               ".png).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the SFT LoRA initialisation.")] = 0,
    chunk_tokens: Annotated[int | None, chunk_tokens_option(
        "SHINE reads documents longer than N tokens in chunks of at most N tokens, cut at sentence ends "
        "(default: every document whole; one longer than the backbone reads is an error).")] = None,
    overlap_tokens: Annotated[int, overlap_tokens_option()] = 0,
    compose: Annotated[EvalCompose, compose_option(
        "With --chunk-tokens, what becomes of a long document's chunk adapters: concat (one adapter, the sum "
        "of their deltas), mean (one adapter, their average) or route (kept apart: each question is answered "
        "from the chunks it matches best, BM25 over their words).")] = EvalCompose.concat,
    top_k: Annotated[int | None, top_k_option(
        "With --compose route: answer each question from the K chunks that match it best, composed by concat "
        "(default 1; a document with fewer chunks: all of them).")] = None,
    backbone: Annotated[str | None, backbone_option()] = None,
    dtype: Annotated[str | None, dtype_option()] = None,
    device: Annotated[str | None, device_option()] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for torch (default: torch's "
                                                                 "choice).")] = None,
) -> None:
    r"""Score SHINE against in-context, question-only and SFT baselines: F1/EM, time, memory, tokens.

    Examples:
      shine eval --model ./my-shine --data dev.jsonl --out results.json
      shine eval --model org/shine-qwen3-8b --data rajpurkar/squad \
          --split validation --limit 500 --device cuda --dtype bfloat16
      shine eval --model ./my-shine --data long.jsonl \
          --conditions shine,question_only --chunk-tokens 1024 --compose route
    """
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..evaluation import SftConfig, run_eval
    from ..evaluation.report import CONDITION_LABELS, chunking_label, summary_table
    from ..modeling.errors import InvalidInputError
    from ..modeling.prompting import IN_CONTEXT_TEMPLATE
    from ._model import check_device

    tasks: dict[str, int] = {}
    with fail_cleanly(), Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=error_console, transient=False) as bar:
        if threads is not None:
            if threads < 1:
                raise InvalidInputError(f"--threads must be at least 1, not {threads}.")
            torch.set_num_threads(threads)
        check_device(device)

        def progress(condition: str, done: int, total: int) -> None:
            if condition not in tasks:
                tasks[condition] = bar.add_task(CONDITION_LABELS.get(condition, condition), total=total)
                if done:
                    bar.console.print(f"{condition}: {done} of {total} examples already in {output}, skipped.")
            bar.update(tasks[condition], completed=done)

        results = run_eval(
            model, data, split=split, data_config=data_config, layout=layout, conditions=conditions, limit=limit,
            batch_size=batch_size, output=output, chart=chart or output.with_suffix(".png"),
            max_new_tokens=max_new_tokens, system_prompt=system_prompt,
            context_template=IN_CONTEXT_TEMPLATE if context_template is None else unescape(context_template),
            sft=SftConfig(steps=sft_steps, learning_rate=sft_lr), seed=seed, chunk_tokens=chunk_tokens,
            overlap_tokens=overlap_tokens, compose=compose.value, top_k=1 if top_k is None else top_k,
            backbone=backbone, dtype=dtype, device=device, progress=progress,
        )
    data_block = results["data"]
    title = f"{data_block['source']}: {data_block['examples']} questions about {data_block['documents']} documents"
    chunking = results["settings"]["chunking"]
    if chunking is not None:
        title += f"; {chunking_label(chunking)}"
    console.print(summary_table(results["summary"], title=title))
    print_success(f"Results → {output}; chart → {chart or output.with_suffix('.png')}")
