"""The hypernetwork's pieces against the method (docs/method.md): parameter layout, M2P axes."""

from __future__ import annotations

import math

import torch

from shine_hf.modeling.hypernetwork import M2PTransformer, emit_lora
from shine_hf.modeling.lora import TargetModule


def test_emitted_layout_matches_hand_built_flat_vector():
    targets = [TargetModule("q", 3, 2, has_bias=True), TargetModule("o", 2, 3, has_bias=False)]
    rank, scale, batch, layers = 2, 0.04, 2, 3
    numel = sum(t.lora_numel(rank) for t in targets)  # 2*(3+2)+2 + 2*(2+3) = 22
    assert numel == 22
    padded = numel + 5  # a tail past P must be ignored
    flat = torch.randn(batch, layers, padded)
    lora = emit_lora(flat, targets, rank, scale)
    root = math.sqrt(scale)
    for b in range(batch):
        for layer in range(layers):
            v = flat[b, layer].tolist()
            # q: A = next 3*2 numbers viewed (3, 2), B = next 2*2 viewed (2, 2), C = next 2 (times s)
            A_q = torch.tensor(v[0:6]).view(3, 2) * root
            B_q = torch.tensor(v[6:10]).view(2, 2) * root
            C_q = torch.tensor(v[10:12]) * scale
            A_o = torch.tensor(v[12:16]).view(2, 2) * root
            B_o = torch.tensor(v[16:22]).view(2, 3) * root
            q, o = lora[layer]["q"], lora[layer]["o"]
            assert torch.allclose(q.A[b], A_q) and torch.allclose(q.B[b], B_q) and torch.allclose(q.C[b], C_q)
            assert torch.allclose(o.A[b], A_o) and torch.allclose(o.B[b], B_o) and o.C is None


def test_m2p_layer0_mixes_across_layers_and_layer1_across_tokens():
    torch.manual_seed(0)
    batch, layers, tokens, hidden = 1, 3, 4, 8
    m2p = M2PTransformer(layers, tokens, hidden, depth=2, num_heads=2, ffn_dim=16).eval()
    states = torch.randn(batch, layers, tokens, hidden)
    bumped = states.clone()
    bumped[0, 1, 2] += 1.0  # layer 1, token 2

    first_only = M2PTransformer(layers, tokens, hidden, depth=2, num_heads=2, ffn_dim=16).eval()
    first_only.load_state_dict(m2p.state_dict())
    first_only.transformer_layers = first_only.transformer_layers[:1]
    with torch.no_grad():
        changed = (first_only(bumped) - first_only(states)).abs().amax(-1)[0] > 1e-6  # (L, M)
    # after the layer-axis layer: every layer of token 2 changed, no other token did
    assert changed[:, 2].all()
    assert not changed[:, [0, 1, 3]].any()

    with torch.no_grad():
        changed_both = (m2p(bumped) - m2p(states)).abs().amax(-1)[0] > 1e-6
    assert changed_both.all()  # the token-axis layer spreads it to every token


def test_m2p_is_post_norm_gelu_without_dropout():
    m2p = M2PTransformer(2, 3, 8, depth=2, num_heads=2, ffn_dim=16)
    layer = m2p.transformer_layers[0]
    assert layer.norm_first is False and layer.self_attn.batch_first
    assert layer.dropout.p == 0 and layer.linear1.out_features == 16 and layer.norm1.eps == 1e-5
    assert torch.count_nonzero(m2p.layer_pe) == 0 and torch.count_nonzero(m2p.token_pe) == 0
