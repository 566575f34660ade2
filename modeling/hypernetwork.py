"""The SHINE hypernetwork: memory tokens, meta-LoRA, M2P transformer, flat vector -> LoRA.

Shapes: B contexts, L decoder layers, M memory tokens, H hidden size, r LoRA rank, R meta-LoRA rank.

    memory states (B, L, M, H)      decoder-layer outputs at the memory positions
      + layer_pe (L, H) + token_pe (M, H)
      -> M2P: layer-axis attention, token-axis attention, ... (B, L, M, H)
      -> flat per layer (B, L, M*H), token-major
      -> per target module: A (B, in, r) * sqrt(s), B (B, r, out) * sqrt(s), C (B, out) * s
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .lora import LoraWeights, TargetModule


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
    """The static rank-R LoRA active on every target module while a context is encoded."""

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
    """Slice each layer's flat vector into per-module A, B, C (DESIGN.md section 1, step 5).

    Args:
        flat: (B, L, M*H) -- layer l's vector is out[b, l].reshape(-1), token-major.
        targets: Modules in reading order.
        rank: LoRA rank r.
        scale: s; A and B get sqrt(s), C gets s.
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


class ShineHypernetwork(nn.Module):
    """Everything SHINE trains: memory tokens, meta-LoRA and the M2P transformer."""

    def __init__(self, num_layers: int, hidden_size: int, targets: list[TargetModule], lora_rank: int,
                 metalora_rank: int, num_memory_tokens: int, m2p_depth: int, m2p_heads: int,
                 m2p_ffn_dim: int, lora_scale: float):
        super().__init__()
        self.targets = targets
        self.lora_rank = lora_rank
        self.lora_scale = lora_scale
        self.num_memory_tokens = num_memory_tokens
        self.memory_tokens = nn.Parameter(torch.zeros(num_memory_tokens, hidden_size))
        self.meta_lora = MetaLoRA(num_layers, targets, metalora_rank)
        self.m2p = M2PTransformer(num_layers, num_memory_tokens, hidden_size, m2p_depth, m2p_heads,
                                  m2p_ffn_dim)

    def memory_states_to_lora(self, memory_states: torch.Tensor) -> dict[int, dict[str, LoraWeights]]:
        """(B, L, M, H) memory states -> generated LoRA with batch axis B."""
        out = self.m2p(memory_states)
        flat = out.flatten(2)  # (B, L, M*H)
        return emit_lora(flat, self.targets, self.lora_rank, self.lora_scale)
