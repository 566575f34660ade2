"""SHINE: a hypernetwork that writes a LoRA for a frozen causal LM from a context, in one pass.

`ShineForCausalLM` wraps an unmodified transformers causal LM (`model.backbone`) and a
`ShineHypernetwork` (memory tokens, meta-LoRA, M2P; `hypernetwork.py`). LoRAs reach the backbone
through forward hooks on its target projections (`lora.py`), so one code path serves training,
inference, generation with the KV cache and a batch of different adapters.

This file is the model's computation: construction around a backbone, `internalize` (context ->
adapter), `forward` and `generate` with an adapter. Checkpoint I/O lives in `pretrained.py`, prompt
text in `prompting.py`, input checking in `inputs.py`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging

from .adapter import ShineAdapter
from .chunking import check_chunking, split_ids, split_text
from .composition import compose_groups, composition_weights, select_rows, stack_loras
from .configuration_shine import ShineConfig
from .errors import BackboneMismatchError, IncompatibleAdapterError, InvalidInputError
from .hypernetwork import ShineHypernetwork, right_align
from .inputs import context_tensors, default_batch_tokens, length_buckets
from .lora import LoraDict, LoraInjector, TargetModule, available_memory, can_fold, discover_target_modules
from .pretrained import ShinePreTrainedModel, try_load_tokenizer
from .prompting import TextGenerationMixin


class ShineForCausalLM(ShinePreTrainedModel, TextGenerationMixin, GenerationMixin):
    """A SHINE hypernetwork around a frozen transformers causal LM.

    Build a new one with `from_backbone`, load a trained one with `from_pretrained`. Then:

    ```python
    adapter = model.internalize("The contract was signed by Alice in Lyon.")
    model.generate_text("Who signed the contract?", adapter=adapter)
    adapter.save_pretrained("contract-lora")  # a standard PEFT adapter
    ```

    Args:
        config: The SHINE configuration.
        backbone: The loaded backbone. If omitted, one is built from `config.backbone_config`
            with random weights (what `from_pretrained` replaces with the real backbone).
    """

    def __init__(self, config: ShineConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        config.validate()
        if backbone is None:
            backbone = AutoModelForCausalLM.from_config(config.get_backbone_config())
        layers_path, targets = discover_target_modules(backbone, config.target_modules)
        _check_backbone_matches(config, backbone, layers_path, targets)
        self.layers_path = layers_path
        self.targets = targets
        self.hypernetwork = ShineHypernetwork(config)
        # Initialise before the backbone is attached, so its (pretrained) weights are never touched.
        self.post_init()
        device = backbone.get_input_embeddings().weight.device
        if device.type != "meta":  # a meta backbone (conversion) keeps the hypernetwork real
            self.hypernetwork.to(device)
        backbone.requires_grad_(False)
        self.backbone = backbone
        self.lora_injector = LoraInjector(backbone, layers_path, targets)
        self.tokenizer = None
        # Reading without gradients: fold the meta-LoRA into cached copies of the target weights (True),
        # apply it as low-rank matmuls (False), or fold when the copies take at most half of the memory
        # still free on the backbone's device ("auto"). Same results to float32 rounding.
        self.meta_lora_folding: bool | str = "auto"
        # Most tokens (context + memory tokens, padding included) that one reading pass of internalize
        # takes; longer batches are read in length-sorted buckets. None: `default_batch_tokens(device)`.
        self.internalize_batch_tokens: int | None = None
        self.generation_config = getattr(backbone, "generation_config", self.generation_config)

    @classmethod
    def from_backbone(
        cls,
        backbone: PreTrainedModel | str | os.PathLike,
        tokenizer: Any = None,
        *,
        revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        target_modules: list[str] | None = None,
        **config_kwargs: Any,
    ) -> ShineForCausalLM:
        """A new, untrained hypernetwork around `backbone` (frozen).

        Args:
            backbone: A loaded transformers causal LM, or its Hub id / local path.
            tokenizer: The backbone's tokenizer. Loaded from the backbone's path when omitted and
                possible.
            revision: Backbone revision when loading by name.
            dtype: Backbone dtype when loading by name.
            target_modules: Projections to adapt (paths relative to a decoder layer); discovered
                when omitted.
            **config_kwargs: Other `ShineConfig` fields (`lora_rank`, `metalora_rank`, ...).
        """
        if isinstance(backbone, (str, os.PathLike)):
            name = str(backbone)
            backbone = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=dtype)
        else:
            name = getattr(backbone, "name_or_path", None) or getattr(backbone.config, "_name_or_path", None)
        if name and os.path.isdir(name):
            name = os.path.abspath(name)  # in memory a local backbone is an absolute path (see save_pretrained)
        if tokenizer is None and name:
            tokenizer = try_load_tokenizer(name, revision)
        layers_path, targets = discover_target_modules(backbone, target_modules)
        config = ShineConfig(
            backbone_name_or_path=name or None,
            backbone_revision=revision,
            backbone_config=backbone.config.to_dict(),
            target_modules=[t.name for t in targets],
            target_module_shapes={t.name: [t.in_features, t.out_features, int(t.has_bias)] for t in targets},
            layers_path=layers_path,
            **{**_special_token_ids(backbone), **config_kwargs},
        )
        model = cls(config, backbone=backbone)
        model.tokenizer = tokenizer
        return model

    # ------------------------------------------------------------------ internalize
    @property
    def max_context_tokens(self) -> int | None:
        """Longest context (in tokens) that fits with the memory tokens, if the backbone has a limit."""
        limit = getattr(self.backbone.config, "max_position_embeddings", None)
        return None if limit is None else limit - self.config.num_memory_tokens

    def internalize(
        self,
        context: Any = None,
        attention_mask: Any = None,
        *,
        input_ids: Any = None,
        token_type_ids: Any = None,
        requires_grad: bool = False,
        chunk_tokens: int | None = None,
        overlap_tokens: int = 0,
        compose: str | None = "concat",
        chunk_batch_size: int = 8,
        show_progress: bool | None = None,
    ) -> ShineAdapter:
        """Read context(s) once and return their generated LoRA(s), one adapter per context.

        Args:
            context: A string, a list of strings (tokenized with a plain tokenizer call, no chat
                template), token ids (an integer tensor (B, N) or (N), a list of ids or a list of
                id lists), or a tokenizer output (`BatchEncoding` / mapping with `input_ids` and
                `attention_mask`).
            attention_mask: Mask for token-id input (1 = token, 0 = padding; either side).
            input_ids: Token ids by keyword, so `internalize(**tokenizer(text, return_tensors="pt"))`
                works; instead of `context`.
            token_type_ids: Ignored (decoder-only backbones do not use them); accepted so a
                tokenizer's output can be unpacked into this call.
            requires_grad: Keep the autograd graph (training). Default: no_grad.
            chunk_tokens: Read long documents in chunks of at most this many tokens (cut at sentence
                ends where possible, see `chunking.py`); each chunk gets its LoRA and the chunks of a
                document are composed into one adapter. Default: no chunking (a context longer than
                the backbone allows is an error).
            overlap_tokens: Tokens shared by consecutive chunks.
            compose: How a document's chunk adapters become one: "concat" (ranks stacked: the exact
                sum of the chunk deltas), "mean" (their average), or None to return the chunk
                adapters themselves (one document only). See `ShineAdapter.compose`.
            chunk_batch_size: Chunks read per forward pass; memory is bounded by this, since only the
                small LoRA of each chunk is kept.
            show_progress: A progress bar over chunks (default: when there is more than one batch).

        Raises:
            InvalidInputError: a context of the wrong type, float or out-of-vocabulary ids, a mask
                of the wrong shape.
            EmptyContextError: a context has no tokens.
            ContextTooLongError: a context plus the memory tokens exceeds the backbone's positions.
        """
        if input_ids is not None:
            if context is not None:
                raise InvalidInputError("Pass the context either positionally or as input_ids=, not both.")
            context = input_ids
        elif context is None:
            raise InvalidInputError("No context given: pass a string, a list of strings or token ids.")
        if chunk_tokens is not None:
            return self._internalize_in_chunks(context, attention_mask, chunk_tokens, overlap_tokens, compose,
                                               chunk_batch_size, show_progress, requires_grad)
        input_ids, attention_mask = context_tensors(
            context,
            attention_mask,
            tokenizer=self.tokenizer,
            vocab_size=self.backbone.get_input_embeddings().num_embeddings,
            max_tokens=self.max_context_tokens,
            num_memory_tokens=self.config.num_memory_tokens,
        )
        with torch.set_grad_enabled(requires_grad):
            lora = self._read(input_ids, attention_mask, requires_grad)
        return ShineAdapter(lora, self.targets, self.layers_path, self.config.backbone_name_or_path,
                            self.config.backbone_revision)

    def _read(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, requires_grad: bool) -> LoraDict:
        """The hypernetwork over contexts bucketed by length, at most `internalize_batch_tokens` tokens
        (context + memory, padding included) per forward pass; rows come back in their order."""
        fold = self._fold_meta_lora(requires_grad)
        device = self.backbone.get_input_embeddings().weight.device
        budget = self.internalize_batch_tokens or default_batch_tokens(device)
        lengths = attention_mask.sum(dim=1).tolist()
        buckets = length_buckets(lengths, budget, self.config.num_memory_tokens)
        loras = []
        for rows in buckets:
            index = torch.tensor(rows, device=input_ids.device)
            ids, mask = right_align(input_ids[index], attention_mask[index])
            width = int(mask.sum(dim=1).max())
            loras.append(self.hypernetwork(self.lora_injector, ids[:, :width], mask[:, :width], fold_meta_lora=fold))
        order = [row for rows in buckets for row in rows]
        if len(loras) == 1 and order == sorted(order):
            return loras[0]
        return select_rows(stack_loras(loras), torch.tensor(order).argsort().tolist())

    def _internalize_in_chunks(self, context: Any, attention_mask: Any, chunk_tokens: int, overlap_tokens: int,
                               compose: str | None, chunk_batch_size: int, show_progress: bool | None,
                               requires_grad: bool) -> ShineAdapter:
        """Split every document into chunks, read them `chunk_batch_size` at a time and compose each
        document's chunk LoRAs (see `internalize`)."""
        check_chunking(chunk_tokens, overlap_tokens, self.max_context_tokens)
        if compose is not None:
            composition_weights(compose, 1)  # an unknown method fails before any work
        if isinstance(chunk_batch_size, bool) or not isinstance(chunk_batch_size, int) or chunk_batch_size < 1:
            raise InvalidInputError(f"chunk_batch_size must be a positive integer, got {chunk_batch_size!r}.")
        documents = [context] if isinstance(context, str) else context
        if isinstance(documents, (list, tuple)) and documents and all(isinstance(d, str) for d in documents):
            if attention_mask is not None:
                raise InvalidInputError("attention_mask applies to token ids, not to string contexts.")
            tokenizer = self._require_tokenizer()
            context_tensors(list(documents), tokenizer=tokenizer)  # empty documents fail here, before any work
            per_document = [split_text(doc, tokenizer, chunk_tokens, overlap_tokens) for doc in documents]
        else:
            ids, mask = context_tensors(context, attention_mask, tokenizer=self.tokenizer,
                                        vocab_size=self.backbone.get_input_embeddings().num_embeddings)
            rows = [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]
            per_document = [split_ids(row, chunk_tokens, overlap_tokens, self.tokenizer) for row in rows]
        if compose is None and len(per_document) > 1:
            raise InvalidInputError("compose=None returns one document's chunk adapters: pass one document.")
        chunks = [chunk for doc_chunks in per_document for chunk in doc_chunks]
        steps = range(0, len(chunks), chunk_batch_size)
        show = len(steps) > 1 if show_progress is None else show_progress
        loras = []
        for start in logging.tqdm(steps, desc="Internalizing chunks", unit="batch", disable=not show):
            batch = chunks[start : start + chunk_batch_size]
            loras.append(self.internalize(batch, requires_grad=requires_grad).lora)
        lora = stack_loras(loras)
        if compose is not None:
            groups, first = [], 0
            for doc_chunks in per_document:
                groups.append(list(range(first, first + len(doc_chunks))))
                first += len(doc_chunks)
            lora = compose_groups(lora, groups, compose)
        return ShineAdapter(lora, self.targets, self.layers_path, self.config.backbone_name_or_path,
                            self.config.backbone_revision)

    def _fold_meta_lora(self, requires_grad: bool) -> bool:
        """Whether the reading pass uses folded copies of the target weights (see `meta_lora_folding`)."""
        mode = self.meta_lora_folding
        if mode not in ("auto", True, False):
            raise InvalidInputError(f"meta_lora_folding must be 'auto', True or False, not {mode!r}.")
        if mode is False or requires_grad or self.hypernetwork.training:
            return False
        modules = [module for _, _, module in self.lora_injector.modules()]
        if not all(can_fold(module) for module in modules):
            return False  # quantized or offloaded projections: only the low-rank path applies
        if mode is True or "_folded_meta_lora" in self.hypernetwork.__dict__:
            return True
        copy_bytes = sum(m.weight.numel() * m.weight.element_size() for m in modules)
        return copy_bytes <= 0.5 * available_memory(modules[0].weight.device)

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise InvalidInputError(
                "This model has no tokenizer: pass token ids, or set model.tokenizer "
                "(or pass tokenizer= to from_backbone/from_pretrained)."
            )
        return self.tokenizer

    # ------------------------------------------------------------------ applying adapters
    def _lora_for(self, adapter: ShineAdapter | None, batch_size: int | None = None) -> LoraDict | None:
        """The adapter's LoRA on the backbone's device, after checking it fits the backbone and a batch
        of `batch_size` rows (one adapter for all rows, or one per row)."""
        if adapter is None:
            return None
        if not isinstance(adapter, ShineAdapter):
            hint = (" A routed adapter picks one adapter per question: use generate_text, or pass "
                    "adapter.adapters_for(questions)." if hasattr(adapter, "adapters_for") else "")
            raise InvalidInputError(f"adapter must be a ShineAdapter, got {type(adapter).__name__}.{hint}")
        adapter.check_compatible(self.layers_path, self.targets, self.config.num_hidden_layers)
        if batch_size is not None and len(adapter) not in (1, batch_size):
            raise IncompatibleAdapterError(
                f"An adapter batch of {len(adapter)} does not fit an input batch of {batch_size} rows: pass one "
                f"adapter (used for every row) or one per row (ShineAdapter.stack / adapter[i], or adapter_index= "
                f"in generate_text)."
            )
        device = self.backbone.get_input_embeddings().weight.device
        if adapter.device != device:
            adapter = adapter.to(device)
        return adapter.lora

    @contextlib.contextmanager
    def use_adapter(self, adapter: ShineAdapter | None) -> Iterator[PreTrainedModel]:
        """Apply `adapter` to every backbone call inside the block; yields the backbone.

        An adapter batch of b > 1 maps contiguous groups of rows to adapters (k*b rows: rows
        [i*k, (i+1)*k) use adapter i), as `generate` expands rows for beams."""
        with self.lora_injector.activate(self._lora_for(adapter)):
            yield self.backbone

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        adapter: ShineAdapter | None = None,
        context_input_ids: torch.LongTensor | None = None,
        context_attention_mask: torch.Tensor | None = None,
        context_sample_index: torch.LongTensor | None = None,
        context_compose: str = "concat",
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Backbone forward through a LoRA.

        - with `context_input_ids`: the LoRA is generated from the context on the fly (training:
          gradients flow into the hypernetwork, never into the backbone). With
          `context_sample_index` (C,), the C context rows are chunks: those with index j are composed
          (`context_compose`: "concat" or "mean", see `ShineAdapter.compose`) into the adapter of
          input row j, inside the graph, so a hypernetwork can be trained to write adapters that add up;
        - with `adapter`: that adapter is applied (one adapter, or one per row);
        - with neither: the plain backbone.

        Other keyword arguments (`past_key_values`, `use_cache`, ...) go to the backbone.
        """
        if context_input_ids is not None:
            if adapter is not None:
                raise InvalidInputError("Pass either adapter or context_input_ids, not both.")
            if context_attention_mask is None:
                context_attention_mask = torch.ones_like(context_input_ids)
            adapter = self.internalize(context_input_ids, context_attention_mask,
                                       requires_grad=torch.is_grad_enabled())
            if context_sample_index is not None:
                groups = _groups(context_sample_index, _batch_size(input_ids, kwargs))
                adapter = ShineAdapter(compose_groups(adapter.lora, groups, context_compose), self.targets,
                                       self.layers_path, self.config.backbone_name_or_path,
                                       self.config.backbone_revision)
        with self.lora_injector.activate(self._lora_for(adapter, _batch_size(input_ids, kwargs))):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, *args: Any, adapter: ShineAdapter | None = None, **kwargs: Any):
        """`backbone.generate` with `adapter` applied (KV cache as usual).

        The adapter holds one adapter (used for every row) or one per input row; with beams or
        `num_return_sequences`, the expanded rows follow their source row.
        """
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        with self.lora_injector.activate(self._lora_for(adapter, _batch_size(input_ids, kwargs))):
            return self.backbone.generate(*args, **kwargs)

    # ------------------------------------------------------------------ activation checkpointing
    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict[str, Any] | None = None, every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Checkpoint the backbone's decoder layers.

        The recomputation in the backward pass must see the same LoRA as the forward pass, but by
        then `forward` has already deactivated it. A non-reentrant checkpoint with a `context_fn`
        re-activates, during recomputation, the LoRA that was active when the layer first ran.
        """
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant", False):
            raise ValueError("SHINE needs non-reentrant activation checkpointing (use_reentrant=False).")
        injector = self.lora_injector

        def context_fn():
            return contextlib.nullcontext(), injector.activate(injector.active)

        kwargs.update(use_reentrant=False, context_fn=context_fn)
        self.backbone.activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None,
                                      **kwargs: Any) -> None:
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.backbone.activation_checkpointing_disable()

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.backbone.is_activation_checkpointing

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.backbone.is_activation_checkpointing

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.backbone.prepare_inputs_for_generation(*args, **kwargs)

    # ------------------------------------------------------------------ plumbing
    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)


