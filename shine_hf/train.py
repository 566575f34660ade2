"""Training SHINE hypernetworks on `transformers.Trainer` (single process, DDP, FSDP, DeepSpeed).

Hyper-parameters are declared once, as dataclasses in the manner of transformers' example scripts
(`transformers.HfArgumentParser`); `train()`, the `shine train` command and docs/training.md all
take their options and defaults from them:

- `ShineModelArguments`: the backbone, the checkpoint to start from, the sizes of a new hypernetwork;
- `ShineDataArguments`: data files, the stage (`pretrain` / `ift`) and how samples are built;
- `ShineTrainingArguments`: a `TrainingArguments` with SHINE's reference defaults (AdamW, weight
  decay 0.01, 2000 warmup steps capped at 10% of the run, clipping at 1.0, accumulation 4,
  linear schedule, learning rate 5e-5 pretraining / 1e-5 instruction tuning).

Above them:

- `ShineTrainer`: a `transformers.Trainer` for `ShineForCausalLM`. The backbone is frozen; only the
  hypernetwork (memory tokens, meta-LoRA, M2P) is optimised. Checkpoints (`checkpoint-N/`) are
  ordinary shine-hf checkpoints (hypernetwork safetensors + config + code + tokenizer, loadable with
  `ShineForCausalLM.from_pretrained(dir, backbone=...)`) plus the Trainer's state (optimizer,
  scheduler, RNG, `trainer_state.json`); resuming loads only the hypernetwork.
- `train(model_args, data_args, training_args)` (or `train(**fields)`): backbone + data in,
  trained checkpoint out.

Multi-process runs go through `accelerate launch` (see `examples/accelerate/` and
`docs/training.md`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    HfArgumentParser,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import IntervalStrategy, SchedulerType, get_last_checkpoint
from transformers.training_args import OptimizerNames

from .data import (
    MAX_CONTEXT_TOKENS,
    MAX_CONVERSATION_TOKENS,
    DataError,
    ShineDataCollator,
    add_shine_special_tokens,
    check_compose_chunks,
    check_compose_method,
    load_qa_dataset,
    load_text_dataset,
    pretraining_records,
    tokenize_records,
)
from .modeling import ShineConfig, ShineError, ShineForCausalLM
from .modeling.pretrained import (
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    backbone_location,
    read_hypernetwork_state,
    try_load_tokenizer,
    weight_files,
)

__all__ = [
    "STAGE_LEARNING_RATES",
    "RichProgressCallback",
    "ShineDataArguments",
    "ShineModelArguments",
    "ShineTrainer",
    "ShineTrainingArguments",
    "TrainResult",
    "TrainingError",
    "match_embeddings_to_tokenizer",
    "parse_train_arguments",
    "train",
]

logger = logging.getLogger(__name__)

Stage = Literal["pretrain", "ift"]

STAGE_LEARNING_RATES: dict[str, float] = {"pretrain": 5e-5, "ift": 1e-5}
"""The reference AdamW learning rate of each stage, used when no learning rate is given."""

TRAINING_ARGS_NAME = "training_args.bin"
SCHEDULER_NAME = "scheduler.pt"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


class TrainingError(ShineError, ValueError):
    """A training run cannot start: bad arguments, no data samples, no backbone or tokenizer, ..."""


# --------------------------------------------------------------------------------------------
# Arguments: declared once, read by train(), the `shine train` command and the docs
# --------------------------------------------------------------------------------------------


def _check_at_least(owner: object, names: Sequence[str], minimum: float, *, strict: bool = False,
                    optional: bool = False) -> None:
    """Raise a `TrainingError` naming the first field of `owner` below `minimum` (or equal to it when
    `strict`); None passes when `optional`."""
    for name in names:
        value = getattr(owner, name)
        if value is None and optional:
            continue
        if value is None or value < minimum or (strict and value == minimum):
            bound = ("positive" if minimum == 0 else f"above {minimum:g}") if strict else f"at least {minimum:g}"
            raise TrainingError(f"{name} must be {bound}, got {value}.")


@dataclass
class ShineModelArguments:
    """Which backbone to adapt and which hypernetwork to start from (or the sizes of a new one).

    From Python, `backbone` may also be a loaded causal LM and `tokenizer` a loaded tokenizer.
    """

    backbone: str | None = field(
        default=None,
        metadata={"help": "Hub id or local path of the frozen backbone (default: the one named by --from or the "
                          "resumed checkpoint)."},
    )
    backbone_revision: str | None = field(default=None, metadata={"help": "Hub revision of the backbone."})
    backbone_dtype: str | None = field(
        default=None,
        metadata={"help": "Load the backbone in this dtype (bfloat16, float16, float32 or auto); the hypernetwork "
                          "stays float32.", "aliases": ["--dtype"]},
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "Tokenizer name or path (default: the one saved with the checkpoint or the backbone)."},
    )
    from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "shine-hf checkpoint whose hypernetwork to start from, with a fresh optimizer and schedule "
                          "(e.g. a pretraining checkpoint for instruction tuning).", "aliases": ["--from", "--model"]},
    )
    lora_rank: int | None = field(
        default=None,
        metadata={"help": f"New hypernetwork: rank r of the generated LoRA (default {ShineConfig.lora_rank})."},
    )
    metalora_rank: int | None = field(
        default=None,
        metadata={"help": f"New hypernetwork: meta-LoRA rank R (default {ShineConfig.metalora_rank})."},
    )
    m2p_num_layers: int | None = field(
        default=None,
        metadata={"help": f"New hypernetwork: M2P layers, even (default {ShineConfig.m2p_num_layers}).",
                  "aliases": ["--m2p-layers"]},
    )
    lora_scale: float | None = field(
        default=None,
        metadata={"help": f"New hypernetwork: LoRA scale s (default {ShineConfig.lora_scale:g})."},
    )

    def __post_init__(self) -> None:
        if self.backbone_dtype is not None and self.backbone_dtype != "auto":
            dtype = self.backbone_dtype
            if isinstance(dtype, str):
                dtype = getattr(torch, dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise TrainingError(f"Unknown backbone dtype {self.backbone_dtype!r}: use bfloat16, float16, "
                                    "float32 or auto.")
        try:  # ShineConfig owns the rules on hypernetwork sizes
            ShineConfig(**self.hypernetwork_config())
        except ValueError as error:
            raise TrainingError(str(error)) from error

    def hypernetwork_config(self) -> dict[str, Any]:
        """The `ShineConfig` fields given for a new hypernetwork (those left None keep their defaults)."""
        names = ("lora_rank", "metalora_rank", "m2p_num_layers", "lora_scale")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass
class ShineDataArguments:
    """What to train on and how training samples are built (see `shine_hf.data`).

    From Python, `data` and `eval_data` may also be one path or a `datasets.Dataset` (raw records, or
    samples already tokenized with `context_input_ids`, `input_ids` and `labels`).
    """

    data: list[str] = field(
        metadata={"help": "Training data: QA JSON/JSONL (ift) or a text corpus (.txt, JSON/JSONL with --text-column, "
                          "a directory) for pretraining. Repeat for several files."},
    )
    stage: Stage = field(
        default="ift",
        metadata={"help": "pretrain (reconstruction/completion on text) or ift (instruction tuning on QA)."},
    )
    eval_data: list[str] | None = field(
        default=None, metadata={"help": "Evaluation data, same kinds as --data (periodic eval loss)."}
    )
    eval_fraction: float = field(
        default=0.0, metadata={"help": "Instead of --eval-data, hold out this fraction of the data (seeded)."}
    )
    text_column: str = field(default="text", metadata={"help": "Text field of JSON/JSONL pretraining data."})
    max_context_tokens: int | None = field(
        default=MAX_CONTEXT_TOKENS,
        metadata={"help": "Context budget in tokens; longer contexts are cut (and never exceed the backbone's "
                          "positions minus the memory tokens)."},
    )
    max_conversation_tokens: int | None = field(
        default=MAX_CONVERSATION_TOKENS,
        metadata={"help": "Conversation budget in tokens; later turns are dropped to fit."},
    )
    split_qa: bool = field(default=False, metadata={"help": "ift: one sample per QA pair instead of one per record."})
    shuffle_qa: bool = field(
        default=False,
        metadata={"help": "ift: ask each record's questions in a random (seeded) order; recommended when every "
                          "record lists its questions in the same order."},
    )
    pack_contexts: bool = field(default=False, metadata={"help": "Pack consecutive short records into one sample."})
    compose_chunks: int = field(
        default=1,
        metadata={"help": "ift, composition-aware training: each sample groups 1..K records (sampled, seeded) as the "
                          "chunks of one document, their LoRAs are composed with --compose-method inside the graph, "
                          "and its conversation asks the questions of every chunk, shuffled; K = this value (1: off)."},
    )
    compose_method: str = field(
        default="concat",
        metadata={"help": "How --compose-chunks composes a sample's chunk LoRAs: concat (their sum) or mean "
                          "(their average); use the same rule with internalize(compose=...)."},
    )

    def __post_init__(self) -> None:
        if self.stage not in STAGE_LEARNING_RATES:
            raise TrainingError(f"stage must be 'pretrain' or 'ift', not {self.stage!r}.")
        if not 0 <= self.eval_fraction < 1:
            raise TrainingError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}.")
        if self.eval_fraction and self.eval_data is not None:
            raise TrainingError("Pass eval_data or eval_fraction, not both.")
        _check_at_least(self, ("max_context_tokens", "max_conversation_tokens"), 1, optional=True)
        try:
            check_compose_chunks(self.compose_chunks, split_qa=self.split_qa, pack_contexts=self.pack_contexts)
            check_compose_method(self.compose_method)
        except DataError as error:
            raise TrainingError(str(error)) from error
        if self.compose_chunks > 1 and self.stage != "ift":
            raise TrainingError("compose_chunks > 1 groups QA records: it needs stage 'ift'.")


@dataclass
class ShineTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments` with SHINE's reference defaults; every other field works as usual.

    Besides the defaults: `learning_rate=None` takes the stage's reference rate
    (`STAGE_LEARNING_RATES`, filled in by `train`); `max_warmup_fraction` caps the warmup of short
    runs; `group_by_length=True` is short for `train_sampling_strategy="group_by_length"`;
    `report_to` also takes a comma-separated list; sizes and step counts are checked (a
    `TrainingError` names the first bad one), and the `ValueError`s of `TrainingArguments` itself
    become `TrainingError`s.
    """

    output_dir: str = field(kw_only=True, metadata={"help": "Where checkpoints, logs and the final checkpoint go."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Resume an interrupted run: a checkpoint-N directory, or 'latest' for the last one in "
                          "the output directory (the Python API also takes True)."},
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "AdamW learning rate (default: the stage's reference rate, "
                          + ", ".join(f"{rate:g} {stage}" for stage, rate in STAGE_LEARNING_RATES.items()) + ")."},
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases and norm weights)."})
    warmup_steps: float = field(
        default=2000,
        metadata={"help": "Linear warmup steps (a float in [0, 1): a fraction of the run), capped by "
                          "--max-warmup-fraction."},
    )
    max_warmup_fraction: float | None = field(
        default=0.1,
        metadata={"help": "Cap the warmup at this fraction of the run's optimizer steps, so a short run is not all "
                          "warmup (1 or None: no cap)."},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (global norm); 0 disables it."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Micro-batches per optimizer step."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Samples per device per micro-batch."})
    per_device_eval_batch_size: int | None = field(
        default=None, metadata={"help": "Evaluation batch size per device (default: the training batch size)."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Training epochs (unless --max-steps is set)."})
    max_steps: int = field(
        default=-1, metadata={"help": "Stop after this many optimizer steps (overrides the epochs); -1: use epochs."}
    )
    optim: OptimizerNames | str = field(default="adamw_torch", metadata={"help": "Optimizer (AdamW, torch)."})
    lr_scheduler_type: SchedulerType | str = field(
        default="linear", metadata={"help": "Learning-rate schedule after the warmup."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log the loss every N optimizer steps."})
    eval_steps: float | None = field(
        default=None, metadata={"help": "Eval loss every N optimizer steps when there is eval data (default: "
                                        "--save-steps)."}
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "Batch samples of similar length (context + conversation tokens)."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the SHINE collator selects its own keys."}
    )
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation computes the loss only."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every hypernetwork parameter gets a gradient every step."}
    )
    dataloader_pin_memory: bool = field(
        default_factory=torch.cuda.is_available, metadata={"help": "Pin data-loader memory (default: with CUDA)."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.report_to, str) and "," in self.report_to:
            self.report_to = [name.strip() for name in self.report_to.split(",") if name.strip()]
        if self.per_device_eval_batch_size is None:
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        _check_at_least(self, ("per_device_train_batch_size", "per_device_eval_batch_size",
                               "gradient_accumulation_steps"), 1)
        _check_at_least(self, ("logging_steps", "save_steps"), 0, strict=True)
        _check_at_least(self, ("learning_rate", "eval_steps"), 0, strict=True, optional=True)
        _check_at_least(self, ("save_total_limit",), 1, optional=True)
        _check_at_least(self, ("warmup_steps", "weight_decay", "max_grad_norm"), 0)
        if self.max_steps <= 0 and self.max_steps != -1:
            raise TrainingError(f"max_steps must be positive (or -1: use num_train_epochs), got {self.max_steps}.")
        if self.max_steps == -1:
            _check_at_least(self, ("num_train_epochs",), 0, strict=True)
        if self.max_warmup_fraction is not None and not 0 <= self.max_warmup_fraction <= 1:
            raise TrainingError(f"max_warmup_fraction must be in [0, 1], got {self.max_warmup_fraction}.")
        try:
            super().__post_init__()
        except ValueError as error:
            if isinstance(error, ShineError):
                raise
            raise TrainingError(f"Invalid training arguments: {error}") from error

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """`warmup_steps`, capped at `max_warmup_fraction` of the run's optimizer steps."""
        steps = super().get_warmup_steps(num_training_steps)
        if self.max_warmup_fraction is None:
            return steps
        return min(steps, math.floor(self.max_warmup_fraction * num_training_steps))


ARGUMENT_CLASSES = (ShineModelArguments, ShineDataArguments, ShineTrainingArguments)
"""The three argument dataclasses, in the order `train` takes them."""


def parse_train_arguments(
    values: Mapping[str, Any],
) -> tuple[ShineModelArguments, ShineDataArguments, ShineTrainingArguments]:
    """Build the three argument dataclasses from one flat mapping of field values
    (`transformers.HfArgumentParser.parse_dict`); an unknown name is a `TypeError`."""
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"Unknown training argument(s): {', '.join(unknown)}.")
    return HfArgumentParser(ARGUMENT_CLASSES).parse_dict(dict(values))


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
      recomputation (FSDP's own `activation_checkpointing` would not, and is refused).

    With `ShineTrainingArguments`, the warmup is also capped at `max_warmup_fraction` of the run.

    Args:
        model: The SHINE model (its tokenizer is the default `processing_class`).
        args: Training arguments (`ShineTrainingArguments` for SHINE's reference defaults; its
            `learning_rate` must then be set, `train` sets it from the stage).
        data_collator: Defaults to `ShineDataCollator(processing_class)`.
        train_dataset: Tokenized SHINE samples (`shine_hf.data.build_qa_dataset` /
            `build_pretraining_dataset`).
        eval_dataset: Same, for the periodic eval loss.
        processing_class: The tokenizer; defaults to `model.tokenizer`. Saved in every checkpoint.
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
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, ShineForCausalLM):
            raise TypeError(f"ShineTrainer trains a ShineForCausalLM, not {type(model).__name__}.")
        if args is not None and args.learning_rate is None:
            raise TrainingError("learning_rate is None: set it (train() takes the stage's reference rate).")
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


def _is_tokenized(dataset: Any) -> bool:
    columns = getattr(dataset, "column_names", None) or []
    return {"context_input_ids", "input_ids", "labels"} <= set(columns)


def _data_source(data: Any) -> Any:
    """One path, several paths or a `Dataset` as `shine_hf.data` takes them."""
    if isinstance(data, (list, tuple)) and len(data) == 1:
        return data[0]
    return data


def _load_records(data: Any, data_args: ShineDataArguments, seed: int, what: str) -> Any:
    """Raw records in the QA schema (pretraining: RECON/COMP records), before any model is loaded,
    so that bad data fails fast; an already tokenized `Dataset` passes through."""
    if _is_tokenized(data):
        return data
    source = _data_source(data)
    if data_args.stage == "pretrain":
        records = pretraining_records(load_text_dataset(source, text_column=data_args.text_column), seed=seed)
    else:
        records = load_qa_dataset(source)
    if len(records) == 0:
        raise TrainingError(f"{what} holds no records.")
    return records


def _tokenize(records: Any, tokenizer: Any, data_args: ShineDataArguments, max_context_tokens: int | None,
              seed: int, what: str) -> Any:
    if _is_tokenized(records):
        return records
    qa_options = {}
    if data_args.stage == "ift":
        qa_options = {"split_qa": data_args.split_qa, "shuffle_qa": data_args.shuffle_qa,
                      "compose_chunks": data_args.compose_chunks}
    dataset, _ = tokenize_records(
        records, tokenizer, max_context_tokens=max_context_tokens,
        max_conversation_tokens=data_args.max_conversation_tokens, pack_contexts=data_args.pack_contexts, seed=seed,
        **qa_options,
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


def _arguments(
    model_args: ShineModelArguments | None,
    data_args: ShineDataArguments | None,
    training_args: ShineTrainingArguments | None,
    fields: Mapping[str, Any],
) -> tuple[ShineModelArguments, ShineDataArguments, ShineTrainingArguments]:
    given = (model_args, data_args, training_args)
    if fields:
        if any(a is not None for a in given):
            raise TypeError("Pass either the three argument dataclasses or their fields as keywords, not both.")
        return parse_train_arguments(fields)
    if any(a is None for a in given):
        raise TypeError("train() needs model_args, data_args and training_args (or their fields as keywords).")
    return model_args, data_args, training_args


def train(
    model_args: ShineModelArguments | None = None,
    data_args: ShineDataArguments | None = None,
    training_args: ShineTrainingArguments | None = None,
    *,
    callbacks: Sequence[TrainerCallback] | None = None,
    **fields: Any,
) -> TrainResult:
    """Train a SHINE hypernetwork: pretraining (`stage="pretrain"`) or instruction tuning (`"ift"`).

    Either pass the three argument dataclasses, or their fields as keywords (split among them by
    `parse_train_arguments`):

        train(ShineModelArguments(backbone="Qwen/Qwen3-8B"), ShineDataArguments(data=["qa.jsonl"]),
              ShineTrainingArguments(output_dir="runs/ift"))
        train(backbone="Qwen/Qwen3-8B", data="qa.jsonl", output_dir="runs/ift", max_steps=1000)

    The defaults are SHINE's reference settings (see `ShineTrainingArguments`). The effective batch
    is `per_device_train_batch_size × gradient_accumulation_steps × number of processes`.

    What happens:

    1. The data is read and checked (`shine_hf.data`: a text corpus for pretraining, QA records for
       ift; an already tokenized `Dataset` is used as is), before any model is loaded.
    2. The backbone is loaded (by name/path, or taken as given) and frozen. With neither a
       backbone nor a checkpoint naming one, this fails.
    3. `stage="pretrain"` adds the `<RECON>`/`<COMP>` special tokens to the tokenizer. Whenever
       the tokenizer then has more tokens than the backbone has embedding rows, rows are added
       (`match_embeddings_to_tokenizer`: mean of the existing rows, deterministic, never trained,
       as in the reference, which trains only the hypernetwork). A backbone passed in loaded is
       modified in place.
    4. The hypernetwork is new (sizes from `ShineModelArguments`), or loaded from
       `from_checkpoint` (e.g. a pretraining checkpoint to instruction-tune: a fresh optimizer and
       schedule), or from the checkpoint being resumed (`resume_from_checkpoint`: a `checkpoint-N`
       directory, or `"latest"` / True for the last one in `output_dir`).
    5. Samples are tokenized; contexts longer than `max_context_tokens` (and than the backbone's
       positions minus the memory tokens) are truncated, counted and logged. With
       `compose_chunks=K > 1` each sample groups 1..K records as chunks whose LoRAs are composed
       (`compose_method`) inside the graph (`shine_hf.data.group_records`).
    6. `ShineTrainer` trains; `checkpoint-N/` directories every `save_steps` optimizer steps are
       shine-hf checkpoints plus Trainer state; with `eval_data` or `eval_fraction` an eval loss is
       computed every `eval_steps` (default: `save_steps`).
    7. The final checkpoint (hypernetwork, config, code, card, tokenizer) is written to
       `output_dir`, loadable with `ShineForCausalLM.from_pretrained(output_dir, backbone=...)`.

    Args:
        model_args, data_args, training_args: The run's arguments.
        callbacks: Extra `TrainerCallback`s.
        **fields: Instead of the dataclasses, any of their fields by name.

    Returns:
        A `TrainResult` (model, trainer, output directory, final metrics).

    Raises:
        TrainingError: bad arguments, no backbone or tokenizer, no samples.
        DataError (`shine_hf.data`): data that cannot be read or has the wrong columns.
        BackboneMismatchError / CheckpointError: the checkpoint does not fit the backbone or is
            unreadable.
    """
    model_args, data_args, training_args = _arguments(model_args, data_args, training_args, fields)
    output_dir = Path(training_args.output_dir)
    seed = training_args.seed
    resume = _resolve_resume(training_args.resume_from_checkpoint, output_dir)
    source = resume or (str(model_args.from_checkpoint) if model_args.from_checkpoint is not None else None)
    source_config = None
    if source is not None:
        try:
            source_config = ShineConfig.from_pretrained(source)
        except OSError as error:
            raise TrainingError(f"Cannot read the SHINE checkpoint {source}: {error}") from error
        if model_args.hypernetwork_config():
            logger.warning("The new-hypernetwork sizes are ignored: the hypernetwork comes from %s.", source)

    # 1. data, checked before any model work
    train_records = _load_records(data_args.data, data_args, seed, "Training data")
    eval_records = None
    if data_args.eval_data is not None:
        eval_records = _load_records(data_args.eval_data, data_args, seed, "Evaluation data")
    updates: dict[str, Any] = {}
    if training_args.learning_rate is None:
        updates["learning_rate"] = STAGE_LEARNING_RATES[data_args.stage]
    has_eval = eval_records is not None or data_args.eval_fraction > 0
    if has_eval and training_args.eval_strategy == IntervalStrategy.NO:
        updates.update(eval_strategy="steps", eval_steps=training_args.eval_steps or training_args.save_steps)
    if updates:
        training_args = dataclasses.replace(training_args, **updates)

    # 2. backbone
    backbone = model_args.backbone
    backbone_revision = model_args.backbone_revision
    if backbone is None:
        if source_config is None or not source_config.backbone_name_or_path:
            raise TrainingError("No backbone: pass backbone= (a model, Hub id or path) or a checkpoint that names one.")
        # a local path in a checkpoint's config is relative to that checkpoint
        backbone = backbone_location(source_config.backbone_name_or_path, str(source))
        backbone_revision = backbone_revision or source_config.backbone_revision
    backbone_name: str | None = None
    if isinstance(backbone, (str, os.PathLike)):
        backbone_name = str(backbone)
        backbone = AutoModelForCausalLM.from_pretrained(backbone_name, revision=backbone_revision,
                                                        dtype=model_args.backbone_dtype)
    else:
        backbone_name = getattr(backbone, "name_or_path", None) or None

    # 3. tokenizer and special tokens
    tokenizer = model_args.tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = try_load_tokenizer(str(tokenizer), None, backbone.config)
        if tokenizer is None:
            raise TrainingError(f"Cannot load the tokenizer {model_args.tokenizer}.")
    elif tokenizer is None:
        tokenizer = try_load_tokenizer(source, None, backbone.config) or try_load_tokenizer(
            backbone_name, backbone_revision, backbone.config
        )
        if tokenizer is None:
            raise TrainingError("No tokenizer found next to the checkpoint or the backbone: pass tokenizer=.")
    if data_args.stage == "pretrain":
        add_shine_special_tokens(tokenizer)

    # 4. model
    if source is not None:
        model = ShineForCausalLM.from_pretrained(source, backbone=backbone, tokenizer=tokenizer)
    else:
        model = ShineForCausalLM.from_backbone(backbone, tokenizer=tokenizer, **model_args.hypernetwork_config())
    model.tokenizer = tokenizer
    match_embeddings_to_tokenizer(model, tokenizer)
    model.hypernetwork.float()
    model.train()

    # 5. samples
    limits = [n for n in (model.max_context_tokens, data_args.max_context_tokens) if n is not None]
    context_limit = min(limits) if limits else None
    train_dataset = _tokenize(train_records, tokenizer, data_args, context_limit, seed, "Training data")
    eval_dataset = None
    if eval_records is not None:
        eval_dataset = _tokenize(eval_records, tokenizer, data_args, context_limit, seed, "Evaluation data")
    elif data_args.eval_fraction > 0:
        try:
            split = train_dataset.train_test_split(test_size=data_args.eval_fraction, seed=seed)
        except ValueError as error:
            raise TrainingError(f"Cannot hold out eval_fraction={data_args.eval_fraction} of "
                                f"{len(train_dataset)} samples: {error}") from error
        train_dataset, eval_dataset = split["train"], split["test"]

    # 6. train
    collator = ShineDataCollator(tokenizer, compose_method=data_args.compose_method)
    trainer = ShineTrainer(model, training_args, data_collator=collator, train_dataset=train_dataset,
                           eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=list(callbacks or []))
    output = trainer.train(resume_from_checkpoint=resume)

    # 7. final checkpoint
    trainer.save_model(str(output_dir))
    trainer.save_state()
    return TrainResult(model=model, trainer=trainer, output_dir=output_dir, metrics=dict(output.metrics))
