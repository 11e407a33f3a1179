"""GPU probe: how fast each one-token GEMV streams a decode step's weights, side by side in one run.

For each shape (the 7B gate / up rows 11008 x 4096, the fused q/k/v 12288 x 4096, the o projection 4096 x 4096), fp16,
SETS weight sets (together well over the 50 MB L2) are called in turn inside one CUDA graph, timed with CUDA events
(median of `reps` replays, bench_timing.time_calls_us): cuBLAS (F.linear), the TMA GEMV (triton_gemv.gemv: the TMA
gate kernel's loop without activation or list) and the GEMV that loads its programs' whole rows at once
(triton_gemv_prefetch.gemv_prefetch, no PDL). Prints µs per call, TB/s of weight bytes, and each kernel against cuBLAS;
the outputs are compared with cuBLAS's first.
Usage: python3 scripts/device/probe_gemv_stream.py [reps]
"""
import sys

import torch
import torch.nn.functional as F

from actsparse.kernels.bench_timing import time_calls_us
from actsparse.kernels.triton_gemv import gemv
from actsparse.kernels.triton_gemv_prefetch import gemv_prefetch

SHAPES = {"gate 11008x4096": (11008, 4096), "qkv 12288x4096": (12288, 4096), "o 4096x4096": (4096, 4096)}
SETS = 8


def main(reps: int) -> None:
    print(f"# {torch.cuda.get_device_name()}, fp16, {SETS} weight sets per shape, median of {reps} graph replays")
    print("| shape | method | µs | TB/s | vs cuBLAS | max rel. diff to cuBLAS |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator(device="cuda").manual_seed(0)
    for label, (n, d) in SHAPES.items():
        ws = [(torch.randn(n, d, device="cuda", generator=g) * d ** -0.5).half() for _ in range(SETS)]
        xs = [torch.randn(1, d, device="cuda", generator=g).half() for _ in range(SETS)]
        methods = {"cuBLAS": lambda x, w: F.linear(x, w), "TMA GEMV": gemv, "whole-row GEMV": gemv_prefetch}
        base = None
        for name, fn in methods.items():
            ref = [F.linear(x, w).float() for x, w in zip(xs, ws)]
            diff = max(((fn(x, w).float() - r).abs().max() / r.abs().max()).item() for x, w, r in zip(xs, ws, ref))
            us = time_calls_us([lambda x=x, w=w, fn=fn: fn(x, w) for x, w in zip(xs, ws)], reps)["us"]
            base = base or us
            print(f"| {label} | {name} | {us:.2f} | {n * d * 2 / us / 1e6:.2f} | {base / us:.3f}x | {diff:.1e} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
