"""GPU probe: the fastest this device reads memory, against cuBLAS's dense 7B FFN, side by side in one run.

Issue 8's no-predictor goal (batch 1, 90% sparse, >= 3.0x over cuBLAS dense) needs the exact path's bytes (the whole
gate matrix, 90.2 MB, plus 10% of the up and W_down^T rows, 18.0 MB: 108.2 MB at the 7B shape) read in a third of the
dense FFN's time. This probe measures, in one process:
- the dense FFN as bench-kernels times it (three cuBLAS GEMVs and relu * up, fp16, batch 1, weight sets rotated);
- pure reads with no arithmetic worth counting, the fastest any kernel can stream: a CUDA C kernel (CuPy, NVRTC) with
  16-byte loads, U loads in flight per thread, three load flavours (`__ldg`, `__ldcs` streaming, and
  `ld.global.nc.L1::no_allocate.L2::256B`), grid-strided over the whole buffer or each block over its own contiguous
  chunk (as a GEMV's programs read their rows), over a sweep of grids and block sizes; a Triton read kernel (read_floor.py, which bench-kernels' floor uses) over a
  sweep of block sizes, warps, programs and pipeline stages; torch's sum; and a device-to-device copy;
- the one-token GEMVs at the gate's shape (cuBLAS, and triton_gemv_prefetch, the fastest of ours, session 19).
Each read moves 90.2 MB (the gate), 108.2 MB (the exact path's floor bytes) or 270.5 MB (the dense FFN's weights),
over buffer sets rotated past L2 (>= 600 MB per round), random fp16 contents (never zeros), timed as CUDA-graph
replays with CUDA events (median of `reps`; kernels_timing.time_calls_us). Prints the best read rate per size and
the bound it sets: dense µs / (108.2 MB at the best rate) is the largest speed-up any kernel reading those bytes can
have over this dense FFN on this device.
Usage: python3 scripts/device/probe_read_roofline.py [reps]   (~1-2 min on an H100)
"""
import itertools
import sys

import torch
import torch.nn.functional as F
from actsparse.kernels.bench_timing import copy_bandwidth_gbs, time_calls_us
from actsparse.kernels.read_floor import ROTATE_BYTES, read_sum, rotated_buffers
from actsparse.kernels.triton_gemv_prefetch import gemv_prefetch

D_MODEL, D_FF = 4096, 11008
GATE_BYTES = D_FF * D_MODEL * 2
ROWS_BYTES = 2 * round(0.1 * D_FF) * D_MODEL * 2          # 10% of the up and W_down^T rows
SIZES = {"gate 90.2 MB": GATE_BYTES, "exact floor 108.2 MB": GATE_BYTES + ROWS_BYTES, "dense 270.5 MB": 3 * GATE_BYTES}

