"""`shine train`: train a SHINE hypernetwork on a frozen backbone (`shine_hf.train.train`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.text import Text

from ..modeling import ShineError
from ..train import RichProgressCallback, train


class StageChoice(StrEnum):
    """Training stage for the command line."""

    pretrain = "pretrain"
    ift = "ift"


def train_command(
    data: Annotated[list[str], typer.Option("--data", help="Training data: QA JSON/JSONL (ift) or a text corpus "
                                                      "(.txt, JSON/JSONL with --text-column, a directory) for "
                                                      "pretraining. Repeat for several files.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where checkpoints, logs and the final "
                                                                   "checkpoint go.")],
    backbone: Annotated[str | None, typer.Option("--backbone", help="Hub id or local path of the backbone (default: "
                                                               "the one named by --from / the resumed "
                                                               "checkpoint).")] = None,
    stage: Annotated[StageChoice, typer.Option("--stage", help="pretrain (RECON/COMP on text) or ift (QA).")]
    = StageChoice.ift,
    from_checkpoint: Annotated[str | None, typer.Option("--from", help="shine-hf checkpoint to start from (e.g. a "
                                                                  "pretraining checkpoint for ift).")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Resume an interrupted run: a checkpoint-N "
                                                           "directory or 'latest'.")] = None,
    eval_data: Annotated[list[str] | None, typer.Option("--eval-data", help="Evaluation data (same kinds as "
                                                                       "--data).")] = None,
    eval_fraction: Annotated[float, typer.Option("--eval-fraction", help="Hold out this fraction of the data for "
                                                                    "evaluation instead.")] = 0.0,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", "--lr", help="Default: 5e-5 pretrain, "
                                                                                   "1e-5 ift.")] = None,
    epochs: Annotated[float, typer.Option("--epochs", help="Training epochs.")] = 1.0,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Stop after this many optimizer steps (overrides "
                                                          "--epochs).")] = -1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per device per micro-batch.")] = 1,
    gradient_accumulation_steps: Annotated[int, typer.Option("--gradient-accumulation-steps",
                                                        help="Micro-batches per optimizer step.")] = 4,
    warmup_steps: Annotated[int, typer.Option("--warmup-steps", help="Linear warmup steps (capped at 10% of the "
                                                                "run).")] = 2000,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 0.01,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="Gradient clipping norm.")] = 1.0,
    max_context_tokens: Annotated[int, typer.Option("--max-context-tokens", help="Context budget (tokens).")] = 1024,
    max_conversation_tokens: Annotated[int, typer.Option("--max-conversation-tokens",
                                                    help="Conversation budget (tokens).")] = 1024,
    split_qa: Annotated[bool, typer.Option("--split-qa", help="ift: one sample per QA pair.")] = False,
    shuffle_qa: Annotated[bool, typer.Option("--shuffle-qa", help="ift: ask each record's questions in a "
                                                              "random (seeded) order.")] = False,
    pack_contexts: Annotated[bool, typer.Option("--pack-contexts", help="Pack short records into one "
                                                                   "sample.")] = False,
    text_column: Annotated[str, typer.Option("--text-column", help="Text field of JSON pretraining data.")] = "text",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing",
                                                    help="Activation checkpointing of the backbone.")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="bfloat16 mixed precision.")] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="float16 mixed precision.")] = False,
    backbone_dtype: Annotated[str | None, typer.Option("--backbone-dtype", help="Load the backbone in this dtype "
                                                                           "(bfloat16, float16, float32, "
                                                                           "auto).")] = None,
    group_by_length: Annotated[bool, typer.Option("--group-by-length", help="Batch samples of similar "
                                                                       "length.")] = False,
    logging_steps: Annotated[int, typer.Option("--logging-steps", help="Log every N optimizer steps.")] = 10,
    eval_steps: Annotated[int | None, typer.Option("--eval-steps", help="Eval loss every N steps (default: "
                                                                   "--save-steps).")] = None,
    save_steps: Annotated[int, typer.Option("--save-steps", help="Checkpoint every N optimizer steps.")] = 500,
    save_total_limit: Annotated[int | None, typer.Option("--save-total-limit", help="Keep at most N "
                                                                               "checkpoints.")] = None,
    report_to: Annotated[str, typer.Option("--report-to", help="none, tensorboard, wandb, all (comma-separated "
                                                          "list allowed).")] = "none",
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 42,
    lora_rank: Annotated[int | None, typer.Option("--lora-rank", help="New hypernetwork: rank r of the generated "
                                                                 "LoRA [default: 8].")] = None,
    metalora_rank: Annotated[int | None, typer.Option("--metalora-rank", help="New hypernetwork: meta-LoRA rank R "
                                                                         "[default: 128].")] = None,
    m2p_num_layers: Annotated[int | None, typer.Option("--m2p-layers", help="New hypernetwork: M2P layers, even "
                                                                        "[default: 4].")] = None,
    lora_scale: Annotated[float | None, typer.Option("--lora-scale", help="New hypernetwork: LoRA scale s "
                                                                      "[default: 0.001].")] = None,
) -> None:
    """Train a SHINE hypernetwork (pretraining or instruction tuning) on a frozen backbone."""
    import datasets

    datasets.disable_progress_bars()
    console = Console(highlight=False, soft_wrap=True)
    error_console = Console(stderr=True, highlight=False, soft_wrap=True)
    hypernetwork_config = {k: v for k, v in dict(lora_rank=lora_rank, metalora_rank=metalora_rank,
                                                 m2p_num_layers=m2p_num_layers, lora_scale=lora_scale).items()
                           if v is not None}
    reports = [r.strip() for r in report_to.split(",") if r.strip()] or ["none"]
    dtype = None if backbone_dtype in (None, "auto") else getattr(torch, backbone_dtype, None)
    if backbone_dtype not in (None, "auto") and not isinstance(dtype, torch.dtype):
        error_console.print(Text("Error: ", style="bold red") + Text(f"unknown dtype {backbone_dtype!r}."))
        raise typer.Exit(code=1)
    try:
        result = train(
            backbone,
            data if len(data) > 1 else data[0],
            output_dir=output_dir,
            stage=stage.value,
            from_checkpoint=from_checkpoint,
            resume_from_checkpoint=resume,
            eval_data=(eval_data if len(eval_data) > 1 else eval_data[0]) if eval_data else None,
            eval_fraction=eval_fraction,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            max_grad_norm=max_grad_norm,
            gradient_accumulation_steps=gradient_accumulation_steps,
            per_device_train_batch_size=batch_size,
            num_train_epochs=epochs,
            max_steps=max_steps,
            max_context_tokens=max_context_tokens,
            max_conversation_tokens=max_conversation_tokens,
            split_qa=split_qa,
            shuffle_qa=shuffle_qa,
            pack_contexts=pack_contexts,
            text_column=text_column,
            backbone_dtype=dtype,
            bf16=bf16,
            fp16=fp16,
            gradient_checkpointing=gradient_checkpointing,
            group_by_length=group_by_length,
            logging_steps=logging_steps,
            eval_steps=eval_steps,
            save_steps=save_steps,
            save_total_limit=save_total_limit,
            report_to=reports if len(reports) > 1 else reports[0],
            seed=seed,
            hypernetwork_config=hypernetwork_config or None,
            callbacks=[RichProgressCallback(console=console)],
            training_args={"disable_tqdm": True},
        )
    except ShineError as error:
        message = " ".join(str(error).split())
        error_console.print(Text("Error: ", style="bold red") + Text(message))
        raise typer.Exit(code=1) from None
    if result.trainer.is_world_process_zero():
        loss = result.metrics.get("train_loss")
        summary = f"Trained {result.trainer.state.global_step} steps"
        if loss is not None:
            summary += f" (mean loss {loss:.4f})"
        console.print(Text("✓ ", style="bold green") + Text(f"{summary} → {output_dir}"))
