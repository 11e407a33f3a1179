"""Where one sparse-FFN call's time goes: device microseconds per kernel, from the PyTorch profiler (GPU).

`bench-kernels` times whole calls as CUDA-graph replays. This runs the same calls (same weight sets rotated
past L2, same inputs and masks, bench.py's methods) eagerly under torch.profiler and reports each kernel's
device time per call. The sum over kernels is the time the GPU spent computing; a graph-timed call that is
longer than that sum spends the rest between dependent launches.

    cd /tmp && python -m actsparse.kernels.bench_breakdown --shape llama2-7b --batch 1 --sparsity 0.9
"""
from __future__ import annotations

import argparse
import sys

import torch

from .bench import DTYPES, case_calls
from .bench_data import SHAPES, make_weight_sets
from .bench_report import write_json

METHODS = ("dense", "ours_union", "ours_union_gate_up", "ours_union_rows", "ours_predicted_union", "ours_predicted_index",
           "ours_predicted_index_rows", "ours_predicted_inline",
           "ours_predicted_fused")


def kernel_times_us(calls, reps: int) -> dict[str, float]:
    """Device microseconds per call of each kernel name, `calls` run `reps` times in turn (eager)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    for call in calls:   # compile and autotune outside the profile
        call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            for call in calls:
                call()
        torch.cuda.synchronize()
    n = reps * len(calls)
    return {e.key: e.device_time_total / n for e in prof.key_averages()
            if e.device_type == DeviceType.CUDA and e.device_time_total > 0}


def chosen_configs() -> dict[str, str]:
    """The block sizes the autotuner picked for each kernel (its last key), e.g. 'BLOCK_J: 4, BLOCK_K: 512, ...',
    and, where it benchmarked in this process, every config's median µs (the whole sweep, fastest first)."""
    from . import triton_gate, triton_predicted, triton_up_down
    from .triton_compact_up import compact_up_kernel
    kernels = {"gate_kernel": triton_gate.gate_kernel, "compact_kernel": triton_gate.compact_kernel,
               "compact_up_kernel": compact_up_kernel,
               "up_kernel": triton_up_down.up_kernel, "down_kernel": triton_up_down.down_kernel,
               "pred_up_kernel": triton_predicted.pred_up_kernel, "pred_down_kernel": triton_predicted.pred_down_kernel}
    out = {}
    for name, k in kernels.items():
        if getattr(k, "best_config", None) is None:
            continue
        out[name] = str(k.best_config)
        # do_bench's result per config: median ms, or (median, p20, p80) with quantiles
        median_ms = {c: t[0] if isinstance(t, (list, tuple)) else t
                     for c, t in (getattr(k, "configs_timings", None) or {}).items()}
        out[name] += "".join(f"\n        {1e3 * ms:8.1f} us  {c}" for c, ms in sorted(median_ms.items(),
                                                                                       key=lambda kv: kv[1]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_breakdown", description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="llama2-7b", choices=list(SHAPES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--dtype", choices=list(DTYPES), default="fp16")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default=None, help="JSON file")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_breakdown needs a CUDA GPU (none found)", file=sys.stderr)
        return 2
    d, f = SHAPES[args.shape]
    dtype = DTYPES[args.dtype]
    gen = torch.Generator(device="cuda").manual_seed(0)
    sets = make_weight_sets(d, f, dtype, "cuda", 120 << 20, touched_fraction=1 - args.sparsity)
    _, _, methods, _ = case_calls(sets, d, f, args.batch, args.sparsity, dtype, "cuda", gen)
    result = dict(shape=args.shape, batch=args.batch, sparsity=args.sparsity, dtype=args.dtype,
                  device=torch.cuda.get_device_name(), methods={})
    for name in args.methods.split(","):
        kernels = kernel_times_us(methods[name], args.reps)
        result["methods"][name] = dict(kernels_us=kernels, sum_us=sum(kernels.values()), configs=chosen_configs())
        print(f"{name}: {sum(kernels.values()):.1f} us of kernels per call", flush=True)
        for k, us in sorted(kernels.items(), key=lambda kv: -kv[1]):
            print(f"    {us:8.2f} us  {k[:90]}")
        for k, cfg in result["methods"][name]["configs"].items():
            print(f"    autotuned {k}: {cfg}")
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
