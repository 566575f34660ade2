"""The SHINE hypernetwork, top to bottom: a context in, a LoRA for the frozen backbone out.

Shapes: B contexts, N context tokens, L decoder layers, M memory tokens, H hidden size, r LoRA
rank, R meta-LoRA rank. The steps (docs/method.md) and where each lives below:

    1. read the context        [context tokens, M memory tokens] through the backbone with the
                               meta-LoRA; decoder-layer outputs at the memory positions
                               -> memory states (B, L, M, H)                  `encode_context`
    2. + layer_pe (L, H) + token_pe (M, H)
       M2P: layer-axis attention, token-axis attention, ...  -> (B, L, M, H)  `M2PTransformer`
    3. flat per layer, token-major                           -> (B, L, M*H)   `memory_states_to_lora`
    4. per target module: A (B, in, r) * sqrt(s), B (B, r, out) * sqrt(s),
       C (B, out) * s where the module has a bias                             `emit_lora`
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .lora import LoraDict, LoraInjector, LoraWeights, TargetModule

if TYPE_CHECKING:
    from .configuration_shine import ShineConfig


class LoraParameters(nn.Module):
    """A static LoRA for one module: A (in, R), B (R, out), C (out) when the module has a bias."""

    def __init__(self, in_features: int, out_features: int, rank: int, has_bias: bool):
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_features, rank))
        self.B = nn.Parameter(torch.empty(rank, out_features))
        self.C = nn.Parameter(torch.empty(out_features)) if has_bias else None

    def reset_parameters(self, scale: float) -> None:
        # Reference init: A ~ N(0, 1) * sqrt(s), B = 0, C = 0, so the meta-LoRA starts as a no-op.
        with torch.no_grad():
            self.A.normal_().mul_(math.sqrt(scale))
            self.B.zero_()
            if self.C is not None:
                self.C.zero_()

    def as_weights(self) -> LoraWeights:
        """The weights with a batch axis of 1 (broadcast over any input batch)."""
        return LoraWeights(self.A[None], self.B[None], None if self.C is None else self.C[None])


class MetaLoRA(nn.Module):
    """The static rank-R LoRA active on every target module while a context is read."""

    def __init__(self, num_layers: int, targets: list[TargetModule], rank: int):
        super().__init__()
        self.targets = targets
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {t.key: LoraParameters(t.in_features, t.out_features, rank, t.has_bias) for t in targets}
            )
            for _ in range(num_layers)
        )

    def lora_dict(self) -> dict[int, dict[str, LoraWeights]]:
        return {
            index: {t.name: layer[t.key].as_weights() for t in self.targets}
            for index, layer in enumerate(self.layers)
        }


class M2PTransformer(nn.Module):
    """Memory-to-parameter transformer: post-norm encoder layers alternating the attention axis.

    Even layers attend across decoder layers (sequence = the L states of one memory token), odd
    layers across memory tokens (sequence = the M tokens of one decoder layer). No mask, no final
    norm or projection.
    """

    def __init__(self, num_layers: int, num_memory_tokens: int, hidden_size: int, depth: int,
                 num_heads: int, ffn_dim: int):
        super().__init__()
        self.layer_pe = nn.Parameter(torch.zeros(num_layers, hidden_size))
        self.token_pe = nn.Parameter(torch.zeros(num_memory_tokens, hidden_size))
        self.transformer_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=hidden_size,
                nhead=num_heads,
                dim_feedforward=ffn_dim,
                dropout=0.0,
                activation="gelu",
                layer_norm_eps=1e-5,
                batch_first=True,
                norm_first=False,
                bias=True,
            )
            for _ in range(depth)
        )

    def forward(self, memory_states: torch.Tensor) -> torch.Tensor:
        """(B, L, M, H) -> (B, L, M, H)."""
        batch, num_layers, num_tokens, hidden = memory_states.shape
        states = memory_states + self.layer_pe[:, None, :] + self.token_pe
        for index, layer in enumerate(self.transformer_layers):
            if index % 2 == 0:  # across layers: (B*M, L, H)
                across = states.transpose(1, 2).reshape(batch * num_tokens, num_layers, hidden)
                states = layer(across).reshape(batch, num_tokens, num_layers, hidden).transpose(1, 2)
            else:  # across tokens: (B*L, M, H)
                across = states.reshape(batch * num_layers, num_tokens, hidden)
                states = layer(across).reshape(batch, num_layers, num_tokens, hidden)
        return states


def emit_lora(
    flat: torch.Tensor, targets: list[TargetModule], rank: int, scale: float
) -> dict[int, dict[str, LoraWeights]]:
    """Slice each layer's flat vector into per-module A, B, C.

    Args:
        flat: (B, L, M*H) -- layer l's vector is out[b, l].reshape(-1), token-major.
        targets: Modules in reading order (q, k, v, o, gate, up, down).
        rank: LoRA rank r.
        scale: s; A and B get sqrt(s), C gets s. Numbers past the last module are unused.
    """
    batch = flat.shape[0]
    root = math.sqrt(scale)
    lora: dict[int, dict[str, LoraWeights]] = {}
    for layer in range(flat.shape[1]):
        vector = flat[:, layer]
        offset = 0
        modules: dict[str, LoraWeights] = {}
        for t in targets:
            a_numel, b_numel = t.in_features * rank, rank * t.out_features
            A = vector[:, offset : offset + a_numel].reshape(batch, t.in_features, rank) * root
            offset += a_numel
            B = vector[:, offset : offset + b_numel].reshape(batch, rank, t.out_features) * root
            offset += b_numel
            C = None
            if t.has_bias:
                C = vector[:, offset : offset + t.out_features] * scale
                offset += t.out_features
            modules[t.name] = LoraWeights(A, B, C)
        lora[layer] = modules
    return lora


def right_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every row's tokens to the front (right padding), keeping their order."""
    order = torch.argsort(-attention_mask, dim=1, stable=True)
    return input_ids.gather(1, order), attention_mask.gather(1, order)


