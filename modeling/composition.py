"""Composing generated LoRAs (several chunks or documents -> one adapter) and changing their rank.

Every function works on `LoraDict`s (layer -> module name -> `LoraWeights` with a batch axis), with
autograd intact, so the same code composes adapters at inference and inside the training graph.
Shapes: A (b, in, r), B (b, r, out), C (b, out). One module's delta is ΔW = A B (+ C).

- `compose_loras(loras, weights)`: ΔW = Σ_i w_i A_i B_i, C = Σ_i w_i C_i, exactly: the A's are
  stacked on the rank axis and each B_i is scaled by w_i (rank Σ r_i). `concat` is w_i = 1 (the sum
  of the deltas), `mean` is w_i = 1/k (their average).
- `truncate_rank(lora, rank)`: the best rank-`rank` approximation of each ΔW in the Frobenius norm
  (truncated SVD, Eckart-Young, taken through the factors' QR), split evenly as A = U √S,
  B = √S Vᵀ; biases unchanged.
- `pad_rank(lora, rank)`: zero rank columns, so adapters of different ranks stack into one batch
  (the delta is unchanged: the extra columns multiply zeros).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import IncompatibleAdapterError, InvalidInputError
from .lora import LoraDict, LoraWeights

COMPOSE_METHODS = ("concat", "mean", "weighted")


def composition_weights(method: str, count: int, weights: Sequence[float] | None = None) -> list[float]:
    """The per-adapter weights of a composition `method` over `count` adapters (InvalidInputError for an
    unknown method or weights that do not fit)."""
    if method not in COMPOSE_METHODS:
        raise InvalidInputError(f"Unknown composition method {method!r}: choose one of {', '.join(COMPOSE_METHODS)}.")
    if count < 1:
        raise InvalidInputError("Composition needs at least one adapter.")
    if method == "weighted":
        if weights is None or len(weights) != count:
            raise InvalidInputError(f"method='weighted' needs one weight per adapter ({count}), got {weights!r}.")
        return [float(w) for w in weights]
    if weights is not None:
        raise InvalidInputError(f"weights are only used with method='weighted', not {method!r}.")
    return [1.0] * count if method == "concat" else [1.0 / count] * count


def compose_loras(loras: Sequence[LoraDict], weights: Sequence[float]) -> dict[int, dict[str, LoraWeights]]:
    """Σ_i w_i ΔW_i as one LoRA of rank Σ r_i (exact); every input must have the same batch size."""
    if len(loras) != len(weights):
        raise ValueError(f"{len(loras)} LoRAs but {len(weights)} weights.")
    first = loras[0]
    composed: dict[int, dict[str, LoraWeights]] = {}
    for layer, modules in first.items():
        composed[layer] = {}
        for name in modules:
            parts = [lora[layer][name] for lora in loras]
            A = torch.cat([p.A for p in parts], dim=-1)
            B = torch.cat([p.B * w for p, w in zip(parts, weights)], dim=-2)
            C = None
            if parts[0].C is not None:
                C = sum(p.C * w for p, w in zip(parts, weights))
            composed[layer][name] = LoraWeights(A, B, C)
    return composed


def truncate_rank(lora: LoraDict, rank: int) -> dict[int, dict[str, LoraWeights]]:
    """Each module's ΔW = A B replaced by its best rank-`rank` approximation (truncated SVD); C kept.

    The SVD of ΔW is taken through its factors, never the dense (in, out) matrix: with A = Q_a R_a
    and Bᵀ = Q_b R_b (thin QR), ΔW = Q_a (R_a R_bᵀ) Q_bᵀ, so the singular values and vectors of ΔW are
    those of the small (k, k) matrix R_a R_bᵀ mapped through Q_a and Q_b — O((in + out) k²) instead of
    O(in · out · min(in, out)), the same optimum. Computed in float64, returned in the input's dtype.
    `rank` may not exceed the current rank (use `pad_rank` to grow it)."""
    truncated: dict[int, dict[str, LoraWeights]] = {}
    for layer, modules in lora.items():
        truncated[layer] = {}
        for name, w in modules.items():
            current = w.A.shape[-1]
            if rank > current:
                raise IncompatibleAdapterError(
                    f"Cannot re-factorise a rank-{current} LoRA to rank {rank}: the best approximation of rank "
                    f"{rank} is the LoRA itself; pad it instead (pad_rank) if a larger rank is needed."
                )
            Q_a, R_a = torch.linalg.qr(w.A.double())  # (b, in, k), (b, k, k)
            Q_b, R_b = torch.linalg.qr(w.B.double().transpose(-1, -2))  # (b, out, k), (b, k, k)
            U, S, Vh = torch.linalg.svd(R_a @ R_b.transpose(-1, -2))  # (b, k, k) each
            root = S[..., :rank].sqrt()
            A = ((Q_a @ U[..., :rank]) * root[..., None, :]).to(w.A.dtype)  # (b, in, rank)
            B = (root[..., :, None] * (Vh[..., :rank, :] @ Q_b.transpose(-1, -2))).to(w.B.dtype)  # (b, rank, out)
            truncated[layer][name] = LoraWeights(A, B, w.C)
    return truncated


def pad_rank(lora: LoraDict, rank: int | dict[tuple[int, str], int]) -> dict[int, dict[str, LoraWeights]]:
    """The same deltas with zero columns added up to rank `rank` (one rank, or one per (layer, module))."""
    padded: dict[int, dict[str, LoraWeights]] = {}
    for layer, modules in lora.items():
        padded[layer] = {}
        for name, w in modules.items():
            target_rank = rank if isinstance(rank, int) else rank[(layer, name)]
            extra = target_rank - w.A.shape[-1]
            if extra < 0:
                raise IncompatibleAdapterError(f"Cannot pad a rank-{w.A.shape[-1]} LoRA down to rank {target_rank}.")
            A = torch.cat([w.A, w.A.new_zeros(*w.A.shape[:-1], extra)], dim=-1) if extra else w.A
            B = torch.cat([w.B, w.B.new_zeros(w.B.shape[0], extra, w.B.shape[-1])], dim=-2) if extra else w.B
            padded[layer][name] = LoraWeights(A, B, w.C)
    return padded


def stack_loras(loras: Sequence[LoraDict]) -> dict[int, dict[str, LoraWeights]]:
    """Concatenate LoRAs along the batch axis, padding each module's rank to its largest."""
    first = loras[0]
    ranks = {(layer, name): max(lora[layer][name].A.shape[-1] for lora in loras)
             for layer, modules in first.items() for name in modules}
    loras = [pad_rank(lora, ranks) for lora in loras]
    first = loras[0]
    return {
        layer: {
            name: LoraWeights(
                torch.cat([lora[layer][name].A for lora in loras]),
                torch.cat([lora[layer][name].B for lora in loras]),
                None if w.C is None else torch.cat([lora[layer][name].C for lora in loras]),
            )
            for name, w in modules.items()
        }
        for layer, modules in first.items()
    }


def compose_groups(lora: LoraDict, groups: Sequence[Sequence[int]], method: str) -> dict[int, dict[str, LoraWeights]]:
    """Compose the batch rows of `lora` group by group: `groups[j]` lists the rows (chunks) of adapter j.

    Returns a LoRA with batch axis len(groups), ranks padded to the largest group's."""
    composed = []
    for rows in groups:
        if not rows:
            raise ValueError("Every group needs at least one row to compose.")
        parts = [_select(lora, row) for row in rows]
        composed.append(compose_loras(parts, composition_weights(method, len(parts))))
    return stack_loras(composed)


def _select(lora: LoraDict, row: int) -> dict[int, dict[str, LoraWeights]]:
    return select_rows(lora, [row])


def select_rows(lora: LoraDict, rows: Sequence[int]) -> dict[int, dict[str, LoraWeights]]:
    """The batch rows `rows` of `lora`, in that order."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    return {
        layer: {
            name: LoraWeights(
                w.A[index.to(w.A.device)], w.B[index.to(w.B.device)], None if w.C is None else w.C[index.to(w.C.device)]
            )
            for name, w in modules.items()
        }
        for layer, modules in lora.items()
    }
