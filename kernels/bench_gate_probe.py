"""How fast the gate matrix streams: the gate kernels config by config beside read-only references (GPU).

The exact path's floor is the dense gate GEMV: 90 MB at 7B. Per weight set (rotated past L2; a gate bias per set puts
`--active` of the neurons above zero, as in a ProSparse layer), side by side in one run:
- `torch sum`: PyTorch's reduction over the matrix (reads it once, no x);
- `cublas F.linear`: the GEMV without activation or list;
- `gate autotuned` / `gate tma autotuned`: launch_gate as the exact path calls it at one token (union list, act(gate)
  buffer), plain loads (triton_gate.py) or TMA tiles (triton_gate_tma.py), autotuned;
- `gate N<n> K<k> w<w> s<s>`: each GATE_CONFIGS entry, then each `--extra` config, run as given;
- `tma gemv N<n> K<k> w<w> s<s>`: a bare GEMV whose tiles come through a TMA descriptor (`--tma` configs).
Every gate line includes a memset of the list counter (the exact path's rows kernel zeroes it; here nothing else does);
`counter memset alone` times it. A graph replay holds `--repeat` rounds over the sets, so its launch is spread over
many calls (session 9's first run replayed two calls per graph: ~8 µs of launch in every line).

    cd /tmp && python -m actsparse.kernels.bench_gate_probe --active 0.11 --out gate_probe.json
"""
from __future__ import annotations

import sys

import torch
import triton

from .bench_report import write_json


def tma_gemv(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cfg: triton.Config) -> torch.Tensor:
    """y = w @ x (fp32) through triton_gemv.py's kernel run as given at `cfg` (BLOCK_N, BLOCK_K, warps, stages: the
    TMA tiles in flight), not autotuned."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    from .triton_gemv import gemv_kernel
    d_ff, d_model = w.shape
    n, k = cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"]
    desc = TensorDescriptor.from_tensor(w, [n, k])
    gemv_kernel.fn[(triton.cdiv(d_ff, n),)](x, desc, w, y, d_ff, d_model, x, x, x, x, 0.0, HAS_BIAS=False, RELU=False,
                                            NORM=False, NORM_BLOCK=1, USE_GDC=False, BLOCK_N=n, BLOCK_K=k,
                                            STAGES=cfg.num_stages, num_warps=cfg.num_warps, num_stages=1)
    return y


def parse_gate_config(text: str) -> triton.Config:
    """'16x512x4x3' -> BLOCK_N 16, BLOCK_K 512, 4 warps, 3 stages."""
    n, k, w, s = (int(v) for v in text.split("x"))
    return triton.Config(dict(BLOCK_N=n, BLOCK_K=k), num_warps=w, num_stages=s)


def config_label(cfg: triton.Config) -> str:
    return f"N{cfg.kwargs['BLOCK_N']} K{cfg.kwargs['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages}"


def main(argv=None) -> int:
    from .bench_down_probe import probe_case, probe_parser, time_table
    p = probe_parser("bench_gate_probe", __doc__)
    p.add_argument("--extra", default="8x1024x4x2,4x1024x4x2,4x2048x4x1,16x512x8x3,16x256x2x3,32x256x8x2",
                   help="gate kernel configs beyond GATE_CONFIGS, BLOCK_NxBLOCK_KxWARPSxSTAGES, comma list")
    p.add_argument("--tma", default="8x512x4x4,16x512x4x3,32x256x4x4,16x256x4x4,16x256x4x6",
                   help="bare TMA GEMV configs, BLOCK_NxBLOCK_KxWARPSxSTAGES, comma list")
    p.add_argument("--repeat", type=int, default=8, help="rounds over the weight sets per graph replay")
    args = p.parse_args(argv)
    case = probe_case("bench_gate_probe", args, touched_fraction=1 / 3)
    if case is None:
        return 2
    d, f, _n, gen, sets, _idxs = case
    from torch.nn import functional as F
    from .configs import GATE_CONFIGS, autotuned_configs
    from .triton_gate import launch_gate
    xs = [torch.randn(1, d, device="cuda", generator=gen, dtype=torch.float16) for _ in sets]
    biases = []
    for ws, x in zip(sets, xs):   # per set: the bias that leaves `active` of the neurons above zero on its x
        g = (x.float() @ ws.w_gate.float().t())[0]
        biases.append((-torch.quantile(g, 1 - args.active)).expand(f).to(torch.float16).contiguous())
    counts = torch.zeros(64, dtype=torch.int32, device="cuda")
    idx = torch.empty(f, dtype=torch.int32, device="cuda")
    gact = torch.empty(1, f, dtype=torch.float32, device="cuda")
    ys = [torch.empty(f, dtype=torch.float32, device="cuda") for _ in sets]

    def gate(ws, x, b, y, config=None, tma=False):
        counts.zero_()
        launch_gate(x, ws.w_gate, b, "relu", 0.0, False, gact, counts, idx, config=config, tma=tma)
        return gact

    cases = list(zip(sets, xs, biases, ys))
    rounds = lambda make: [make(*c) for _ in range(args.repeat) for c in cases]  # noqa: E731
    methods = {"torch sum": rounds(lambda ws, x, b, y: lambda: ws.w_gate.sum(dtype=torch.float32)),
               "cublas F.linear": rounds(lambda ws, x, b, y: lambda: F.linear(x, ws.w_gate)),
               "counter memset alone": rounds(lambda ws, x, b, y: counts.zero_),
               "gate autotuned": rounds(lambda *c: lambda: gate(*c)),
               "gate tma autotuned": rounds(lambda *c: lambda: gate(*c, tma=True))}
    extra = [parse_gate_config(c) for c in args.extra.split(",") if c]
    for cfg in list(GATE_CONFIGS) + extra:
        name = f"gate {config_label(cfg)}{' (extra)' if any(cfg is e for e in extra) else ''}"
        methods[name] = rounds(lambda *c, cfg=cfg: lambda: gate(*c, config=cfg))
    for cfg in (parse_gate_config(c) for c in args.tma.split(",") if c):
        methods[f"tma gemv {config_label(cfg)}"] = rounds(
            lambda ws, x, b, y, cfg=cfg: lambda: tma_gemv(ws.w_gate, x[0], y, cfg))
    pre = xs[0].double() @ sets[0].w_gate.double().t()
    ref = torch.relu(pre + biases[0].double())
    bad = []
    for name, calls in methods.items():
        if name.startswith("gate"):
            got = calls[0]().double()
            listed = int(counts[0])
            if not (float((got - ref).norm() / ref.norm()) < 1e-2 and abs(listed - int((ref > 0).sum())) <= 8):
                bad.append(name)
        elif name.startswith("tma"):
            calls[0]()
            if not float((ys[0].double() - pre[0]).norm() / pre.norm()) < 1e-2:
                bad.append(name)
    mb = f * d * 2 / 1e6
    print(f"{args.shape}, gate {f}x{d}, {mb:.1f} MB, {len(sets)} weight sets x {args.repeat} rounds per replay, "
          f"active {args.active}")
    if bad:
        print(f"disagree with float64 (not timed): {', '.join(bad)}")
    result = dict(shape=args.shape, active=args.active, megabytes=mb, n_weight_sets=len(sets), repeat=args.repeat,
                  device=torch.cuda.get_device_name(), wrong=bad, methods=time_table(methods, args.reps, mb, skip=bad))
    picks = autotuned_configs()
    result["autotuned"] = {k: picks.get(k, {}) for k in ("gate_kernel", "gate_tma_kernel")}
    print("autotuned:", result["autotuned"])
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