ShineConfig.register_for_auto_class()
ShineForCausalLM.register_for_auto_class("AutoModelForCausalLM")


def _groups(sample_index: torch.Tensor, batch_size: int | None) -> list[list[int]]:
    """Context rows per input row: row j composes the context rows whose sample index is j."""
    index = sample_index.tolist()
    count = batch_size if batch_size is not None else max(index) + 1
    groups = [[row for row, sample in enumerate(index) if sample == j] for j in range(count)]
    empty = [j for j, rows in enumerate(groups) if not rows]
    if empty or any(not 0 <= sample < count for sample in index):
        raise InvalidInputError(
            f"context_sample_index must give every one of the {count} input rows at least one context row "
            f"(rows without a context: {empty})."
        )
    return groups


def _batch_size(input_ids: Any, kwargs: dict[str, Any]) -> int | None:
    """Rows of the input batch, from input_ids or inputs_embeds."""
    for tensor in (input_ids, kwargs.get("inputs_embeds")):
        if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2:
            return tensor.shape[0]
    return None


def _check_backbone_matches(config: ShineConfig, backbone: nn.Module, layers_path: str,
                            targets: list[TargetModule]) -> None:
    """Raise BackboneMismatchError if `backbone` is not of the shapes `config` was made for."""
    problems = []
    backbone_config = backbone.config
    expected_type = (config.backbone_config or {}).get("model_type")
    if expected_type and backbone_config.model_type != expected_type:
        problems.append(f"model type {backbone_config.model_type!r} != {expected_type!r}")
    if backbone_config.hidden_size != config.hidden_size:
        problems.append(f"hidden size {backbone_config.hidden_size} != {config.hidden_size}")
    if backbone_config.num_hidden_layers != config.num_hidden_layers:
        problems.append(f"{backbone_config.num_hidden_layers} decoder layers != {config.num_hidden_layers}")
    if config.layers_path and layers_path != config.layers_path:
        problems.append(f"decoder layers at {layers_path!r}, expected {config.layers_path!r}")
    expected = config.target_module_shapes or {}
    for t in targets:
        want = expected.get(t.name)
        got = [t.in_features, t.out_features, int(t.has_bias)]
        if want is None:
            problems.append(f"unexpected target module {t.name}")
        elif list(want) != got:
            problems.append(f"{t.name} is (in, out, bias) {tuple(got)}, expected {tuple(want)}")
    missing = set(expected) - {t.name for t in targets}
    if missing:
        problems.append(f"target modules {sorted(missing)} are missing")
    if problems:
        name = config.backbone_name_or_path or "the configured backbone"
        raise BackboneMismatchError(
            f"The backbone ({type(backbone).__name__}) does not match the one this SHINE model was made "
            f"for ({name}): " + "; ".join(problems) + "."
        )


def _special_token_ids(backbone: PreTrainedModel) -> dict[str, Any]:
    """The backbone's pad/bos/eos ids, so Trainer and generation see the same special tokens."""
    ids = {}
    for source in (backbone.config, getattr(backbone, "generation_config", None)):
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(source, name, None)
            if value is not None and name not in ids:
                ids[name] = value
    return ids
