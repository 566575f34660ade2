"""A test-local, independent reimplementation of the reference SHINE math (GitHub MuLabPKU/SHINE).

Written from docs/method.md and the reference's `LoraQwen.py`, `metanetwork_family.py` and
`utils/myloradict.py`; it never calls shine_hf. Only the *weights* of a transformers Qwen3 model
are used: the forward pass (RMSNorm, RoPE, GQA attention, SwiGLU MLP) is redone here by hand with
LoRA applied as y = F.linear(x, W) + (x @ A) @ B (+ C).

It also writes checkpoints exactly as the reference's `save_checkpoint` does (`torch.save` of the
`mem_tokens` Parameter, of the M2P state dict and of the nested meta-LoRA dicts with
requires_grad=True leaves), with random values so that mistakes show.

Float32, CPU, tiny Qwen3 backbones only.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Per decoder layer, the reference reads its generated LoRA in this order.
ATTENTION_KEYS = ("q", "k", "v", "o")
MLP_KEYS = ("gate", "up", "down")
LoraDict = dict[int, dict[str, dict[str, dict[str, torch.Tensor | None]]]]


# ------------------------------------------------------------------------------- module access
def _projection(layer: nn.Module, group: str, key: str) -> nn.Linear:
    parent = layer.self_attn if group == "attention" else layer.mlp
    return getattr(parent, f"{key}_proj")


def _module_keys() -> list[tuple[str, str]]:
    return [("attention", k) for k in ATTENTION_KEYS] + [("mlp", k) for k in MLP_KEYS]


def lora_params_numel(backbone: nn.Module, r: int) -> int:
    """Per-layer P(r), as the reference's `lora_params_numel` counts it."""
    layer = backbone.model.layers[0]
    total = 0
    for group, key in _module_keys():
        proj = _projection(layer, group, key)
        total += proj.in_features * r + proj.out_features * r + (proj.out_features if proj.bias is not None else 0)
    return total


# ------------------------------------------------------------------------- checkpoint building
def _random_lora_dict(backbone: nn.Module, rank: int, generator: torch.Generator, std: float,
                      c_shape: str | None) -> LoraDict:
    """{layer: {"attention": {...}, "mlp": {...}}} with leaf tensors requiring grad.

    c_shape: for biased modules, "1d" gives C (out), "2d" gives C (1, out).
    """
    lora: LoraDict = {}
    for index, layer in enumerate(backbone.model.layers):
        groups: dict[str, dict[str, dict[str, torch.Tensor | None]]] = {"attention": {}, "mlp": {}}
        for group, key in _module_keys():
            proj = _projection(layer, group, key)
            A = (torch.randn(1, proj.in_features, rank, generator=generator) * std).requires_grad_()
            B = (torch.randn(1, rank, proj.out_features, generator=generator) * std).requires_grad_()
            C = None
            if proj.bias is not None:
                C = torch.randn(proj.out_features, generator=generator) * std
                C = (C if c_shape == "1d" else C[None]).requires_grad_()
            groups[group][key] = {"A": A, "B": B, "C": C}
        lora[index] = groups
    return lora


class ReferenceM2P(nn.Module):
    """The reference's MetanetworkTransformer with layer_transformer_first=True, mean_pool_size=1 and
    no couple layers (the released configuration)."""

    def __init__(self, num_layers: int, num_mem_token: int, hidden_size: int, depth: int, heads: int, ffn: int):
        super().__init__()
        self.num_layers = num_layers
        self.num_mem_token = num_mem_token
        self.layer_pe = nn.Parameter(torch.zeros(num_layers, hidden_size))
        self.token_pe = nn.Parameter(torch.zeros(num_mem_token, hidden_size))
        self.transformer_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model=hidden_size, nhead=heads, dim_feedforward=ffn, dropout=0,
                                       activation="gelu", layer_norm_eps=1e-5, batch_first=True,
                                       norm_first=False, bias=True)
            for _ in range(depth)
        )

    def forward(self, memory_states: torch.Tensor) -> torch.Tensor:
        """(batch, L, M, H) -> plain tensor (batch, L*M*H)."""
        memory_states = memory_states + self.layer_pe.unsqueeze(-2) + self.token_pe
        batch = memory_states.shape[0]
        for i, layer in enumerate(self.transformer_layers):
            if i % 2 == 0:  # among layers
                flat = memory_states.transpose(1, 2).flatten(0, 1)
                memory_states = layer(flat).unflatten(0, (batch, self.num_mem_token)).transpose(1, 2)
            else:  # among tokens
                memory_states = layer(memory_states.flatten(0, 1)).unflatten(0, (batch, self.num_layers))
        return memory_states.reshape(batch, -1)