CUDA_SRC = r"""
__device__ __forceinline__ uint4 ld_nc(const uint4* p) { return __ldg(p); }
__device__ __forceinline__ uint4 ld_cs(const uint4* p) { return __ldcs(p); }
__device__ __forceinline__ uint4 ld_na(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
#define KERNELS(NAME, LOAD, U)                                                                                 \
extern "C" __global__ void stride_##NAME##_##U(const uint4* __restrict__ p, long long n, unsigned* out) {      \
    long long stride = (long long)gridDim.x * blockDim.x;                                                      \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                                            \
    unsigned acc = 0;                                                                                          \
    for (; i + (U - 1) * stride < n; i += U * stride) {                                                        \
        uint4 v[U];                                                                                            \
        _Pragma("unroll") for (int k = 0; k < U; ++k) v[k] = LOAD(p + i + k * stride);                        \
        _Pragma("unroll") for (int k = 0; k < U; ++k) acc ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;               \
    }                                                                                                          \
    for (; i < n; i += stride) { uint4 v = LOAD(p + i); acc ^= v.x ^ v.y ^ v.z ^ v.w; }                      \
    if (acc == 0x9e3779b9u) out[0] = acc;                                                                      \
}                                                                                                              \
extern "C" __global__ void chunk_##NAME##_##U(const uint4* __restrict__ p, long long n, unsigned* out) {       \
    long long per = (n + gridDim.x - 1) / gridDim.x;                                                           \
    long long i = (long long)blockIdx.x * per + threadIdx.x, end = min(n, (long long)(blockIdx.x + 1) * per);  \
    long long stride = blockDim.x;                                                                             \
    unsigned acc = 0;                                                                                          \
    for (; i + (U - 1) * stride < end; i += U * stride) {                                                      \
        uint4 v[U];                                                                                            \
        _Pragma("unroll") for (int k = 0; k < U; ++k) v[k] = LOAD(p + i + k * stride);                        \
        _Pragma("unroll") for (int k = 0; k < U; ++k) acc ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;               \
    }                                                                                                          \
    for (; i < end; i += stride) { uint4 v = LOAD(p + i); acc ^= v.x ^ v.y ^ v.z ^ v.w; }                    \
    if (acc == 0x9e3779b9u) out[0] = acc;                                                                      \
}
#define ALL_U(NAME, LOAD) KERNELS(NAME, LOAD, 1) KERNELS(NAME, LOAD, 4) KERNELS(NAME, LOAD, 8)
ALL_U(nc, ld_nc)
ALL_U(cs, ld_cs)
ALL_U(na, ld_na)
"""
CUDA_LOADS, CUDA_U = ("nc", "cs", "na"), (1, 4, 8)


def cuda_read_calls(bufs, sms):
    """{config name: calls} for the CUDA C read kernels; {} (said once) where CuPy or NVRTC is unavailable."""
    try:
        import cupy
        module = cupy.RawModule(code=CUDA_SRC, options=("-std=c++17",))
    except Exception as exc:  # noqa: BLE001 - a probe: report and go on with the other readers
        print(f"# CUDA C readers unavailable ({type(exc).__name__}: {exc}); Triton / torch readers only")
        return {}
    sink = cupy.zeros(1, dtype=cupy.uint32)
    views = [cupy.asarray(b).view(cupy.uint8).view(cupy.uint32) for b in bufs]
    n16 = bufs[0].numel() * 2 // 16

    def launch(kern, grid, block, view):
        with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
            kern((grid,), (block,), (view, cupy.int64(n16), sink))

    calls = {}
    for pattern, load, u, per_sm, block in itertools.product(("stride", "chunk"), CUDA_LOADS, CUDA_U, (1, 2, 4, 8, 16),
                                                             (256, 512, 1024)):
        if per_sm * block > 2048:      # more threads than an SM holds: the same as a smaller grid, later
            continue
        kern = module.get_function(f"{pattern}_{load}_{u}")
        name = f"CUDA {pattern} {load} U{u} grid {per_sm}x{sms} block {block}"
        calls[name] = [lambda v=v, k=kern, g=per_sm * sms, b=block: launch(k, g, b, v) for v in views]
    return calls


def triton_read_calls(bufs, sms):
    out = torch.empty(64 * sms, device="cuda")
    calls = {}
    for block, warps, per_sm, stages in itertools.product((1024, 2048, 4096, 8192), (4, 8), (1, 2, 4, 8), (1, 2, 3)):
        name = f"Triton block {block} warps {warps} grid {per_sm}x{sms} stages {stages}"
        calls[name] = [lambda b=b, g=per_sm * sms, bl=block, w=warps, s=stages: read_sum(b, out, bl, w, g, s)
                       for b in bufs]
    return calls


