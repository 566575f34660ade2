"""Where internalize time goes, and what a live adapter costs per generated token.

Prints, for a tiny and a ~100M-parameter random Qwen3-style backbone and contexts of 128/512/1024
tokens, measured side by side in one run:

* internalize broken into its parts -- (1) backbone + meta-LoRA over context and memory tokens,
  (2) M2P, (3) LoRA emission -- each timed alone, and the whole call ÷ the sum of the parts
  (glue overhead; target ≤ 1.10);
* the whole call ÷ one plain backbone forward over the context alone, and M2P ÷ that forward
  (the paper's Qwen3-8B shapes put M2P at about 30 % of a 1K-token forward by FLOP count);
* per-token greedy generation time with a live adapter, with the adapter merged into the weights,
  and with the plain backbone (targets: live ≤ 1.25 × base, merged 1.0 ×).

Run: python benchmarks/internalize.py [--repeats 5] [--sizes tiny,100m] [--lengths 128,512,1024]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from shine_hf import ShineForCausalLM
from shine_hf.modeling.hypernetwork import emit_lora
from shine_hf.testing import tiny_backbone
from shine_hf.testing.models import randomize_hypernetwork

SIZES = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, vocab_size=512, max_position_embeddings=2048),
    # 12 layers, hidden 768, FFN 2048, vocab 32000: 110M parameters with untied embeddings.
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, head_dim=64, vocab_size=32000, max_position_embeddings=2048),
}


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(size: str) -> ShineForCausalLM:
    backbone = tiny_backbone("qwen3", **SIZES[size])
    torch.manual_seed(0)
    model = ShineForCausalLM.from_backbone(backbone, lora_rank=8, metalora_rank=128 if size == "100m" else 8)
    return randomize_hypernetwork(model, std=0.02).eval()


def internalize_breakdown(model: ShineForCausalLM, length: int, repeats: int) -> dict[str, float]:
    vocab = model.backbone.config.vocab_size
    ids = torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(length))
    mask = torch.ones_like(ids)
    hyper = model.hypernetwork
    with torch.no_grad():
        states = model.encode_context(ids, mask)
        flat = hyper.m2p(states).flatten(2)
        steps = {
            "encode": lambda: model.encode_context(ids, mask),
            "m2p": lambda: hyper.m2p(states),
            "emit": lambda: emit_lora(flat, hyper.targets, hyper.lora_rank, hyper.lora_scale),
            "whole": lambda: model.internalize(ids, mask),
            "plain": lambda: model.backbone.base_model(input_ids=ids, use_cache=False),
        }
        for step in steps.values():
            step()  # warm-up
        # interleaved rounds, so drifting machine load hits every step alike
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(repeats):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    r = {name: statistics.median(values) for name, values in times.items()}
    parts = r["encode"] + r["m2p"] + r["emit"]
    return dict(r, glue=r["whole"] / parts, vs_plain=r["whole"] / r["plain"], m2p_vs_plain=r["m2p"] / r["plain"])


def generation_costs(model: ShineForCausalLM, new_tokens: int, repeats: int) -> dict[str, float]:
    vocab = model.backbone.config.vocab_size
    prompt = torch.randint(3, vocab, (1, 32), generator=torch.Generator().manual_seed(1))
    adapter = model.internalize(torch.randint(3, vocab, (1, 128), generator=torch.Generator().manual_seed(2)))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    def run(adapter_or_none):
        return lambda: model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                      adapter=adapter_or_none, **kwargs)

    # interleave the three so drifting machine load hits them alike
    base, live, merged = [], [], []
    run(None)()
    for _ in range(repeats):
        base.append(median_time(run(None), 1))
        live.append(median_time(run(adapter), 1))
        adapter.merge_into(model.backbone)
        try:
            merged.append(median_time(run(None), 1))
        finally:
            adapter.unmerge_from(model.backbone)
    per_token = {k: statistics.median(v) / new_tokens for k, v in dict(base=base, live=live, merged=merged).items()}
    per_token["live_ratio"] = per_token["live"] / per_token["base"]
    per_token["merged_ratio"] = per_token["merged"] / per_token["base"]
    return per_token


def m2p_flop_share(model: ShineForCausalLM, length: int) -> float:
    """M2P FLOPs ÷ backbone-forward FLOPs over `length` tokens (matmuls only, 2 FLOPs per MAC)."""
    config = model.config
    H, L, M, F = config.hidden_size, config.num_hidden_layers, config.num_memory_tokens, config.m2p_ffn_dim
    tokens = L * M
    m2p = config.m2p_num_layers * tokens * 2 * (4 * H * H + 2 * H * F)
    m2p += config.m2p_num_layers // 2 * 2 * 2 * H * (M * L * L + L * M * M)  # attention scores + mix
    backbone_params = sum(p.numel() for n, p in model.backbone.named_parameters() if "embed" not in n)
    return m2p / (2 * backbone_params * length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="tiny,100m")
    parser.add_argument("--lengths", default="128,512,1024")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, float32 CPU")
    for size in args.sizes.split(","):
        model = build(size)
        n_params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
        n_hyper = sum(p.numel() for p in model.hypernetwork.parameters()) / 1e6
        print(f"\n## backbone {size}: {n_params:.1f}M params, hypernetwork {n_hyper:.1f}M params, "
              f"M = {model.config.num_memory_tokens} memory tokens, r = {model.config.lora_rank}")
        print("| context | encode (s) | M2P (s) | emit (s) | internalize (s) | whole/sum parts | "
              "whole/plain fwd | M2P/plain fwd | M2P FLOP share |")
        print("|---|---|---|---|---|---|---|---|---|")
        for length in map(int, args.lengths.split(",")):
            r = internalize_breakdown(model, length, args.repeats)
            print(f"| {length} | {r['encode']:.4f} | {r['m2p']:.4f} | {r['emit']:.5f} | {r['whole']:.4f} | "
                  f"{r['glue']:.3f} | {r['vs_plain']:.2f} | {r['m2p_vs_plain']:.2f} | "
                  f"{m2p_flop_share(model, length):.2f} |")
        g = generation_costs(model, args.new_tokens, args.repeats)
        print(f"\nper-token generation ({args.new_tokens} new tokens, prompt 32): base {g['base'] * 1e3:.2f} ms, "
              f"live adapter {g['live'] * 1e3:.2f} ms ({g['live_ratio']:.3f} x base), merged "
              f"{g['merged'] * 1e3:.2f} ms ({g['merged_ratio']:.3f} x base)")


if __name__ == "__main__":
    main()