def build_reference_checkpoint(
    backbone: nn.Module,
    lora_rank: int,
    metalora_rank: int,
    additional_rank: int | None,
    m2p_depth: int = 2,
    m2p_heads: int = 4,
    m2p_ffn: int = 48,
    seed: int = 0,
    c_shape: str = "2d",
) -> dict[str, object]:
    """The objects the reference saves, with random values (no zero init anywhere).

    Returns a dict: "mem_tokens" (nn.Parameter), "metanetwork" (state dict), "metalora" and, when
    `additional_rank` is given, "ift_additional_metalora" (nested dicts).
    """
    hidden = backbone.config.hidden_size
    num_layers = backbone.config.num_hidden_layers
    per_layer = lora_params_numel(backbone, lora_rank)
    assert per_layer % hidden == 0, "the reference only supports P multiple of H"
    num_mem = per_layer // hidden
    generator = torch.Generator().manual_seed(seed)
    m2p = ReferenceM2P(num_layers, num_mem, hidden, m2p_depth, m2p_heads, m2p_ffn)
    with torch.no_grad():
        for name, parameter in m2p.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.2
            parameter.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)
    objects: dict[str, object] = {
        "mem_tokens": nn.Parameter(torch.randn(num_mem, hidden, generator=generator)),
        "metanetwork": m2p.state_dict(),
        "metalora": _random_lora_dict(backbone, metalora_rank, generator, 0.2, c_shape),
    }
    if additional_rank is not None:
        objects["ift_additional_metalora"] = _random_lora_dict(backbone, additional_rank, generator, 0.2, c_shape)
    return objects


def save_reference_checkpoint(objects: dict[str, object], directory: Path) -> Path:
    """Write the objects like the reference's `save_checkpoint` (plain `torch.save`)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(objects["mem_tokens"], directory / "mem_tokens.pt")
    torch.save(objects["metanetwork"], directory / "metanetwork.pth")
    torch.save(objects["metalora"], directory / "metalora.pth")
    if "ift_additional_metalora" in objects:
        torch.save(objects["ift_additional_metalora"], directory / "ift_additional_metalora.pth")
    return directory


def merge_loradicts(first: LoraDict, second: LoraDict | None) -> LoraDict:
    """The reference's `merge_loradicts(method="rl")`: A cat dim 2, B cat dim 1, C summed."""
    if second is None:
        return first
    merged: LoraDict = {}
    for layer, groups in first.items():
        merged[layer] = {}
        for group, modules in groups.items():
            merged[layer][group] = {}
            for key, leaf in modules.items():
                other = second[layer][group][key]
                merged[layer][group][key] = {
                    "A": torch.cat([leaf["A"], other["A"]], dim=2),
                    "B": torch.cat([leaf["B"], other["B"]], dim=1),
                    "C": None if leaf["C"] is None else leaf["C"] + other["C"],
                }
    return merged


# --------------------------------------------------------------------------- manual Qwen3 forward
def _lora_linear(x: torch.Tensor, proj: nn.Linear, lora: dict[str, torch.Tensor | None] | None) -> torch.Tensor:
    """y = F.linear(x, W, b) + (x @ A) @ B (+ C); A (b, in, r) with b == 1 or b == batch."""
    y = F.linear(x, proj.weight, proj.bias)
    if lora is None:
        return y
    y = y + torch.matmul(torch.matmul(x, lora["A"]), lora["B"])
    if lora["C"] is not None:
        C = lora["C"] if lora["C"].dim() == 2 else lora["C"][None]
        y = y + C[:, None, :]
    return y


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _attention(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: torch.Tensor,
               lora: dict | None, config) -> torch.Tensor:
    batch, length, _ = x.shape
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    attn = layer.self_attn
    eps = config.rms_norm_eps

    def proj(key: str) -> torch.Tensor:
        return _lora_linear(x, getattr(attn, f"{key}_proj"), None if lora is None else lora["attention"][key])

    q = _rms_norm(proj("q").view(batch, length, heads, head_dim), attn.q_norm.weight, eps).transpose(1, 2)
    k = _rms_norm(proj("k").view(batch, length, kv_heads, head_dim), attn.k_norm.weight, eps).transpose(1, 2)
    v = proj("v").view(batch, length, kv_heads, head_dim).transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
    scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, heads * head_dim)
    return _lora_linear(out, attn.o_proj, None if lora is None else lora["attention"]["o"])


def _mlp(layer: nn.Module, x: torch.Tensor, lora: dict | None) -> torch.Tensor:
    mlp = layer.mlp

    def proj(key: str, inputs: torch.Tensor) -> torch.Tensor:
        return _lora_linear(inputs, getattr(mlp, f"{key}_proj"), None if lora is None else lora["mlp"][key])

    return proj("down", F.silu(proj("gate", x)) * proj("up", x))