def time_best(label, n_bytes, calls, reps, keep=3):
    """Times every config; prints the `keep` fastest; returns the best TB/s."""
    results = []
    for name, cs in calls.items():
        try:
            us = time_calls_us(cs, reps)["us"]
        except Exception as exc:  # noqa: BLE001 - one config failing must not hide the others
            print(f"# {label}: {name} failed ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        results.append((us, name))
    results.sort()
    for us, name in results[:keep]:
        print(f"| {label} | {name} | {us:.2f} | {n_bytes / us / 1e6:.3f} |")
    return n_bytes / results[0][0] / 1e6 if results else 0.0


def main(reps: int) -> None:
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    print(f"# {torch.cuda.get_device_name()}, {sms} SMs, L2 {props.L2_cache_size / 1e6:.0f} MB; median of {reps} "
          f"graph replays; buffers rotated over >= {ROTATE_BYTES / 1e6:.0f} MB")
    gen = torch.Generator(device="cuda").manual_seed(0)

    sets = [[(torch.randn(n, d, device="cuda", generator=gen) * d ** -0.5).half()
             for n, d in ((D_FF, D_MODEL), (D_FF, D_MODEL), (D_MODEL, D_FF))] for _ in range(3)]
    xs = [torch.randn(1, D_MODEL, device="cuda", generator=gen).half() for _ in sets]
    dense = [lambda w=w, x=x: F.linear(F.relu(F.linear(x, w[0])) * F.linear(x, w[1]), w[2]) for w, x in zip(sets, xs)]
    dense_us = time_calls_us(dense, reps)["us"]
    gemvs = {"cuBLAS GEMV": [lambda w=w, x=x: F.linear(x, w[0]) for w, x in zip(sets, xs)],
             "whole-row GEMV (ours)": [lambda w=w, x=x: gemv_prefetch(x, w[0]) for w, x in zip(sets, xs)]}
    print("\n| what | config | µs | TB/s |\n|---|---|---|---|")
    print(f"| dense 7B FFN, cuBLAS (bench-kernels' baseline) | 3 GEMVs + relu * up | {dense_us:.2f} | "
          f"{3 * GATE_BYTES / dense_us / 1e6:.3f} |")
    for name, cs in gemvs.items():
        us = time_calls_us(cs, reps)["us"]
        print(f"| gate-shape GEMV 11008 x 4096 | {name} | {us:.2f} | {GATE_BYTES / us / 1e6:.3f} |")
    del sets, xs, dense, gemvs

    print(f"| device copy 1.07 GB (read + write counted) | torch copy_ | - | {copy_bandwidth_gbs(1 << 30, reps) / 1e3:.3f} |")

    best = {}
    for label, n_bytes in SIZES.items():
        bufs = rotated_buffers(n_bytes, gen)
        torch_sum = {"torch sum (fp32 accumulate)": [lambda b=b: b.sum(dtype=torch.float32) for b in bufs]}
        rates = [time_best(label, n_bytes, torch_sum, reps, keep=1),
                 time_best(label, n_bytes, triton_read_calls(bufs, sms), reps),
                 time_best(label, n_bytes, cuda_read_calls(bufs, sms), reps)]
        best[label] = max(rates)
        del bufs
        torch.cuda.empty_cache()

    floor_bytes = GATE_BYTES + ROWS_BYTES
    floor_us = floor_bytes / best["exact floor 108.2 MB"] / 1e6
    print("\n| size | best read TB/s | µs at that rate | dense µs / that |\n|---|---|---|---|")
    for label, n_bytes in SIZES.items():
        t = n_bytes / best[label] / 1e6
        print(f"| {label} | {best[label]:.3f} | {t:.2f} | {dense_us / t:.3f}x |")
    print(f"\nBound: the exact path reads >= {floor_bytes / 1e6:.1f} MB; at this device's best read rate for that size "
          f"({best['exact floor 108.2 MB']:.3f} TB/s) that is {floor_us:.2f} µs, so no kernel reading those bytes "
          f"beats this dense FFN ({dense_us:.2f} µs) by more than {dense_us / floor_us:.3f}x here "
          f"(3.0x needs {dense_us / 3:.2f} µs, {floor_bytes / (dense_us / 3) / 1e6:.3f} TB/s).")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
