"""What internalize costs, measured side by side in one run, against the targets of the speed work.

For a random Qwen3-style backbone (default "100m": hidden 768, 12 layers; "tiny" for a smoke run),
with r = 8, R = 128 and 4 M2P layers, it prints:

1. **Reading pass against its floor.** For contexts of 128/512/1024 tokens: one plain backbone
   forward over the context with and without the LM head; the *floor* = one backbone pass over
   context + memory tokens without the LM head (no LoRA, no hooks) + the M2P; and `internalize`
   with the meta-LoRA (a) as separate low-rank matmuls (`meta_lora_folding=False`), (b) folded into
   cached copies of the target weights (`True`), (c) one GEMM over [W; Aᵀ] with the B product after
   (measured here only, through the same module-forward override the folded path uses). Ratios:
   internalize ÷ plain forward (with / without head) and ÷ floor (target ≤ 1.1 with folding).
   The M2P is also timed with PyTorch's fused encoder fast path on and off.
2. **Batched vs single calls.** Throughput of `internalize` on 1, 4 and 8 documents in one call
   against the same documents one call each (≥ 1.0 at every batch size on CPU), with the default
   token budget per reading pass and with one pass for the whole batch; batched == single (max |diff|).
3. **Peak memory.** Each in a fresh process, the model loaded (with the folded copies built, for
   the folded row), then the peak resident set size reset (Linux `/proc/self/clear_refs`) or CUDA's
   peak counter: the peak of internalize ÷ that of one plain forward over the same context
   (target ≤ 1.2). (Above the loaded model, RSS differences mostly show the allocator's reuse of
   freed memory, so only whole-process peaks are compared.)
4. **Generation** per token with a live adapter, merged, and the plain backbone (targets: live
   ≤ 1.25 × base, merged 1.0 ×).
5. **bfloat16 backbone** (hypernetwork float32): internalize time against float32 and the generated
   LoRA's difference (relative Frobenius error of each module's delta).

Run: python benchmarks/internalize.py [--size 100m] [--repeats 5] [--threads 2] [--sections 1,2,3,4,5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from shine_hf import ShineForCausalLM
from shine_hf.testing import tiny_backbone
from shine_hf.testing.models import randomize_hypernetwork

SIZES = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, vocab_size=512, max_position_embeddings=2048),
    # 12 layers, hidden 768, FFN 2048, vocab 32000: ~125M parameters with untied embeddings.
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, head_dim=64, vocab_size=32000, max_position_embeddings=2048),
}


def build(size: str, dtype: torch.dtype = torch.float32) -> ShineForCausalLM:
    backbone = tiny_backbone("qwen3", **SIZES[size]).to(dtype)
    torch.manual_seed(0)
    model = ShineForCausalLM.from_backbone(backbone, lora_rank=8, metalora_rank=128 if size == "100m" else 8)
    model.hypernetwork.float()
    return randomize_hypernetwork(model, std=0.02).eval()


def random_ids(model: ShineForCausalLM, rows: int, length: int, seed: int) -> torch.Tensor:
    vocab = model.backbone.config.vocab_size
    return torch.randint(3, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


def interleaved(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each step, run round by round so drifting load hits every step alike."""
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# ---------------------------------------------------------------------------------------------
# 1. reading pass against the floor