class ShineHypernetwork(nn.Module):
    """Everything SHINE trains: memory tokens, meta-LoRA and the M2P transformer.

    `forward(backbone, input_ids, attention_mask)` is the whole pipeline of the module docstring:
    contexts (B, N) in, their generated LoRA (batch axis B) out.
    """

    def __init__(self, config: ShineConfig):
        super().__init__()
        self.targets = config.targets
        self.lora_rank = config.lora_rank
        self.lora_scale = config.lora_scale
        self.num_memory_tokens = config.num_memory_tokens
        self.memory_tokens = nn.Parameter(torch.zeros(config.num_memory_tokens, config.hidden_size))
        self.meta_lora = MetaLoRA(config.num_hidden_layers, self.targets, config.metalora_rank)
        self.m2p = M2PTransformer(
            config.num_hidden_layers,
            config.num_memory_tokens,
            config.hidden_size,
            config.m2p_num_layers,
            config.m2p_num_heads,
            config.m2p_ffn_dim,
        )

    def forward(self, backbone: LoraInjector, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> LoraDict:
        """Contexts (B, N) with their mask (1 = token, either padding side) -> LoRA with batch axis B."""
        memory_states = self.encode_context(backbone, input_ids, attention_mask)
        return self.memory_states_to_lora(memory_states)

    def encode_context(
        self, backbone: LoraInjector, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Step 1: read the contexts with the meta-LoRA active -> memory states (B, L, M, H).

        Each row becomes [its context tokens, the M memory tokens, padding]: memory tokens follow
        the row's last real token whatever the padding side, positions are per row (right for RoPE
        and for absolute positions), and the decoder-layer outputs (after the MLP residual, before
        the final norm) are read at the memory positions. The backbone runs without its LM head.
        """
        model = backbone.backbone
        embeddings = model.get_input_embeddings()
        device = embeddings.weight.device
        input_ids, attention_mask = right_align(input_ids.to(device), attention_mask.to(device))
        batch, length = input_ids.shape
        num_memory = self.num_memory_tokens
        token_embeds = embeddings(input_ids)  # (B, N, H)
        memory_tokens = self.memory_tokens.to(device=device, dtype=token_embeds.dtype)
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

        captured: list[torch.Tensor | None] = [None] * len(backbone.layers)

        def capture(index: int):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                hidden = output[0] if isinstance(output, tuple) else output
                captured[index] = hidden.gather(1, gather_index.expand(-1, -1, hidden.shape[-1]))

            return hook

        handles = [layer.register_forward_hook(capture(i)) for i, layer in enumerate(backbone.layers)]
        try:
            with backbone.activate(self.meta_lora.lora_dict()):
                model.base_model(
                    inputs_embeds=inputs_embeds,
                    attention_mask=full_mask,
                    position_ids=position_ids,
                    use_cache=False,
                )
        finally:
            for handle in handles:
                handle.remove()
        states = torch.stack(captured, dim=1)  # (B, L, M, H)
        return states.to(self.memory_tokens.dtype)

    def memory_states_to_lora(self, memory_states: torch.Tensor) -> dict[int, dict[str, LoraWeights]]:
        """Steps 2-4: memory states (B, L, M, H) -> M2P -> flat (B, L, M*H) -> A, B, C per module."""
        out = self.m2p(memory_states)
        flat = out.flatten(2)  # (B, L, M*H)
        return emit_lora(flat, self.targets, self.lora_rank, self.lora_scale)
