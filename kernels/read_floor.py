"""The device's read floor: the least time any kernel needs to read n bytes, fitted as t0 + n / rate.

bench-kernels' "% of floor" column divided the bytes a method must read by the device-to-device copy bandwidth (bytes
read + written). On the H100 a copy moves 2.40 TB/s while a pure read streams 2.9-3.0 TB/s (session 20,
scripts/device/probe_read_roofline.py), so that column put kernels near 100% of a floor they were well above. This
module measures the read floor itself: `read_kernel` sums random fp16 buffers (rotated past L2) with nothing else to
do, timed as CUDA-graph replays; the best of a few configs at two sizes gives the fixed part t0 (ramp-up, tail, the
gap between graph nodes) and the streaming rate. On the H100 this Triton reader came within 1.5% of the best of 162
CUDA C readers (16-byte loads, 1-8 in flight per thread, three cache flavours, two access patterns), and the fit
(t0 2.1 µs, 3.10 TB/s) reproduced the measured reads of 90.2 / 108.2 / 270.5 MB within 0.3%.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# (BLOCK, num_warps, programs per SM, STAGES): the fastest Triton readers of the session 20 probe's sweep
READ_CONFIGS = ((8192, 4, 4, 3), (8192, 8, 4, 3), (4096, 8, 4, 3))
ROTATE_BYTES = 600e6   # buffers read in turn per replay: well past the 50 MB L2


@triton.jit
def read_kernel(p, n, out, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    """Program i sums p[i * BLOCK + k * grid * BLOCK : ...] for k = 0, 1, ... into out[i] (fp32): a pure read."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in tl.range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK, num_stages=STAGES):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(p + offs, mask=offs < n, other=0.0).to(tl.float32)
    tl.store(out + tl.program_id(0), tl.sum(acc, 0))


def read_sum(buf: torch.Tensor, out: torch.Tensor, block: int, warps: int, programs: int, stages: int) -> None:
    """out[:grid] = per-program sums of `buf` (1-D) read by `read_kernel`; grid = min(programs, blocks in buf)."""
    grid = min(programs, triton.cdiv(buf.numel(), block), out.numel())
    read_kernel[(grid,)](buf, buf.numel(), out, BLOCK=block, STAGES=stages, num_warps=warps)


@dataclass(frozen=True)
class ReadFloor:
    """Least µs to read n bytes on this device: t0_us + n / rate."""
    t0_us: float
    gbs: float   # the streaming rate, GB/s (1e9 bytes)

    def floor_us(self, n_bytes: float) -> float:
        return self.t0_us + n_bytes / (self.gbs * 1e3)


def fit_read_floor(small_bytes: float, small_us: float, large_bytes: float, large_us: float) -> ReadFloor:
    """The line through two measured reads (rate from the difference, t0 where it meets zero bytes, at least 0)."""
    if not large_bytes > small_bytes or not large_us > small_us:
        raise ValueError(f"read floor fit needs a larger read to take longer: {small_bytes:.0f} B in {small_us} µs, "
                         f"{large_bytes:.0f} B in {large_us} µs")
    gbs = (large_bytes - small_bytes) / (large_us - small_us) / 1e3
    return ReadFloor(t0_us=max(0.0, small_us - small_bytes / (gbs * 1e3)), gbs=gbs)


def rotated_buffers(n_bytes: int, generator: torch.Generator, device="cuda") -> list[torch.Tensor]:
    """Random fp16 buffers of `n_bytes` each (never zeros), at least two and together >= ROTATE_BYTES: read in turn,
    none comes from L2."""
    sets = max(2, int(-(-ROTATE_BYTES // n_bytes)))
    return [torch.randn(n_bytes // 2, device=device, generator=generator, dtype=torch.float16) for _ in range(sets)]


def best_read_us(n_bytes: int, reps: int, timer=None, device="cuda") -> float:
    """Median µs of the fastest READ_CONFIGS reader for `n_bytes` (`rotated_buffers`)."""
    if timer is None:
        from .bench_timing import time_calls_us as timer
    bufs = rotated_buffers(n_bytes, torch.Generator(device=device).manual_seed(0), device)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device == "cuda" else 4
    out = torch.empty(max(c[2] for c in READ_CONFIGS) * sms, device=device)
    return min(timer([lambda b=b, c=c: read_sum(b, out, c[0], c[1], c[2] * sms, c[3]) for b in bufs], reps)["us"]
               for c in READ_CONFIGS)


def measure_read_floor(reps: int = 20, small_bytes: int = 64 << 20, large_bytes: int = 256 << 20, timer=None,
                       device="cuda") -> ReadFloor:
    """This device's read floor from the best reads of `small_bytes` and `large_bytes`."""
    return fit_read_floor(small_bytes, best_read_us(small_bytes, reps, timer, device),
                          large_bytes, best_read_us(large_bytes, reps, timer, device))
