"""The autotuner's timer: each config's device time, from CUDA-graph replays after an L2 flush.

Triton's default `do_bench` times `kernel_call` (the autotuner's Python hooks plus the Triton launcher) with CUDA
events around each call. For our ~5-10 µs sparse kernels that measures the host: on an H100 (session 6) the down
kernel's configs timed 20-140 µs in the autotuner against 9-11 µs per call under the profiler, and the config it
picked changed from one process to the next (the breakdown's pick ran 18.8 µs a call, the bench's ~9). Here the
call is captured once in a CUDA graph, so a replay costs no host time; an L2 flush (its own graph) runs before each
timed replay, as Triton's `do_bench` does, so the weights come from DRAM as in a real decode step.
"""
from __future__ import annotations

import torch

from .dispatch import warn_once

FLUSH_BYTES = 128 << 20  # > 2x the H100 / H200 L2 (50-60 MB)
_flush: dict = {}


def _flush_graph(device) -> torch.cuda.CUDAGraph:
    if device not in _flush:
        buf = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            buf.zero_()
        _flush[device] = (graph, buf)
    return _flush[device][0]


def graph_do_bench(fn, quantiles=(0.5, 0.2, 0.8), reps: int = 25, warmup: int = 3):
    """`do_bench` for `triton.autotune`: milliseconds at `quantiles` of `fn`'s device time per call."""
    for _ in range(warmup):  # compiles the config; raises its OutOfResources to the autotuner as usual
        fn()
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception as e:  # noqa: BLE001 -- e.g. called inside another capture: time the plain way, and say so
        warn_once(f"autotune: CUDA-graph timing unavailable ({type(e).__name__}); timing with triton.testing.do_bench")
        import triton.testing
        return triton.testing.do_bench(fn, quantiles=list(quantiles))
    flush = _flush_graph(torch.cuda.current_device())
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        flush.replay()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    times = torch.tensor([s.elapsed_time(e) for s, e in zip(starts, ends)])
    return [float(torch.quantile(times, q)) for q in quantiles]
