#!/usr/bin/env python3
"""PyTorch baseline of the grouped expert FFN (bf16) on the same GPU.

Same shapes, token counts and routing as bench/grouped_gemm_bench.cc
(Qwen3-30B-A3B: hidden 2048, 128 experts, inter 768; DeepSeek-V3: hidden 7168,
256 experts, inter 2048; top-8; 8 distinct experts per token drawn with the
same splitmix64 partial Fisher-Yates shuffle, seed 1234), and the same
columns: a Python loop over the experts with rows (F.linear gate_up, silu(g)
* u, F.linear down), timed with torch.cuda.Event after a warm-up (no CUDA
graphs), against the peaks measured here (8192^3 bf16 matmul, 2 GiB
device-to-device copy counting read + write bytes). Like the C++ bench, call
i reads the weights of expert (e + i * E / rotate) mod E for routed expert e,
so consecutive calls do not find the previous call's weights in L2.

Usage: python3 bench/torch_grouped_gemm.py [--model qwen3|dsv3|all]
           [--tokens 1,4,...] [--iters N (0: auto)] [--rotate N (default 16)]
"""
import argparse
import sys

import torch
import torch.nn.functional as F

MODELS = [("qwen3-30b-a3b", 2048, 128, 768, 8), ("deepseek-v3", 7168, 256, 2048, 8)]
MASK = (1 << 64) - 1


def splitmix(x):
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def route_counts(tokens, experts, top_k, seed):
    """Rows per expert, exactly as RouteCounts in grouped_gemm_bench.cc."""
    counts = [0] * experts
    draw = seed << 32
    for _ in range(tokens):
        perm = list(range(experts))
        for j in range(top_k):
            r = splitmix(draw) % (experts - j)
            draw += 1
            perm[j], perm[j + r] = perm[j + r], perm[j]
            counts[perm[j]] += 1
    return counts


def mean_ms(fn, iters):
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="all", choices=["qwen3", "dsv3", "all"])
    ap.add_argument("--tokens", default="1,4,16,64,256,1024,4096,8192")
    ap.add_argument("--iters", type=int, default=0)
    ap.add_argument("--rotate", type=int, default=16)
    args = ap.parse_args()
    if not 1 <= args.rotate <= 256:
        ap.error(f"--rotate must be 1..256, got {args.rotate}")
    print("# command: " + " ".join([sys.executable] + sys.argv))
    dev = torch.device("cuda")
    print(f"# device: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}")
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False

    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        torch.matmul(a, b)
    ms = mean_ms(lambda: torch.matmul(a, b), 10)
    peak_tflops = 2.0 * n ** 3 / (ms * 1e-3) / 1e12
    del a, b
    nbytes = 2 << 30
    src = torch.ones(nbytes, device=dev, dtype=torch.uint8)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    ms = mean_ms(lambda: dst.copy_(src), 10)
    peak_gbs = 2.0 * nbytes / (ms * 1e-3) / 1e9
    del src, dst
    print(f"# peaks: bf16 torch.matmul 8192^3 {peak_tflops:.1f} TFLOP/s; "
          f"D2D copy {peak_gbs:.0f} GB/s (read+write)")
    print(f"{'model':<14} {'tokens':>6} {'rows':>6} {'active':>6} {'path':<8} {'iters':>6} "
          f"{'time_us':>11} {'TFLOP/s':>9} {'%peak':>7} {'wGB/s':>9} {'%copy':>7}")

    token_counts = [int(t) for t in args.tokens.split(",") if t]
    for name, hidden, experts, inter, top_k in MODELS:
        is_qwen = name.startswith("qwen3")
        if args.model != "all" and (args.model == "qwen3") != is_qwen:
            continue
        w_gu = torch.randn(experts, 2 * inter, hidden, device=dev, dtype=torch.bfloat16) * 0.02
        w_dn = torch.randn(experts, hidden, inter, device=dev, dtype=torch.bfloat16) * 0.02
        max_rows = max(token_counts) * top_k
        x = torch.randn(max_rows, hidden, device=dev, dtype=torch.bfloat16)
        out = torch.empty_like(x)
        for tokens in token_counts:
            counts = route_counts(tokens, experts, top_k, 1234)
            offsets = [0]
            for c in counts:
                offsets.append(offsets[-1] + c)
            rows = offsets[-1]
            active = [e for e in range(experts) if counts[e] > 0]

            calls = [0]

            def ffn():
                shift = (calls[0] % args.rotate) * experts // args.rotate
                calls[0] += 1
                for e in active:
                    lo, hi = offsets[e], offsets[e + 1]
                    we = (e + shift) % experts
                    gu = F.linear(x[lo:hi], w_gu[we])
                    act = F.silu(gu[:, :inter]) * gu[:, inter:]
                    out[lo:hi] = F.linear(act, w_dn[we])

            ffn()
            torch.cuda.synchronize()
            iters = args.iters
            if iters <= 0:
                once = mean_ms(ffn, 1)
                iters = int(min(200.0, max(3.0, 200.0 / max(once, 1e-3))))
            ms = mean_ms(ffn, iters)
            flops = 6.0 * rows * hidden * inter
            wbytes = 3.0 * hidden * inter * 2 * len(active)
            tflops = flops / (ms * 1e-3) / 1e12
            gbs = wbytes / (ms * 1e-3) / 1e9
            print(f"{name:<14} {tokens:>6} {rows:>6} {len(active):>6} {'torch':<8} {iters:>6} "
                  f"{ms * 1e3:>11.1f} {tflops:>9.2f} {100 * tflops / peak_tflops:>6.1f}% "
                  f"{gbs:>9.0f} {100 * gbs / peak_gbs:>6.1f}%", flush=True)
        del w_gu, w_dn, x, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