@contextlib.contextmanager
def stacked_meta_lora(model: ShineForCausalLM):
    """The meta-LoRA as one GEMM over [W; Aᵀ] per projection, then (x A) B added (benchmark only)."""
    meta_lora = model.hypernetwork.meta_lora
    lora = meta_lora.lora_dict()
    replaced = []
    with torch.no_grad():
        for layer, target, module in model.lora_injector.modules():
            A, B, C = lora[layer][target.name]
            stacked = torch.cat([module.weight, A[0].T.to(module.weight.dtype)])  # (out + R, in)
            bias = module.bias if C is None else module.bias + C[0]
            bias = None if bias is None else torch.cat([bias, bias.new_zeros(A.shape[-1])])
            out = module.weight.shape[0]
            B0 = B[0].to(module.weight.dtype)

            def forward(x, stacked=stacked, bias=bias, out=out, B0=B0):
                both = torch.nn.functional.linear(x, stacked, bias)
                return both[..., :out] + both[..., out:] @ B0

            module.forward = forward
            replaced.append(module)
    meta_lora.lora_dict = lambda: {layer: {} for layer in lora}  # the hooks add nothing on top
    try:
        yield
    finally:
        del meta_lora.lora_dict
        for module in replaced:
            del module.forward


def reading_steps(model: ShineForCausalLM, length: int) -> dict[str, Callable[[], object]]:
    """The timed steps of section 1 for one context length."""
    hyper, injector = model.hypernetwork, model.lora_injector
    ids = random_ids(model, 1, length, seed=length)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        states = hyper.encode_context(injector, ids, mask)
        embeds = model.backbone.get_input_embeddings()(ids)
        floor_embeds = torch.cat([embeds, hyper.memory_tokens[None].to(embeds.dtype)], dim=1)

    def internalize(folding):
        def run():
            model.meta_lora_folding = folding
            return model.internalize(ids)
        return run

    def stacked():
        with stacked_meta_lora(model):
            return hyper(injector, ids, mask)

    def m2p_without_fastpath():
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return hyper.m2p(states)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)

    return {
        "plain_head": lambda: model.backbone(input_ids=ids, use_cache=False),
        "plain": lambda: model.backbone.base_model(input_ids=ids, use_cache=False),
        "floor_pass": lambda: model.backbone.base_model(inputs_embeds=floor_embeds, use_cache=False),
        "m2p": lambda: hyper.m2p(states),
        "m2p_slow": m2p_without_fastpath,
        "unfolded": internalize(False),
        "folded": internalize(True),
        "stacked": stacked,
    }


def reading_pass(model: ShineForCausalLM, lengths: list[int], repeats: int) -> list[dict[str, float]]:
    rows = []
    for length in lengths:
        with torch.no_grad():
            r = interleaved(reading_steps(model, length), repeats)
        model.meta_lora_folding = "auto"
        r["length"] = length
        r["floor"] = r["floor_pass"] + r["m2p"]
        rows.append(r)
    return rows


# ---------------------------------------------------------------------------------------------
# 2. batched vs singles


def batching_steps(model: ShineForCausalLM, ids: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The timed steps of section 2 for one batch of documents."""

    def batched(budget):
        def run():
            model.internalize_batch_tokens = budget
            return model.internalize(ids)
        return run

    def singles():
        model.internalize_batch_tokens = None
        return [model.internalize(ids[i : i + 1]) for i in range(ids.shape[0])]

    return {"singles": singles, "batched": batched(None), "one_pass": batched(10**9)}


def batching(model: ShineForCausalLM, batch_sizes: list[int], length: int, repeats: int) -> list[dict[str, float]]:
    rows = []
    for batch in batch_sizes:
        ids = random_ids(model, batch, length, seed=batch)
        steps = batching_steps(model, ids)
        with torch.no_grad():
            r = interleaved(steps, repeats)
            together, alone = steps["one_pass"](), steps["singles"]()
        model.internalize_batch_tokens = None
        diff = max(
            (together.lora[layer][name].A[i] - alone[i].lora[layer][name].A[0]).abs().max().item()
            for i in range(batch) for layer in together.lora for name in together.lora[layer]
        )
        rows.append(dict(r, batch=batch, max_diff=diff))
    return rows


# ---------------------------------------------------------------------------------------------
# 3. peak memory (fresh process per measurement)

_MEMORY_CHILD = """
import gc, json, sys, torch
sys.path.insert(0, {here!r})
from internalize import build, random_ids
model = build({size!r})
ids = random_ids(model, 1, {length}, seed=0)
cuda = torch.cuda.is_available()
if {what!r} == "folded":  # the folded copies are built once and kept: part of the loaded model
    model.meta_lora_folding = True
    with torch.no_grad():
        model.internalize(ids[:, :8])
gc.collect()

def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field))

