"""SHINE: a hypernetwork that writes a LoRA for a frozen causal LM from a context, in one pass.

`ShineForCausalLM` wraps an unmodified transformers causal LM (`model.backbone`) and a
`ShineHypernetwork` (memory tokens, meta-LoRA, M2P). LoRAs reach the backbone through forward
hooks on its target projections (see `lora.py`), so one code path serves training, inference,
generation with the KV cache and a batch of different adapters.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .adapter import ShineAdapter
from .configuration_shine import ShineConfig
from .errors import BackboneMismatchError, ContextTooLongError, EmptyContextError
from .hypernetwork import LoraParameters, M2PTransformer, ShineHypernetwork
from .io_utils import atomic_directory
from .lora import LoraDict, LoraInjector, TargetModule, discover_target_modules
from .prompting import IN_CONTEXT_TEMPLATE, in_context_question, question_prompt

ContextInput = str | Sequence[str] | torch.Tensor | Sequence[Sequence[int]]


class ShinePreTrainedModel(PreTrainedModel):
    config_class = ShineConfig
    base_model_prefix = "hypernetwork"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    # No `_no_split_modules`: the hypernetwork's parameters are read outside its forward, so FSDP
    # must not wrap it on its own (see examples/accelerate/README.md); the backbone's own
    # `_no_split_modules` (its decoder layers) are what device maps and FSDP wrap.

    def _init_weights(self, module: nn.Module) -> None:
        # Reference init: memory tokens and position embeddings zero, meta-LoRA A ~ N(0,1)*sqrt(s)
        # and B = 0; the M2P's linear layers keep PyTorch's defaults, as in the reference.
        if isinstance(module, LoraParameters):
            module.reset_parameters(self.config.lora_scale)
        elif isinstance(module, M2PTransformer):
            nn.init.zeros_(module.layer_pe)
            nn.init.zeros_(module.token_pe)
        elif isinstance(module, ShineHypernetwork):
            nn.init.zeros_(module.memory_tokens)


class ShineForCausalLM(ShinePreTrainedModel, GenerationMixin):
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
        if backbone is None:
            backbone = AutoModelForCausalLM.from_config(config.get_backbone_config())
        layers_path, targets = discover_target_modules(backbone, config.target_modules)
        _check_backbone_matches(config, backbone, layers_path, targets)
        self.layers_path = layers_path
        self.targets = targets
        self.hypernetwork = ShineHypernetwork(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            targets=targets,
            lora_rank=config.lora_rank,
            metalora_rank=config.metalora_rank,
            num_memory_tokens=config.num_memory_tokens,
            m2p_depth=config.m2p_num_layers,
            m2p_heads=config.m2p_num_heads,
            m2p_ffn_dim=config.m2p_ffn_dim,
            lora_scale=config.lora_scale,
        )
        # Initialise before the backbone is attached, so its (pretrained) weights are never touched.
        self.post_init()
        device = backbone.get_input_embeddings().weight.device
        if device.type != "meta":  # a meta backbone (conversion) keeps the hypernetwork real
            self.hypernetwork.to(device)
        backbone.requires_grad_(False)
        self.backbone = backbone
        self.lora_injector = LoraInjector(backbone, layers_path, targets)
        self.tokenizer = None
        self.generation_config = getattr(backbone, "generation_config", self.generation_config)

    # ------------------------------------------------------------------ construction
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

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        backbone: PreTrainedModel | str | os.PathLike | None = None,
        revision: str | None = None,
        backbone_revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        device_map: Any = None,
        tokenizer: Any = None,
        hypernetwork_dtype: torch.dtype | None = None,
        config: ShineConfig | None = None,
        **kwargs: Any,
    ) -> ShineForCausalLM:
        """Load a SHINE hypernetwork and the backbone it names (or the one passed in).

        Args:
            pretrained_model_name_or_path: Hub repo id or local directory of a SHINE checkpoint.
            backbone: An already-loaded backbone (checked against the config's shapes), or a
                name/path to load instead of the one in the config.
            revision: Revision of the SHINE checkpoint.
            backbone_revision: Backbone revision; defaults to the one recorded in the config.
            dtype: dtype of the backbone (e.g. `torch.bfloat16`); the hypernetwork stays float32
                unless `hypernetwork_dtype` says otherwise.
            device_map: Passed to the backbone's `from_pretrained`; the hypernetwork follows the
                backbone's input embeddings.
            tokenizer: A tokenizer; by default the checkpoint's own, else the backbone's.

        Raises:
            BackboneMismatchError: the backbone's shapes differ from the checkpoint's.
            CheckpointError: weights missing, truncated, corrupt or holding foreign tensors.
        """
        from .checkpoint import load_weights_into, resolve_weight_files

        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "token", "local_files_only", "force_download")
                      if k in kwargs}
        if config is None:
            config = ShineConfig.from_pretrained(pretrained_model_name_or_path, revision=revision, **hub_kwargs)
        name_resolved_from = None
        if backbone is None or isinstance(backbone, (str, os.PathLike)):
            name = str(backbone) if backbone is not None else config.backbone_name_or_path
            if not name:
                raise ValueError("The checkpoint's config names no backbone: pass backbone=...")
            local = Path(pretrained_model_name_or_path)
            if backbone is None and name.startswith(("./", "../")) and local.is_dir():
                name = str((local / name).resolve())  # a backbone stored beside a local checkpoint
            backbone = AutoModelForCausalLM.from_pretrained(
                name, revision=backbone_revision or config.backbone_revision, dtype=dtype, device_map=device_map
            )
            name_resolved_from = name
        model = cls(config, backbone=backbone)
        # What adapters name as their base model: the backbone actually loaded, where known.
        model.resolved_backbone_path = name_resolved_from or getattr(backbone, "name_or_path", None) or None
        files = resolve_weight_files(pretrained_model_name_or_path, revision=revision, **hub_kwargs)
        load_weights_into(model.hypernetwork, files, prefix="hypernetwork.")
        device = backbone.get_input_embeddings().weight.device
        model.hypernetwork.to(device=device, dtype=hypernetwork_dtype or torch.float32)
        model.name_or_path = str(pretrained_model_name_or_path)
        backbone_config = backbone.config
        model.tokenizer = (
            tokenizer
            or try_load_tokenizer(str(pretrained_model_name_or_path), revision, backbone_config)
            or try_load_tokenizer(config.backbone_name_or_path, backbone_revision or config.backbone_revision,
                                   backbone_config)
        )
        return model.eval()

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        max_shard_size: int | str = "5GB",
        save_tokenizer: bool = True,
        **kwargs: Any,
    ) -> None:
        """Write the hypernetwork only: safetensors weights, config (with `auto_map` for
        `trust_remote_code=True` loading), the model code, a model card and the tokenizer.

        The directory is assembled in a temporary path and moved into place, so a failed save
        leaves nothing half-written.
        """
        from .checkpoint import AUTO_MAP, copy_model_code, render_card, write_weights

        if not is_main_process:
            return
        if state_dict is None:
            state_dict = self.hypernetwork_state_dict()
        else:
            state_dict = {k: v for k, v in state_dict.items() if k.startswith("hypernetwork.")}
        with atomic_directory(save_directory) as staging:
            self.config.auto_map = dict(AUTO_MAP)
            self.config.architectures = [type(self).__name__]
            self.config.save_pretrained(str(staging))
            write_weights(state_dict, staging, max_shard_size)
            copy_model_code(staging)
            if save_tokenizer and self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(staging))
            (staging / "README.md").write_text(render_card("model", self), encoding="utf-8")

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        commit_message: str = "Upload SHINE hypernetwork",
        token: str | None = None,
        revision: str | None = None,
        max_shard_size: int | str = "5GB",
        **kwargs: Any,
    ) -> str:
        """Create `repo_id` if needed and upload the checkpoint (hypernetwork, config, code, card,
        tokenizer) in one commit. Returns the commit URL."""
        from .checkpoint import push_in_one_commit

        return push_in_one_commit(self, repo_id, private=private, token=token, revision=revision,
                                  commit_message=commit_message, max_shard_size=max_shard_size)

    # ------------------------------------------------------------------ internalize
    @property
    def max_context_tokens(self) -> int | None:
        """Longest context (in tokens) that fits with the memory tokens, if the backbone has a limit."""
        limit = getattr(self.backbone.config, "max_position_embeddings", None)
        return None if limit is None else limit - self.config.num_memory_tokens

    def internalize(
        self,
        context: ContextInput,
        attention_mask: torch.Tensor | None = None,
        *,
        requires_grad: bool = False,
    ) -> ShineAdapter:
        """Read context(s) once and return their generated LoRA(s), one adapter per context.

        Args:
            context: A string, a list of strings (tokenized with a plain tokenizer call, no chat
                template), or token ids (a LongTensor (B, N) or a list of id lists).
            attention_mask: Mask for tensor input (1 = token, 0 = padding; either side).
            requires_grad: Keep the autograd graph (training). Default: no_grad.

        Raises:
            EmptyContextError: a context has no tokens.
            ContextTooLongError: a context plus the memory tokens exceeds the backbone's positions.
        """
        input_ids, attention_mask = self._context_tensors(context, attention_mask)
        with torch.set_grad_enabled(requires_grad):
            memory_states = self.encode_context(input_ids, attention_mask)
            lora = self.hypernetwork.memory_states_to_lora(memory_states)
        backbone_name = getattr(self, "resolved_backbone_path", None) or self.config.backbone_name_or_path
        adapter = ShineAdapter(lora, self.targets, self.layers_path, backbone_name, self.config.backbone_revision)
        return adapter

    def encode_context(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the backbone with the meta-LoRA over context + memory tokens: (B, L, M, H) states.

        Each row becomes [its context tokens, the M memory tokens, padding]: memory tokens follow
        the row's last real token whatever the padding side, positions are per row, and the
        decoder-layer outputs (before the final norm) are read at the memory positions.
        """
        device = self.backbone.get_input_embeddings().weight.device
        input_ids, attention_mask = _right_align(input_ids.to(device), attention_mask.to(device))
        batch, length = input_ids.shape
        num_memory = self.config.num_memory_tokens
        token_embeds = self.backbone.get_input_embeddings()(input_ids)  # (B, N, H)
        memory_tokens = self.hypernetwork.memory_tokens.to(device=device, dtype=token_embeds.dtype)
        lengths = attention_mask.sum(dim=1, keepdim=True)  # (B, 1)
        positions = torch.arange(length + num_memory, device=device)[None]  # (1, N+M)
        memory_index = positions - lengths  # 0..M-1 on the memory positions of each row
        is_memory = (memory_index >= 0) & (memory_index < num_memory)
        padded_embeds = torch.cat([token_embeds, token_embeds.new_zeros(batch, num_memory, token_embeds.shape[-1])], 1)
        inputs_embeds = torch.where(
            is_memory[..., None], memory_tokens[memory_index.clamp(0, num_memory - 1)], padded_embeds
        )
        full_mask = (positions < lengths + num_memory).long()
        position_ids = positions.expand(batch, -1)
        gather_index = (lengths + torch.arange(num_memory, device=device))[..., None]  # (B, M, 1)

        layers = self.backbone.get_submodule(self.layers_path)
        captured: list[torch.Tensor | None] = [None] * len(layers)

        def capture(index: int):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                hidden = output[0] if isinstance(output, tuple) else output
                captured[index] = hidden.gather(1, gather_index.expand(-1, -1, hidden.shape[-1]))

            return hook

        handles = [layer.register_forward_hook(capture(i)) for i, layer in enumerate(layers)]
        try:
            with self.lora_injector.activate(self.hypernetwork.meta_lora.lora_dict()):
                self.backbone.base_model(
                    inputs_embeds=inputs_embeds,
                    attention_mask=full_mask,
                    position_ids=position_ids,
                    use_cache=False,
                )
        finally:
            for handle in handles:
                handle.remove()
        states = torch.stack(captured, dim=1)  # (B, L, M, H)
        return states.to(self.hypernetwork.memory_tokens.dtype)

    def _context_tensors(
        self, context: ContextInput, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(context, str):
            context = [context]
        if isinstance(context, torch.Tensor):
            input_ids = context if context.dim() == 2 else context[None]
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            elif attention_mask.dim() == 1:
                attention_mask = attention_mask[None]
        elif len(context) and all(isinstance(c, str) for c in context):
            tokenizer = self._require_tokenizer()
            empty = [i for i, c in enumerate(context) if not c.strip()]
            if empty:
                raise EmptyContextError(f"Context(s) {empty} are empty or whitespace only: nothing to internalize.")
            ids = [tokenizer(c)["input_ids"] for c in context]
            input_ids, attention_mask = pad_token_ids(ids)
        elif len(context):
            input_ids, attention_mask = pad_token_ids([list(map(int, c)) for c in context])
        else:
            raise EmptyContextError("No context given: pass a string, a list of strings or token ids.")
        lengths = attention_mask.sum(dim=1)
        empty_rows = torch.nonzero(lengths == 0).flatten().tolist()
        if empty_rows:
            raise EmptyContextError(f"Context(s) {empty_rows} have no tokens: nothing to internalize.")
        limit = self.max_context_tokens
        if limit is not None and int(lengths.max()) > limit:
            longest = int(lengths.max())
            raise ContextTooLongError(
                f"A context is {longest} tokens long; with {self.config.num_memory_tokens} memory tokens "
                f"the backbone's {limit + self.config.num_memory_tokens} positions allow at most {limit}. "
                f"Split the document into chunks of at most {limit} tokens and internalize each."
            )
        return input_ids.long(), attention_mask.long()

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(
                "This model has no tokenizer: pass token ids, or set model.tokenizer "
                "(or pass tokenizer= to from_backbone/from_pretrained)."
            )
        return self.tokenizer

    # ------------------------------------------------------------------ applying adapters
    def _lora_for(self, adapter: ShineAdapter | None) -> LoraDict | None:
        if adapter is None:
            return None
        adapter.check_compatible(self.layers_path, self.targets, self.config.num_hidden_layers)
        device = self.backbone.get_input_embeddings().weight.device
        if adapter.device != device:
            adapter = adapter.to(device)
        return adapter.lora

    @contextlib.contextmanager
    def use_adapter(self, adapter: ShineAdapter | None) -> Iterator[PreTrainedModel]:
        """Apply `adapter` to every backbone call inside the block; yields the backbone."""
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
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Backbone forward through a LoRA.

        - with `context_input_ids`: the LoRA is generated from the context on the fly (training:
          gradients flow into the hypernetwork, never into the backbone);
        - with `adapter`: that adapter is applied;
        - with neither: the plain backbone.

        Other keyword arguments (`past_key_values`, `use_cache`, ...) go to the backbone.
        """
        if context_input_ids is not None:
            if adapter is not None:
                raise ValueError("Pass either adapter or context_input_ids, not both.")
            if context_attention_mask is None:
                context_attention_mask = torch.ones_like(context_input_ids)
            adapter = self.internalize(context_input_ids, context_attention_mask,
                                       requires_grad=torch.is_grad_enabled())
        with self.lora_injector.activate(self._lora_for(adapter)):
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, *args: Any, adapter: ShineAdapter | None = None, **kwargs: Any):
        """`backbone.generate` with `adapter` applied (KV cache as usual).

        A batch of b adapters maps row i of the inputs to adapter i; with beams or
        `num_return_sequences`, the expanded rows follow their source row.
        """
        with self.lora_injector.activate(self._lora_for(adapter)):
            return self.backbone.generate(*args, **kwargs)

    def generate_text(
        self,
        question: str | Sequence[str],
        adapter: ShineAdapter | None = None,
        *,
        max_new_tokens: int = 64,
        system_prompt: str | None = None,
        context: str | Sequence[str] | None = None,
        context_template: str = IN_CONTEXT_TEMPLATE,
        **generate_kwargs: Any,
    ) -> str | list[str]:
        """Answer question(s) with greedy decoding; returns only the new text.

        The question is the user turn of the backbone's chat template (no system prompt, no think
        block) as the reference does for SHINE answers. `system_prompt` and `context` exist for the
        baselines: with `context`, the user turn is the reference's "Reference:\n{context}\n\nBased on
        the reference, answer this question:\n{question}" (`context_template` changes it).
        """
        tokenizer = self._require_tokenizer()
        questions = [question] if isinstance(question, str) else list(question)
        if context is not None:
            contexts = [context] * len(questions) if isinstance(context, str) else list(context)
            questions = [in_context_question(c, q, context_template) for c, q in zip(contexts, questions, strict=True)]
        prompts = [question_prompt(tokenizer, q, system_prompt) for q in questions]
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        input_ids, attention_mask = pad_token_ids(ids, pad_id=pad_id or 0, side="left")
        device = self.backbone.get_input_embeddings().weight.device
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("pad_token_id", pad_id)
        output = self.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            adapter=adapter,
            max_new_tokens=max_new_tokens,
            **generate_kwargs,
        )
        texts = tokenizer.batch_decode(output[:, input_ids.shape[1]:], skip_special_tokens=True)
        texts = [t.strip() for t in texts]
        return texts[0] if isinstance(question, str) else texts

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

    def hypernetwork_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable part only (what a SHINE checkpoint stores), keys prefixed `hypernetwork.`."""
        return {f"hypernetwork.{k}": v for k, v in self.hypernetwork.state_dict().items()}


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


def _right_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every row's tokens to the front (right padding), keeping their order."""
    order = torch.argsort(-attention_mask, dim=1, stable=True)
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def pad_token_ids(
    sequences: Sequence[Sequence[int]], pad_id: int = 0, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to one (B, N) LongTensor on `side`; returns (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if not len(seq):
            continue
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def try_load_tokenizer(name: str | None, revision: str | None, backbone_config: Any = None):
    """The tokenizer at `name`, or None when there is none (or it cannot be loaded).

    Passing the backbone's config stops AutoTokenizer from reading a SHINE `config.json` (whose
    `auto_map` would otherwise ask to trust remote code)."""
    if not name:
        return None
    kwargs = {"config": backbone_config} if backbone_config is not None else {}
    try:
        return AutoTokenizer.from_pretrained(name, revision=revision, **kwargs)
    except (OSError, ValueError, TypeError):
        return None