def qwen3_forward(backbone: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                  loradict: LoraDict | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Decoder stack by hand. Returns (final-normed hidden states, every decoder layer's output).

    Positions are a plain arange over the sequence (as the reference); causal + key-padding mask.
    """
    config = backbone.config
    length = inputs_embeds.shape[1]
    cos, sin = _rope(torch.arange(length), config.head_dim, config.rope_parameters["rope_theta"])
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal[None] & attention_mask.bool()[:, None, :]
    hidden = inputs_embeds
    outputs = []
    for index, layer in enumerate(backbone.model.layers):
        lora = None if loradict is None else loradict[index]
        eps = config.rms_norm_eps
        hidden = hidden + _attention(layer, _rms_norm(hidden, layer.input_layernorm.weight, eps), cos, sin,
                                     allowed, lora, config)
        hidden = hidden + _mlp(layer, _rms_norm(hidden, layer.post_attention_layernorm.weight, eps), lora)
        outputs.append(hidden)
    return _rms_norm(hidden, backbone.model.norm.weight, config.rms_norm_eps), outputs


# --------------------------------------------------------------------------------- SHINE pipeline
def left_pad(sequences: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids, mask


def memory_states(backbone: nn.Module, mem_tokens: torch.Tensor, metalora: LoraDict,
                  contexts: list[list[int]]) -> torch.Tensor:
    """Left-pad, append the memory tokens after the padded sequence, run with the meta-LoRA and read
    every decoder layer's output at the last M positions: (batch, L, M, H)."""
    ids, mask = left_pad(contexts)
    embeds = backbone.model.embed_tokens(ids)
    num_mem = mem_tokens.shape[0]
    embeds = torch.cat([embeds, mem_tokens[None].expand(len(contexts), -1, -1)], dim=1)
    mask = torch.cat([mask, torch.ones(len(contexts), num_mem, dtype=torch.long)], dim=1)
    _, layer_outputs = qwen3_forward(backbone, embeds, mask, metalora)
    return torch.stack([out[:, -num_mem:] for out in layer_outputs], dim=1)


def generate_loradict(backbone: nn.Module, plain: torch.Tensor, r: int, scale: float) -> LoraDict:
    """The reference's "rl" generate function over the whole plain tensor (batch, L*P)."""
    per_layer = lora_params_numel(backbone, r)
    loradict: LoraDict = {}
    for index, layer in enumerate(backbone.model.layers):
        chunk = plain[:, index * per_layer:(index + 1) * per_layer]
        offset = 0
        groups: dict[str, dict[str, dict[str, torch.Tensor | None]]] = {"attention": {}, "mlp": {}}
        for group, key in _module_keys():
            proj = _projection(layer, group, key)
            fan_in, fan_out = proj.in_features, proj.out_features
            A = chunk[:, offset:offset + fan_in * r].view(-1, fan_in, r) * math.sqrt(scale)
            offset += fan_in * r
            B = chunk[:, offset:offset + fan_out * r].view(-1, r, fan_out) * math.sqrt(scale)
            offset += fan_out * r
            C = None
            if proj.bias is not None:
                C = chunk[:, offset:offset + fan_out].view(-1, fan_out) * scale
                offset += fan_out
            groups[group][key] = {"A": A, "B": B, "C": C}
        loradict[index] = groups
    return loradict


def reference_generated_lora(backbone: nn.Module, objects: dict[str, object], contexts: list[list[int]], *,
                             lora_rank: int, lora_scale: float, m2p_heads: int,
                             use_additional: bool = True) -> LoraDict:
    """Context token ids -> the generated LoRA, as the reference computes it."""
    metalora = merge_loradicts(objects["metalora"], objects.get("ift_additional_metalora") if use_additional else None)
    metanetwork = objects["metanetwork"]
    mem_tokens = objects["mem_tokens"].detach()
    depth = len({key.split(".")[1] for key in metanetwork if key.startswith("transformer_layers.")})
    ffn = metanetwork["transformer_layers.0.linear1.weight"].shape[0]
    m2p = ReferenceM2P(backbone.config.num_hidden_layers, mem_tokens.shape[0], backbone.config.hidden_size,
                       depth, m2p_heads, ffn)
    m2p.load_state_dict(metanetwork)
    m2p.eval()
    with torch.no_grad():
        states = memory_states(backbone, mem_tokens, metalora, contexts)
        plain = m2p(states)
        return generate_loradict(backbone, plain, lora_rank, lora_scale)


def reference_answer_logits(backbone: nn.Module, loradict: LoraDict, input_ids: torch.Tensor,
                            attention_mask: torch.Tensor) -> torch.Tensor:
    """Answer-time logits with the generated LoRA (no memory tokens, no meta-LoRA)."""
    with torch.no_grad():
        hidden, _ = qwen3_forward(backbone, backbone.model.embed_tokens(input_ids), attention_mask, loradict)
        return backbone.lm_head(hidden)
