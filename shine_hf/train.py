"""Training SHINE hypernetworks on `transformers.Trainer` (single process, DDP, FSDP, DeepSpeed).

Three layers, from low to high:

- `ShineTrainer`: a `transformers.Trainer` for `ShineForCausalLM`. The backbone is frozen; only the
  hypernetwork (memory tokens, meta-LoRA, M2P) is optimised. Checkpoints (`checkpoint-N/`) are
  ordinary shine-hf checkpoints (hypernetwork safetensors + config + code + tokenizer, loadable with
  `ShineForCausalLM.from_pretrained(dir, backbone=...)`) plus the Trainer's state (optimizer,
  scheduler, RNG, `trainer_state.json`); resuming loads only the hypernetwork.
- `train(...)`: backbone + data in, trained checkpoint out, with the reference hyper-parameters of
  DESIGN.md section 2 as defaults (AdamW, lr 5e-5 pretraining / 1e-5 instruction tuning, weight
  decay 0.01, 2000 warmup steps capped at 10% of the run, grad clip 1.0, grad accumulation 4,
  contexts of at most 1024 tokens).

Multi-process runs go through `accelerate launch` (see `examples/accelerate/` and
`docs/training.md`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.optimization import get_scheduler
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from .modeling import ShineConfig, ShineError, ShineForCausalLM
from .modeling.pretrained import (
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    backbone_location,
    read_hypernetwork_state,
    try_load_tokenizer,
    weight_files,
)

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "REFERENCE_HYPERPARAMETERS",
    "STAGE_LEARNING_RATES",
    "RichProgressCallback",
    "ShineTrainer",
    "TrainResult",
    "TrainingError",
    "build_training_arguments",
    "match_embeddings_to_tokenizer",
    "train",
]

logger = logging.getLogger(__name__)

Stage = Literal["pretrain", "ift"]

STAGE_LEARNING_RATES: dict[str, float] = {"pretrain": 5e-5, "ift": 1e-5}
"""Reference AdamW learning rates per stage (DESIGN.md section 2)."""

REFERENCE_HYPERPARAMETERS: dict[str, Any] = {
    "optimizer": "adamw_torch",
    "weight_decay": 0.01,
    "warmup_steps": 2000,
    "max_warmup_fraction": 0.1,
    "max_grad_norm": 1.0,
    "gradient_accumulation_steps": 4,
    "max_context_tokens": 1024,
    "lr_scheduler_type": "linear",
}
"""The reference optimisation settings (DESIGN.md section 2) that `train` uses as defaults;
`max_warmup_fraction` is ours (caps the warmup of short runs)."""

TRAINING_ARGS_NAME = "training_args.bin"
SCHEDULER_NAME = "scheduler.pt"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


class TrainingError(ShineError, ValueError):
    """A training run cannot start: bad stage, missing data, no backbone or tokenizer, ..."""


# --------------------------------------------------------------------------------------------
# The Trainer
# --------------------------------------------------------------------------------------------


class ShineTrainer(Trainer):
    """`transformers.Trainer` for `ShineForCausalLM`: trains the hypernetwork, never the backbone.

    Differences from the plain Trainer (everything else, AdamW, warmup, clipping, accumulation,
    mixed precision, `report_to` logging, evaluation, DDP/FSDP/DeepSpeed, is the Trainer's own):

    - the backbone is frozen (`requires_grad=False`) on construction; only hypernetwork parameters
      with `requires_grad=True` reach the optimizer;
    - `remove_unused_columns` is forced to False (the `ShineDataCollator`, the default collator
      here, picks its keys and ignores the rest, e.g. the `length` column that
      `train_sampling_strategy="group_by_length"` reads);
    - checkpoints hold the hypernetwork only, in the shine-hf layout (`save_pretrained`), plus the
      tokenizer and the Trainer's optimizer/scheduler/RNG/state files; resuming
      (`trainer.train(resume_from_checkpoint=...)`) and `load_best_model_at_end` load the hypernetwork
      tensors only, strictly (every hypernetwork tensor present with its shape, nothing else);
    - `activation_checkpointing=True` (alias `gradient_checkpointing=True`) goes through
      `ShineForCausalLM.activation_checkpointing_enable`, which re-activates the LoRA during
      recomputation (FSDP's own `activation_checkpointing` would not, and is refused);
    - `max_warmup_fraction` optionally caps the warmup at that fraction of the run's optimizer
      steps (for short runs with a long reference warmup).

    Args:
        model: The SHINE model (its tokenizer is the default `processing_class`).
        args: Training arguments.
        data_collator: Defaults to `ShineDataCollator(processing_class)`.
        train_dataset: Tokenized SHINE samples (`shine_hf.data.build_qa_dataset` /
            `build_pretraining_dataset`).
        eval_dataset: Same, for the periodic eval loss.
        processing_class: The tokenizer; defaults to `model.tokenizer`. Saved in every checkpoint.
        max_warmup_fraction: Cap on warmup steps as a fraction of the total optimizer steps.
        **kwargs: Other `Trainer` arguments (`callbacks`, `optimizers`, ...).
    """

    def __init__(
        self,
        model: ShineForCausalLM,
        args: TrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        max_warmup_fraction: float | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, ShineForCausalLM):
            raise TypeError(f"ShineTrainer trains a ShineForCausalLM, not {type(model).__name__}.")
        if max_warmup_fraction is not None and not 0 <= max_warmup_fraction <= 1:
            raise ValueError(f"max_warmup_fraction must be in [0, 1], got {max_warmup_fraction}.")
        model.backbone.requires_grad_(False)
        if not any(p.requires_grad for p in model.hypernetwork.parameters()):
            raise TrainingError("No hypernetwork parameter requires grad: nothing to train.")
        dtypes = {p.dtype for p in model.hypernetwork.parameters()}
        if dtypes != {torch.float32}:
            logger.warning(
                "The hypernetwork is in %s; train it in float32 (mixed precision via bf16=True/fp16=True) "
                "and keep only the backbone in half precision.", sorted(map(str, dtypes))
            )
        if processing_class is None:
            processing_class = model.tokenizer
        if data_collator is None:
            if processing_class is None:
                raise TrainingError("ShineTrainer needs a tokenizer: pass processing_class= or set model.tokenizer.")
            from .data import ShineDataCollator

            data_collator = ShineDataCollator(processing_class)
        if args is not None and args.remove_unused_columns:
            logger.info("ShineTrainer sets remove_unused_columns=False (the SHINE collator selects its keys).")
            args.remove_unused_columns = False
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self.args.remove_unused_columns = False
        self.max_warmup_fraction = max_warmup_fraction
        # Full shapes of the hypernetwork tensors, read before any FSDP/DeepSpeed sharding.
        self._hypernetwork_shapes = {
            name: torch.empty(t.shape, dtype=t.dtype, device="meta")
            for name, t in model.hypernetwork.state_dict().items()
        }
        if any(isinstance(cb, RichProgressCallback) for cb in self.callback_handler.callbacks):
            self.remove_callback(ProgressCallback)
            self.remove_callback(PrinterCallback)
        if self.is_fsdp_enabled and getattr(self.accelerator.state.fsdp_plugin, "activation_checkpointing", False):
            raise TrainingError(
                "FSDP's own activation checkpointing would recompute the backbone without the generated LoRA "
                "(wrong gradients). Set fsdp_activation_checkpointing: false and pass activation_checkpointing=True "
                "(--gradient-checkpointing) instead."
            )

    # ------------------------------------------------------------------ helpers
    def shine_model(self, model: torch.nn.Module | None = None) -> ShineForCausalLM:
        """The `ShineForCausalLM` inside `model` (default: the trainer's model), unwrapped."""
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model, keep_torch_compile=False)
        if not isinstance(unwrapped, ShineForCausalLM):
            raise TypeError(f"Expected a ShineForCausalLM inside the trainer, found {type(unwrapped).__name__}.")
        return unwrapped

    # ------------------------------------------------------------------ scheduler
    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The Trainer's scheduler, with warmup capped at `max_warmup_fraction` of the run."""
        if self.lr_scheduler is None and self.max_warmup_fraction is not None:
            warmup = min(
                self.args.get_warmup_steps(num_training_steps),
                math.floor(self.max_warmup_fraction * num_training_steps),
            )
            self.lr_scheduler = get_scheduler(
                self.args.lr_scheduler_type,
                optimizer=optimizer if optimizer is not None else self.optimizer,
                num_warmup_steps=warmup,
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save a shine-hf checkpoint (hypernetwork, config, code, card, tokenizer) to `output_dir`.

        Under FSDP only the hypernetwork's full tensors are gathered (never the whole backbone);
        other setups use the Trainer's own path, which ends in `_save`.
        """
        if not self.is_fsdp_enabled:
            super().save_model(output_dir, _internal_call=_internal_call)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        shine = self.shine_model()
        all_trainable = all(p.requires_grad for p in shine.hypernetwork.parameters())
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=all_trainable)
        state_dict = get_model_state_dict(self.model, options=options)
        self._save(output_dir, state_dict=state_dict)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        shine = self.shine_model()
        if state_dict is not None:
            state_dict = {
                name: tensor for name, tensor in ((_strip_wrappers(k), v) for k, v in state_dict.items())
                if name.startswith("hypernetwork.")
            }
        logger.info("Saving SHINE checkpoint to %s", output_dir)
        shine.save_pretrained(output_dir, state_dict=state_dict, save_tokenizer=self.processing_class is None)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        # Under FSDP the Trainer also writes the whole model (backbone included) for resuming; the
        # hypernetwork is already in model.safetensors, so only the optimizer and scheduler go here.
        if not self.is_fsdp_enabled:
            super()._save_optimizer_and_scheduler(output_dir)
            return
        from accelerate.utils import save_fsdp_optimizer

        plugin = self.accelerator.state.fsdp_plugin
        save_fsdp_optimizer(plugin, self.accelerator, self.optimizer, self.model, output_dir)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    # ------------------------------------------------------------------ loading
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        """Load the hypernetwork tensors of a shine-hf checkpoint (strict on hypernetwork keys)."""
        model = model if model is not None else self.model
        shine = self.shine_model(model)
        directory = Path(resume_from_checkpoint)
        if not ((directory / WEIGHTS_NAME).is_file() or (directory / WEIGHTS_INDEX_NAME).is_file()):
            raise TrainingError(f"{directory} is not a shine-hf checkpoint (no {WEIGHTS_NAME}): cannot resume.")
        files = weight_files(directory)
        logger.info("Loading the hypernetwork from %s", directory)
        # Full tensors, checked strictly against the hypernetwork's full shapes (read before any
        # FSDP/DeepSpeed sharding).
        state = read_hypernetwork_state(files, self._hypernetwork_shapes)
        if not self.is_fsdp_enabled:
            shine.hypernetwork.load_state_dict(state, strict=True)
            return
        # FSDP: let torch scatter the full tensors into the sharded parameters.
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        state = {f"hypernetwork.{name}": tensor for name, tensor in state.items()}
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled or self.state.best_model_checkpoint is None:
            super()._load_best_model()
            return
        logger.info("Loading the best hypernetwork from %s (score %s).", self.state.best_model_checkpoint,
                    self.state.best_metric)
        self._load_from_checkpoint(self.state.best_model_checkpoint, self.model_wrapped if self.is_fsdp_enabled
                                   else self.model)


def _strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
        name = name.replace("._fsdp_wrapped_module.", ".").replace("._checkpoint_wrapped_module.", ".")
    return name


# --------------------------------------------------------------------------------------------
# Rich progress
# --------------------------------------------------------------------------------------------


class RichProgressCallback(TrainerCallback):
    """A rich progress bar with the latest loss, learning rate and eval loss (main process only).

    Passed to `ShineTrainer(callbacks=[...])` (or `train(callbacks=[...])`), it replaces the
    Trainer's tqdm bar and log printer.
    """

    def __init__(self, console: Any = None) -> None:
        self.console = console
        self._progress: Any = None
        self._task: Any = None
        self._fields: dict[str, str] = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("Training", total=state.max_steps, completed=state.global_step,
                                             status="")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        if self._progress is None or not logs:
            return
        if "loss" in logs:
            self._fields["loss"] = f"loss {logs['loss']:.4f}"
        if "learning_rate" in logs:
            self._fields["lr"] = f"lr {logs['learning_rate']:.2e}"
        if "eval_loss" in logs:
            self._fields["eval"] = f"eval loss {logs['eval_loss']:.4f}"
            self._progress.console.print(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")
        self._progress.update(self._task, status=" · ".join(self._fields.values()))

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.console.print(f"step {state.global_step}: saved checkpoint-{state.global_step}")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)
            self._progress.stop()
            self._progress = None


# --------------------------------------------------------------------------------------------
# High level: train(...)
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        model: The trained model (backbone + hypernetwork), in train mode.
        trainer: The `ShineTrainer` (its `state.log_history` holds every logged loss).
        output_dir: Where the final checkpoint (and `checkpoint-N/` dirs) were written.
        metrics: The Trainer's final training metrics (`train_loss`, `train_runtime`, ...).
    """

    model: ShineForCausalLM
    trainer: ShineTrainer
    output_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)


def match_embeddings_to_tokenizer(model: ShineForCausalLM | PreTrainedModel, tokenizer: Any) -> int:
    """Grow the backbone's token embeddings so that every id of `tokenizer` has a row.

    Never shrinks (Qwen3's embedding matrix is larger than its tokenizer; `<RECON>`/`<COMP>` then
    reuse existing rows, unchanged). New rows of the input (and untied output) embeddings are set
    to the mean of the existing rows: deterministic, so re-creating them when resuming or loading
    a checkpoint gives the same rows. They are not trained (the backbone stays frozen, as in the
    reference) and not stored in SHINE checkpoints.

    Returns:
        The number of rows added.
    """
    backbone = model.backbone if isinstance(model, ShineForCausalLM) else model
    embeddings = backbone.get_input_embeddings()
    old, new = embeddings.weight.shape[0], len(tokenizer)
    if new <= old:
        return 0
    output = backbone.get_output_embeddings()
    untied_output = output is not None and output.weight is not embeddings.weight
    with torch.no_grad():
        mean_in = embeddings.weight.float().mean(dim=0)
        mean_out = output.weight.float().mean(dim=0) if untied_output else None
        backbone.resize_token_embeddings(new, mean_resizing=False)
        weight = backbone.get_input_embeddings().weight
        weight[old:] = mean_in.to(weight.dtype)
        output = backbone.get_output_embeddings()
        if untied_output and output is not None and output.weight is not weight:
            output.weight[old:] = mean_out.to(output.weight.dtype)
            if getattr(output, "bias", None) is not None:
                output.bias[old:] = 0
    backbone.requires_grad_(False)
    logger.info("Added %d token embedding rows (mean of the existing rows) for the tokenizer's new tokens.",
                new - old)
    return new - old


def build_training_arguments(
    output_dir: str | os.PathLike,
    stage: Stage = "ift",
    *,
    learning_rate: float | None = None,
    weight_decay: float = REFERENCE_HYPERPARAMETERS["weight_decay"],
    warmup_steps: int = REFERENCE_HYPERPARAMETERS["warmup_steps"],
    max_grad_norm: float = REFERENCE_HYPERPARAMETERS["max_grad_norm"],
    gradient_accumulation_steps: int = REFERENCE_HYPERPARAMETERS["gradient_accumulation_steps"],
    per_device_train_batch_size: int = 1,
    per_device_eval_batch_size: int | None = None,
    num_train_epochs: float = 1.0,
    max_steps: int = -1,
    gradient_checkpointing: bool = False,
    group_by_length: bool = False,
    bf16: bool = False,
    fp16: bool = False,
    logging_steps: int = 10,
    eval_steps: int | None = None,
    save_steps: int = 500,
    save_total_limit: int | None = None,
    has_eval: bool = False,
    report_to: str | Sequence[str] = "none",
    seed: int = 42,
    **overrides: Any,
) -> TrainingArguments:
    """`TrainingArguments` with SHINE's reference settings (see `train` for the meaning of each).

    Fixed choices: AdamW (`adamw_torch`), linear schedule, `remove_unused_columns=False`,
    `prediction_loss_only=True` (eval computes the loss only, no logits are gathered),
    `ddp_find_unused_parameters=False` (every hypernetwork parameter gets a gradient every step),
    pinned dataloader memory only with CUDA.
    `overrides` are any other `TrainingArguments` fields and win over everything.
    """
    if stage not in STAGE_LEARNING_RATES:
        raise TrainingError(f"stage must be 'pretrain' or 'ift', not {stage!r}.")
    values: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=STAGE_LEARNING_RATES[stage] if learning_rate is None else learning_rate,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        max_grad_norm=max_grad_norm,
        gradient_accumulation_steps=gradient_accumulation_steps,
        per_device_train_batch_size=per_device_train_batch_size,
        per_device_eval_batch_size=per_device_eval_batch_size or per_device_train_batch_size,
        num_train_epochs=num_train_epochs,
        max_steps=max_steps,
        optim=REFERENCE_HYPERPARAMETERS["optimizer"],
        lr_scheduler_type=REFERENCE_HYPERPARAMETERS["lr_scheduler_type"],
        activation_checkpointing=gradient_checkpointing,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        length_column_name="length",
        bf16=bf16,
        fp16=fp16,
        logging_strategy="steps",
        logging_steps=logging_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(eval_steps or save_steps) if has_eval else None,
        report_to=list(report_to) if not isinstance(report_to, str) else report_to,
        seed=seed,
        remove_unused_columns=False,
        prediction_loss_only=True,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    values.update(overrides)
    return TrainingArguments(**values)


def _is_tokenized(dataset: Any) -> bool:
    columns = getattr(dataset, "column_names", None) or []
    return {"context_input_ids", "input_ids", "labels"} <= set(columns)


def _check_paths(source: Any, what: str) -> None:
    if isinstance(source, (str, os.PathLike)):
        items = [source]
    elif isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        items = list(source)
    else:
        return
    missing = [str(p) for p in items if isinstance(p, (str, os.PathLike)) and not Path(p).exists()]
    if missing:
        raise TrainingError(f"{what} not found: {', '.join(missing)}.")


def _build_dataset(
    source: Any,
    tokenizer: Any,
    stage: Stage,
    *,
    what: str,
    text_column: str,
    max_context_tokens: int | None,
    max_conversation_tokens: int | None,
    split_qa: bool,
    shuffle_qa: bool,
    pack_contexts: bool,
    seed: int,
) -> Dataset:
    from .data import build_pretraining_dataset, build_qa_dataset

    if _is_tokenized(source):
        return source
    _check_paths(source, what)
    if stage == "pretrain":
        dataset, _ = build_pretraining_dataset(
            source, tokenizer, text_column=text_column, seed=seed, max_context_tokens=max_context_tokens,
            max_conversation_tokens=max_conversation_tokens, pack_contexts=pack_contexts,
        )
    else:
        dataset, _ = build_qa_dataset(
            source, tokenizer, split_qa=split_qa, shuffle_qa=shuffle_qa, seed=seed,
            max_context_tokens=max_context_tokens, max_conversation_tokens=max_conversation_tokens,
            pack_contexts=pack_contexts,
        )
    if len(dataset) == 0:
        raise TrainingError(f"{what} gave no training samples.")
    return dataset


def _resolve_resume(resume_from_checkpoint: str | os.PathLike | bool | None, output_dir: Path) -> str | None:
    if resume_from_checkpoint in (None, False):
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint) == "latest":
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None:
            raise TrainingError(f"No checkpoint-N directory in {output_dir} to resume from.")
        return last
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise TrainingError(f"Checkpoint to resume from not found: {path}.")
    return str(path)


def train(
    backbone: PreTrainedModel | str | os.PathLike | None,
    data: str | os.PathLike | Sequence[str | os.PathLike] | Dataset,
    *,
    output_dir: str | os.PathLike,
    stage: Stage = "ift",
    tokenizer: Any = None,
    from_checkpoint: str | os.PathLike | None = None,
    resume_from_checkpoint: str | os.PathLike | bool | None = None,
    eval_data: str | os.PathLike | Sequence[str | os.PathLike] | Dataset | None = None,
    eval_fraction: float = 0.0,
    learning_rate: float | None = None,
    weight_decay: float = REFERENCE_HYPERPARAMETERS["weight_decay"],
    warmup_steps: int = REFERENCE_HYPERPARAMETERS["warmup_steps"],
    max_warmup_fraction: float | None = REFERENCE_HYPERPARAMETERS["max_warmup_fraction"],
    max_grad_norm: float = REFERENCE_HYPERPARAMETERS["max_grad_norm"],
    gradient_accumulation_steps: int = REFERENCE_HYPERPARAMETERS["gradient_accumulation_steps"],
    per_device_train_batch_size: int = 1,
    per_device_eval_batch_size: int | None = None,
    num_train_epochs: float = 1.0,
    max_steps: int = -1,
    max_context_tokens: int | None = REFERENCE_HYPERPARAMETERS["max_context_tokens"],
    max_conversation_tokens: int | None = 1024,
    split_qa: bool = False,
    shuffle_qa: bool = False,
    pack_contexts: bool = False,
    text_column: str = "text",
    backbone_revision: str | None = None,
    backbone_dtype: torch.dtype | str | None = None,
    bf16: bool = False,
    fp16: bool = False,
    gradient_checkpointing: bool = False,
    group_by_length: bool = False,
    logging_steps: int = 10,
    eval_steps: int | None = None,
    save_steps: int = 500,
    save_total_limit: int | None = None,
    report_to: str | Sequence[str] = "none",
    seed: int = 42,
    hypernetwork_config: Mapping[str, Any] | None = None,
    training_args: Mapping[str, Any] | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
) -> TrainResult:
    """Train a SHINE hypernetwork: pretraining (`stage="pretrain"`) or instruction tuning (`"ift"`).

    Defaults are the reference hyper-parameters (DESIGN.md section 2): AdamW, learning rate 5e-5
    (pretrain) / 1e-5 (ift), weight decay 0.01 (not on biases and norms), linear schedule with
    2000 warmup steps, gradient clipping at 1.0, gradient accumulation 4, contexts truncated to
    1024 tokens. **The warmup is capped at `max_warmup_fraction` (10%) of the run's optimizer
    steps**, so a short run is not all warmup; pass `max_warmup_fraction=None` for the exact
    reference schedule. The reference used 8 GPUs: the effective batch is
    `per_device_train_batch_size × gradient_accumulation_steps × number of processes`.

    What happens:

    1. The backbone is loaded (by name/path, or taken as given) and frozen. With neither
       `backbone` nor a checkpoint naming one, this fails.
    2. `stage="pretrain"` adds the `<RECON>`/`<COMP>` special tokens to the tokenizer. Whenever
       the tokenizer then has more tokens than the backbone has embedding rows, rows are added
       (`match_embeddings_to_tokenizer`: mean of the existing rows, deterministic, never trained,
       as in the reference, which trains only the hypernetwork). The backbone passed in is
       modified in place.
    3. The hypernetwork is new (`hypernetwork_config`: `ShineConfig` fields such as `lora_rank`,
       `metalora_rank`, `m2p_num_layers`, `lora_scale`), or loaded from `from_checkpoint` (e.g. a
       pretraining checkpoint to instruction-tune: a fresh optimizer and schedule), or from the
       checkpoint being resumed.
    4. Data: a text corpus for pretraining (`shine_hf.data.build_pretraining_dataset`: `.txt`,
       JSON/JSONL with `text_column`, a directory or a `datasets.Dataset`) or QA records for ift
       (`build_qa_dataset`); an already tokenized `Dataset` (`context_input_ids`, `input_ids`,
       `labels`) is used as is. Contexts longer than `max_context_tokens` (and than the
       backbone's positions minus the memory tokens) are truncated, counted and logged.
    5. `ShineTrainer` trains; `checkpoint-N/` dirs every `save_steps` optimizer steps are shine-hf
       checkpoints plus Trainer state; an eval loss is computed every `eval_steps` (default:
       `save_steps`) when `eval_data` or `eval_fraction` gives an eval set.
    6. The final checkpoint (hypernetwork, config, code, card, tokenizer) is written to
       `output_dir`, loadable with `ShineForCausalLM.from_pretrained(output_dir, backbone=...)`.

    Args:
        backbone: A loaded causal LM, or its Hub id / local path; None to take the one named by
            `from_checkpoint` / the resumed checkpoint.
        data: Training data (see step 4).
        output_dir: Where checkpoints, logs (`runs/` for tensorboard) and the result go.
        stage: `"pretrain"` (reconstruction/completion) or `"ift"` (QA instruction tuning).
        tokenizer: The backbone's tokenizer; loaded from the checkpoint or backbone path if None.
        from_checkpoint: A shine-hf checkpoint whose hypernetwork to start from.
        resume_from_checkpoint: Continue an interrupted run: a `checkpoint-N` dir, or True /
            `"latest"` for the last one in `output_dir` (model, optimizer, scheduler, RNG, step).
        eval_data: Evaluation data, same kinds as `data`.
        eval_fraction: Alternatively, hold out this fraction of `data` (seeded) for evaluation.
        learning_rate: Defaults to the stage's reference rate (`STAGE_LEARNING_RATES`).
        weight_decay, warmup_steps, max_warmup_fraction, max_grad_norm, gradient_accumulation_steps:
            Optimisation settings (see above).
        per_device_train_batch_size, per_device_eval_batch_size, num_train_epochs, max_steps:
            Batch sizes and run length (`max_steps > 0` wins over epochs).
        max_context_tokens, max_conversation_tokens: Token budgets of contexts / conversations.
        split_qa: ift: one sample per QA pair instead of one multi-turn sample per record.
        shuffle_qa: ift: ask each record's questions in a random (seeded) order; recommended when
            every record lists its questions in the same order (see `shine_hf.data.shuffle_qa_pairs`).
        pack_contexts: Pack consecutive short records into one sample.
        text_column: Text field of JSON pretraining corpora.
        backbone_revision, backbone_dtype: How to load a backbone given by name (e.g.
            `backbone_dtype="bfloat16"`); the hypernetwork stays float32.
        bf16, fp16: Mixed precision (autocast) for the forward passes.
        gradient_checkpointing: Activation checkpointing of the backbone's decoder layers.
        group_by_length: Batch samples of similar `length` (context + conversation tokens).
        logging_steps, eval_steps, save_steps, save_total_limit: Logging/eval/checkpoint cadence.
        report_to: `"none"`, `"tensorboard"`, `"wandb"`, a list, or `"all"`.
        seed: Seed of the Trainer (init, data order) and of the pretraining RECON/COMP draws.
        hypernetwork_config: `ShineConfig` fields for a new hypernetwork.
        training_args: Any other `TrainingArguments` fields; they win over the above.
        callbacks: Extra `TrainerCallback`s.

    Returns:
        A `TrainResult` (model, trainer, output directory, final metrics).

    Raises:
        TrainingError: bad stage, missing data, no backbone or tokenizer, no samples.
        BackboneMismatchError / CheckpointError: the checkpoint does not fit the backbone or is
            unreadable.
    """
    if stage not in STAGE_LEARNING_RATES:
        raise TrainingError(f"stage must be 'pretrain' or 'ift', not {stage!r}.")
    if not 0 <= eval_fraction < 1:
        raise TrainingError(f"eval_fraction must be in [0, 1), got {eval_fraction}.")
    _check_paths(data, "Training data")
    if eval_data is not None:
        _check_paths(eval_data, "Evaluation data")
    output_dir = Path(output_dir)
    resume = _resolve_resume(resume_from_checkpoint, output_dir)
    source = resume or (str(from_checkpoint) if from_checkpoint is not None else None)
    source_config = None
    if source is not None:
        try:
            source_config = ShineConfig.from_pretrained(source)
        except OSError as error:
            raise TrainingError(f"Cannot read the SHINE checkpoint {source}: {error}") from error
    if hypernetwork_config and source is not None:
        logger.warning("hypernetwork_config is ignored: the hypernetwork comes from %s.", source)

    # 1. backbone
    if backbone is None:
        if source_config is None or not source_config.backbone_name_or_path:
            raise TrainingError("No backbone: pass backbone= (a model, Hub id or path) or a checkpoint that names one.")
        # a local path in a checkpoint's config is relative to that checkpoint
        backbone = backbone_location(source_config.backbone_name_or_path, str(source))
        backbone_revision = backbone_revision or source_config.backbone_revision
    backbone_name: str | None = None
    if isinstance(backbone, (str, os.PathLike)):
        backbone_name = str(backbone)
        backbone = AutoModelForCausalLM.from_pretrained(backbone_name, revision=backbone_revision, dtype=backbone_dtype)
    else:
        backbone_name = getattr(backbone, "name_or_path", None) or None

    # 2. tokenizer and special tokens
    if tokenizer is None:
        tokenizer = try_load_tokenizer(source, None, backbone.config) or try_load_tokenizer(
            backbone_name, backbone_revision, backbone.config
        )
        if tokenizer is None:
            raise TrainingError("No tokenizer found next to the checkpoint or the backbone: pass tokenizer=.")
    if stage == "pretrain":
        from .data import add_shine_special_tokens

        add_shine_special_tokens(tokenizer)

    # 3. model
    if source is not None:
        model = ShineForCausalLM.from_pretrained(source, backbone=backbone, tokenizer=tokenizer)
    else:
        model = ShineForCausalLM.from_backbone(backbone, tokenizer=tokenizer, **dict(hypernetwork_config or {}))
    model.tokenizer = tokenizer
    match_embeddings_to_tokenizer(model, tokenizer)
    model.hypernetwork.float()
    model.train()

    # 4. data
    context_limit = model.max_context_tokens
    if max_context_tokens is not None and context_limit is not None:
        context_limit = min(context_limit, max_context_tokens)
    elif context_limit is None:
        context_limit = max_context_tokens
    data_kwargs = dict(text_column=text_column, max_context_tokens=context_limit,
                       max_conversation_tokens=max_conversation_tokens, split_qa=split_qa, shuffle_qa=shuffle_qa,
                       pack_contexts=pack_contexts, seed=seed)
    train_dataset = _build_dataset(data, tokenizer, stage, what="Training data", **data_kwargs)
    eval_dataset = None
    if eval_data is not None:
        eval_dataset = _build_dataset(eval_data, tokenizer, stage, what="Evaluation data", **data_kwargs)
    elif eval_fraction > 0:
        split = train_dataset.train_test_split(test_size=eval_fraction, seed=seed)
        train_dataset, eval_dataset = split["train"], split["test"]

    # 5. train
    args = build_training_arguments(
        output_dir, stage, learning_rate=learning_rate, weight_decay=weight_decay, warmup_steps=warmup_steps,
        max_grad_norm=max_grad_norm, gradient_accumulation_steps=gradient_accumulation_steps,
        per_device_train_batch_size=per_device_train_batch_size,
        per_device_eval_batch_size=per_device_eval_batch_size, num_train_epochs=num_train_epochs,
        max_steps=max_steps, gradient_checkpointing=gradient_checkpointing, group_by_length=group_by_length,
        bf16=bf16, fp16=fp16, logging_steps=logging_steps, eval_steps=eval_steps, save_steps=save_steps,
        save_total_limit=save_total_limit, has_eval=eval_dataset is not None, report_to=report_to, seed=seed,
        **dict(training_args or {}),
    )
    trainer = ShineTrainer(
        model, args, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
        max_warmup_fraction=max_warmup_fraction, callbacks=list(callbacks or []),
    )
    output = trainer.train(resume_from_checkpoint=resume)

    # 6. final checkpoint
    trainer.save_model(str(output_dir))
    trainer.save_state()
    return TrainResult(model=model, trainer=trainer, output_dir=output_dir, metrics=dict(output.metrics))
