"""How fast can one token's gate matrix be streamed? Read-only references beside the gate kernel (GPU).

The exact path's floor is the dense gate GEMV: 90 MB at 7B. The gate kernel and cuBLAS both run it at ~2.75-2.8 TB/s
(bench_gate_probe, session 9), below the ~3.0 TB/s copy rate. Whether anything reads faster decides whether the gate
kernel has headroom. Per weight set (rotated past L2), side by side in one run:
- `torch sum`: PyTorch's reduction over the matrix (reads it once, no x);
- `cublas F.linear`: the GEMV;
- `gate autotuned`: our gate kernel (union list, act(gate) buffer; its counter memset is inside);
- `tma N<n> K<k> w<w> s<s>`: a GEMV whose weight tiles come through TMA (a host tensor descriptor, tiles pipelined
  over `s` stages in shared memory), one program per BLOCK_N rows: the Hopper copy engine instead of per-thread loads.
The graph holds `--repeat` rounds over the sets, so a replay's launch cost is spread over many calls.

    cd /tmp && python -m actsparse.kernels.bench_stream_probe --out stream_probe.json
"""
from __future__ import annotations

import sys

import torch
import triton
import triton.language as tl

from .bench_report import write_json


@triton.jit
def tma_gemv_kernel(w_desc, x_ptr, y_ptr, d_ff, d_model, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    STAGES: tl.constexpr):
    """y[rows] = W[rows] . x for BLOCK_N rows, W tiles [BLOCK_N, BLOCK_K] loaded through the descriptor."""
    n0 = tl.program_id(0) * BLOCK_N
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in tl.range(0, d_model, BLOCK_K, num_stages=STAGES):
        w = w_desc.load([n0, k0])
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xv = tl.load(x_ptr + offs_k, mask=offs_k < d_model, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * xv[None, :]
    rows = n0 + tl.arange(0, BLOCK_N)
    tl.store(y_ptr + rows, tl.sum(acc, 1), mask=rows < d_ff)


def tma_gemv(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, block_n: int, block_k: int, warps: int,
             stages: int) -> torch.Tensor:
    from triton.tools.tensor_descriptor import TensorDescriptor
    d_ff, d_model = w.shape
    desc = TensorDescriptor.from_tensor(w, [block_n, block_k])
    tma_gemv_kernel[(triton.cdiv(d_ff, block_n),)](desc, x, y, d_ff, d_model, BLOCK_N=block_n, BLOCK_K=block_k,
                                                   STAGES=stages, num_warps=warps)
    return y


def main(argv=None) -> int:
    from .bench_down_probe import probe_case, probe_parser, time_table
    p = probe_parser("bench_stream_probe", __doc__)
    p.add_argument("--tma", default="16x256x4x4,16x512x4x3,32x256x4x4,8x512x4x4,16x256x4x6,32x128x4x6,64x128x8x4",
                   help="TMA GEMV configs, BLOCK_NxBLOCK_KxWARPSxSTAGES, comma list")
    p.add_argument("--repeat", type=int, default=8, help="rounds over the weight sets per graph replay")
    args = p.parse_args(argv)
    case = probe_case("bench_stream_probe", args, touched_fraction=1 / 3)
    if case is None:
        return 2
    d, f, _n, gen, sets, _idxs = case
    from torch.nn import functional as F
    from .triton_gate import launch_gate
    xs = [torch.randn(1, d, device="cuda", generator=gen, dtype=torch.float16) for _ in sets]
    counts = torch.zeros(64, dtype=torch.int32, device="cuda")
    idx = torch.empty(f, dtype=torch.int32, device="cuda")
    gact = torch.empty(1, f, dtype=torch.float32, device="cuda")
    ys = [torch.empty(f, dtype=torch.float32, device="cuda") for _ in sets]

    def gate(ws, x):
        counts.zero_()
        launch_gate(x, ws.w_gate, None, "relu", 0.0, False, gact, counts, idx)
        return gact

    rounds = lambda make: [make(ws, x, y) for _ in range(args.repeat) for ws, x, y in zip(sets, xs, ys)]  # noqa: E731
    methods = {"torch sum": rounds(lambda ws, x, y: lambda: ws.w_gate.sum(dtype=torch.float32)),
               "cublas F.linear": rounds(lambda ws, x, y: lambda: F.linear(x, ws.w_gate)),
               "counter memset alone": rounds(lambda ws, x, y: counts.zero_),
               "gate autotuned": rounds(lambda ws, x, y: lambda: gate(ws, x))}
    for cfg in (c for c in args.tma.split(",") if c):
        n, k, w, s = (int(v) for v in cfg.split("x"))
        methods[f"tma N{n} K{k} w{w} s{s}"] = rounds(
            lambda ws, x, y, n=n, k=k, w=w, s=s: lambda: tma_gemv(ws.w_gate, x[0], y, n, k, w, s))
    ref = (xs[0].double() @ sets[0].w_gate.double().t())[0]
    bad = []
    for name, calls in methods.items():
        if name.startswith("tma"):
            calls[0]()
            if not float((ys[0].double() - ref).norm() / ref.norm()) < 1e-2:
                bad.append(name)
    mb = f * d * 2 / 1e6
    print(f"{args.shape}, gate {f}x{d}, {mb:.1f} MB, {len(sets)} weight sets x {args.repeat} rounds per replay")
    if bad:
        print(f"disagree with float64 (not timed): {', '.join(bad)}")
    result = dict(shape=args.shape, megabytes=mb, n_weight_sets=len(sets), repeat=args.repeat,
                  device=torch.cuda.get_device_name(), wrong=bad, methods=time_table(methods, args.reps, mb, skip=bad))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
