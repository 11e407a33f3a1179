"""GPU timing helpers: CUDA-graph replays timed with CUDA events (median), and the copy bandwidth."""
from __future__ import annotations

import statistics
from typing import Callable

import torch


def time_calls_us(calls: list[Callable[[], object]], reps: int) -> dict:
    """Median microseconds per call of `calls` (one call per weight set, run in order).

    All calls are captured into one CUDA graph (launch overhead removed, as in a graph-captured decode
    loop); the graph is replayed `reps` times, each replay timed with CUDA events. Eager warm-up first
    (Triton compilation and autotuning must not happen during capture).
    """
    for _ in range(2):
        for call in calls:
            call()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    times.sort()
    return {"us": statistics.median(times), "us_p10": times[len(times) // 10], "us_p90": times[(9 * len(times)) // 10]}


def copy_bandwidth_gbs(n_bytes: int = 2 << 30, reps: int = 20) -> float:
    """Device-to-device copy, bytes read + written over the median time: the practical bandwidth ceiling."""
    src = torch.randn(n_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    res = time_calls_us([lambda: dst.copy_(src)], reps)
    return 2 * n_bytes / (res["us"] * 1e-6) / 1e9
