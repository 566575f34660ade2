"""The fine-tuning baseline: a PEFT LoRA trained on the document itself, then asked without it.

For each document a LoRA of the same rank and on the same target modules as SHINE's generated
adapters is trained with the reconstruction objective — next-token loss on every token of the
document, i.e. the model learns to reproduce the document (SHINE's ``<RECON>`` pretraining task
without the hypernetwork) — for ``SftConfig.steps`` full-batch AdamW steps. The questions are then
asked without the document, with the baselines' system prompt (the question-only prompt), so the
difference from question-only is the LoRA's alone.

The backbone is wrapped in PEFT once (``peft.get_peft_model``) and every document starts from the
same seeded LoRA initialisation (PEFT's: B = 0, so the first loss is the backbone's own); leaving
the ``DocumentFineTuner`` block unloads PEFT and gives back the unmodified backbone modules.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..modeling.errors import InvalidInputError
from ..modeling.inputs import pad_token_ids

__all__ = ["DocumentFineTuner", "SftConfig", "SftRun"]

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SftConfig:
    """Hyper-parameters of the fine-tuning baseline.

    Attributes:
        steps: AdamW steps per document (each over the whole document).
        learning_rate: AdamW learning rate (no weight decay, constant).
        lora_alpha: PEFT ``lora_alpha``; None: equal to the rank (scaling 1, like the generated
            adapters).
        max_length: Documents longer than this many tokens are cut into chunks of it, trained on
            as one batch; None: the backbone's ``max_position_embeddings`` (else 1024).
    """

    steps: int = 30
    learning_rate: float = 1e-3
    lora_alpha: float | None = None
    max_length: int | None = None

    def validate(self) -> None:
        if self.steps < 1:
            raise InvalidInputError(f"SFT steps must be at least 1, not {self.steps}.")
        if not self.learning_rate > 0:
            raise InvalidInputError(f"The SFT learning rate must be positive, not {self.learning_rate}.")
        if self.max_length is not None and self.max_length < 2:
            raise InvalidInputError(f"The SFT max_length must be at least 2, not {self.max_length}.")


@dataclass
class SftRun:
    """One document's fine-tuning: the loss before every step and the tokens processed."""

    losses: list[float]
    tokens: int


class DocumentFineTuner:
    """Trains a fresh LoRA on one document at a time; use as a context manager.

    Inside the block the backbone carries the PEFT LoRA (``generate`` answers with it).

    Args:
        backbone: The causal LM (a ``ShineForCausalLM``'s ``backbone``); wrapped in place and
            restored on exit.
        rank: LoRA rank r.
        target_modules: Module paths relative to a decoder layer (``model.targets`` names).
        config: Steps, learning rate, alpha, chunk length.
        seed: Seeds the LoRA initialisation, the same for every document.
        fan_in_fan_out: True for GPT-2 style ``Conv1D`` targets.
    """

    def __init__(self, backbone: Any, *, rank: int, target_modules: Sequence[str], config: SftConfig,
                 seed: int = 0, fan_in_fan_out: bool = False):
        config.validate()
        self.backbone = backbone
        self.config = config
        self.seed = seed
        self.lora_config_kwargs = dict(r=rank, lora_alpha=config.lora_alpha or rank, lora_dropout=0.0,
                                       target_modules=list(target_modules), fan_in_fan_out=fan_in_fan_out,
                                       bias="none", task_type="CAUSAL_LM")
        positions = getattr(backbone.config, "max_position_embeddings", None)
        self.max_length = config.max_length or positions or 1024
        self.peft_model: Any = None

    def __enter__(self) -> DocumentFineTuner:
        from peft import LoraConfig, get_peft_model

        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # PEFT reads the deprecated `is_gradient_checkpointing` property of transformers 5 models
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            torch.manual_seed(self.seed)
            self.peft_model = get_peft_model(self.backbone, LoraConfig(**self.lora_config_kwargs))
        self.parameters = [p for p in self.peft_model.parameters() if p.requires_grad]
        self.initial = [p.detach().clone() for p in self.parameters]
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.peft_model.unload()  # the original modules go back in place, without merging
        self.peft_model = None

    def fine_tune(self, document_ids: Sequence[int]) -> SftRun:
        """Reset the LoRA to its initialisation and train it on one document's token ids."""
        if self.peft_model is None:
            raise RuntimeError("DocumentFineTuner.fine_tune must run inside its `with` block.")
        chunks = [list(document_ids[i:i + self.max_length]) for i in range(0, len(document_ids), self.max_length)]
        input_ids, attention_mask = pad_token_ids(chunks, pad_id=0, side="right")
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        device = self.backbone.get_input_embeddings().weight.device
        input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
        with torch.no_grad():
            for parameter, initial in zip(self.parameters, self.initial):
                parameter.copy_(initial)
        optimizer = torch.optim.AdamW(self.parameters, lr=self.config.learning_rate, weight_decay=0.0)
        losses = []
        with torch.enable_grad():
            for _ in range(self.config.steps):
                loss = self.peft_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
        return SftRun(losses, self.config.steps * int(attention_mask.sum()))