if cuda:
    torch.cuda.reset_peak_memory_stats()
    loaded = torch.cuda.memory_allocated()
else:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak resident set size (VmHWM) to the current one
    loaded = status("VmRSS:")
with torch.no_grad():
    if {what!r} == "plain":
        model.backbone.base_model(input_ids=ids, use_cache=False)
    elif {what!r} == "plain_head":
        model.backbone(input_ids=ids, use_cache=False)
    else:
        model.meta_lora_folding = {what!r} == "folded"
        model.internalize(ids)
peak = torch.cuda.max_memory_allocated() if cuda else status("VmHWM:")
print(json.dumps({{"loaded": loaded, "peak": peak}}))
"""


def peak_memory(size: str, length: int) -> dict[str, dict[str, int]]:
    import pathlib

    here = str(pathlib.Path(__file__).resolve().parent)
    results = {}
    for what in ("plain", "plain_head", "unfolded", "folded"):
        code = _MEMORY_CHILD.format(here=here, size=size, length=length, what=what)
        output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        results[what] = json.loads(output.stdout.strip().splitlines()[-1])
    return results


# ---------------------------------------------------------------------------------------------
# 4. generation


def generation_costs(model: ShineForCausalLM, new_tokens: int, repeats: int) -> dict[str, float]:
    prompt = random_ids(model, 1, 32, seed=1)
    adapter = model.internalize(random_ids(model, 1, 128, seed=2))
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    def run(adapter_or_none):
        return lambda: model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                      adapter=adapter_or_none, **kwargs)

    base, live, merged = [], [], []
    run(None)()
    for _ in range(repeats):
        for store, fn in ((base, run(None)), (live, run(adapter))):
            start = time.perf_counter()
            fn()
            store.append(time.perf_counter() - start)
        adapter.merge_into(model.backbone)
        try:
            start = time.perf_counter()
            run(None)()
            merged.append(time.perf_counter() - start)
        finally:
            adapter.unmerge_from(model.backbone)
    per_token = {k: statistics.median(v) / new_tokens for k, v in dict(base=base, live=live, merged=merged).items()}
    return dict(per_token, live_ratio=per_token["live"] / per_token["base"],
                merged_ratio=per_token["merged"] / per_token["base"])


# ---------------------------------------------------------------------------------------------
# 5. bfloat16


def bfloat16(size: str, length: int, repeats: int) -> dict[str, float]:
    full, half = build(size), build(size, torch.bfloat16)
    ids = random_ids(full, 1, length, seed=3)
    with torch.no_grad():
        r = interleaved({"float32": lambda: full.internalize(ids), "bfloat16": lambda: half.internalize(ids)}, repeats)
        a, b = full.internalize(ids), half.internalize(ids)
    errors = []
    for layer in a.lora:
        for name in a.lora[layer]:
            wa, wb = a.lora[layer][name], b.lora[layer][name]
            delta_a, delta_b = wa.A[0].double() @ wa.B[0].double(), wb.A[0].double() @ wb.B[0].double()
            errors.append((torch.linalg.norm(delta_a - delta_b) / torch.linalg.norm(delta_a)).item())
    return dict(r, speedup=r["float32"] / r["bfloat16"], median_rel_error=statistics.median(errors),
                max_rel_error=max(errors))


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100m", choices=sorted(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lengths", default="128,512,1024")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--batch-length", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--sections", default="1,2,3,4,5")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or platform.machine()
    print(f"# {device}, {torch.get_num_threads()} threads, torch {torch.__version__}; backbone {args.size}")
    model = build(args.size)
    backbone_params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    hyper_params = sum(p.numel() for p in model.hypernetwork.parameters()) / 1e6
    print(f"backbone {backbone_params:.1f}M params, hypernetwork {hyper_params:.1f}M params, "
          f"M = {model.config.num_memory_tokens} memory tokens, r = {model.config.lora_rank}, "
          f"R = {model.config.metalora_rank}")

    if "1" in sections:
        print("\n## 1. reading pass against the floor (seconds; ratios)\n")
        print("| context | plain fwd | plain + head | floor (pass + M2P) | M2P | M2P no fast path | "
              "unfolded | folded | [W;Aᵀ] | unfolded/floor | folded/floor | [W;Aᵀ]/floor | folded/plain | "
              "folded/plain+head |")
        print("|" + "---|" * 14)
        for r in reading_pass(model, [int(n) for n in args.lengths.split(",")], args.repeats):
            print(f"| {r['length']} | {r['plain']:.4f} | {r['plain_head']:.4f} | {r['floor']:.4f} | {r['m2p']:.4f} | "
                  f"{r['m2p_slow']:.4f} | {r['unfolded']:.4f} | {r['folded']:.4f} | {r['stacked']:.4f} | "
                  f"{r['unfolded'] / r['floor']:.3f} | {r['folded'] / r['floor']:.3f} | "
                  f"{r['stacked'] / r['floor']:.3f} | {r['folded'] / r['plain']:.2f} | "
                  f"{r['folded'] / r['plain_head']:.2f} |")

    if "2" in sections:
        print(f"\n## 2. batched vs single calls ({args.batch_length}-token documents; default budget "
              f"{model.internalize_batch_tokens or 'auto'})\n")
        print("| documents | singles (s) | batched, default budget (s) | one pass (s) | "
              "throughput batched/singles | one pass/singles | max diff batched vs single |")
        print("|---|---|---|---|---|---|---|")
        for r in batching(model, [int(n) for n in args.batch_sizes.split(",")], args.batch_length, args.repeats):
            print(f"| {r['batch']} | {r['singles']:.4f} | {r['batched']:.4f} | {r['one_pass']:.4f} | "
                  f"{r['singles'] / r['batched']:.2f} | {r['singles'] / r['one_pass']:.2f} | {r['max_diff']:.1e} |")

    if "3" in sections:
        length = max(int(n) for n in args.lengths.split(","))
        memory = peak_memory(args.size, length)
        plain = memory["plain"]
        print(f"\n## 3. peak memory, {length}-token context (fresh process each; MiB)\n")
        print("| step | loaded model | peak | peak ÷ plain fwd peak |")
        print("|---|---|---|---|")
        for what, m in memory.items():
            print(f"| {what} | {m['loaded'] / 2**20:.0f} | {m['peak'] / 2**20:.0f} | {m['peak'] / plain['peak']:.2f} |")

    if "4" in sections:
        g = generation_costs(model, args.new_tokens, args.repeats)
        print(f"\n## 4. generation per token ({args.new_tokens} new tokens, prompt 32)\n")
        print(f"base {g['base'] * 1e3:.2f} ms, live adapter {g['live'] * 1e3:.2f} ms ({g['live_ratio']:.3f} x base), "
              f"merged {g['merged'] * 1e3:.2f} ms ({g['merged_ratio']:.3f} x base)")

    if "5" in sections:
        length = 512
        b = bfloat16(args.size, length, args.repeats)
        print(f"\n## 5. bfloat16 backbone, float32 hypernetwork ({length}-token context)\n")
        print(f"internalize float32 {b['float32']:.4f} s, bfloat16 {b['bfloat16']:.4f} s "
              f"(speed-up {b['speedup']:.2f} x); generated delta vs float32: median relative error "
              f"{b['median_rel_error']:.2e}, max {b['max_rel_error']:.2e}")


if __name__ == "__main__":
    main()
