"""The dense gate kernel (triton_gate.py) config by config, beside cuBLAS's GEMV of the same matrix (GPU).

The exact path's gate kernel reads the whole gate matrix; at 7B, batch 1 it took 32.5 µs for 90 MB (2.78 TB/s) in the
bench and 33.8 µs inside the compiled decode loop (H100, sessions 3 and 9). This times, per weight set rotated past L2
(a gate bias per set puts `--active` of the neurons above zero, as in a ProSparse layer):
- `cublas F.linear`: the same GEMV without activation or list;
- `gate autotuned`: launch_gate as the exact path calls it (union list, act(gate) buffer), autotuned;
- `gate N<n> K<k> w<w> s<s>`: each GATE_CONFIGS entry, then each `--extra` config, run as given.
Every gate line includes a memset of the list counter (the exact path's rows kernel zeroes it; here nothing else
does); `counter memset alone` times that memset so it can be subtracted.

    cd /tmp && python -m actsparse.kernels.bench_gate_probe --active 0.1 --out gate_probe.json
"""
from __future__ import annotations

import sys

import torch
import triton

from .bench_report import write_json


def parse_gate_config(text: str) -> triton.Config:
    """'16x512x4x3' -> BLOCK_N 16, BLOCK_K 512, 4 warps, 3 stages."""
    n, k, w, s = (int(v) for v in text.split("x"))
    return triton.Config(dict(BLOCK_N=n, BLOCK_K=k), num_warps=w, num_stages=s)


def main(argv=None) -> int:
    from .bench_down_probe import probe_case, probe_parser, time_table
    p = probe_parser("bench_gate_probe", __doc__)
    p.add_argument("--extra", default="8x1024x4x2,4x1024x4x2,4x2048x4x1,8x2048x8x1,16x512x8x3,8x512x2x3,16x256x2x3,"
                                      "2x4096x4x1,4x4096x8x1,16x128x4x4,8x256x4x3,32x256x8x2",
                   help="configs beyond GATE_CONFIGS, BLOCK_NxBLOCK_KxWARPSxSTAGES, comma list")
    args = p.parse_args(argv)
    case = probe_case("bench_gate_probe", args, touched_fraction=1 / 3)
    if case is None:
        return 2
    d, f, _n, gen, sets, _idxs = case
    from torch.nn import functional as F
    from .configs import GATE_CONFIGS
    from .triton_gate import launch_gate
    xs = [torch.randn(1, d, device="cuda", generator=gen, dtype=torch.float16) for _ in sets]
    biases = []
    for ws, x in zip(sets, xs):   # per set: the bias that leaves `active` of the neurons above zero on its x
        g = (x.float() @ ws.w_gate.float().t())[0]
        biases.append((-torch.quantile(g, 1 - args.active)).expand(f).to(torch.float16).contiguous())
    counts = torch.zeros(64, dtype=torch.int32, device="cuda")
    idx = torch.empty(f, dtype=torch.int32, device="cuda")
    gact = torch.empty(1, f, dtype=torch.float32, device="cuda")

    def gate(ws, x, b, config=None):
        counts.zero_()
        launch_gate(x, ws.w_gate, b, "relu", 0.0, False, gact, counts, idx, config=config)
        return gact

    calls = list(zip(sets, xs, biases))
    methods = {"cublas F.linear": [lambda ws=ws, x=x: F.linear(x, ws.w_gate) for ws, x, _ in calls],
               "counter memset alone": [counts.zero_ for _ in calls],
               "gate autotuned": [lambda c=c: gate(*c) for c in calls]}
    extra = [parse_gate_config(c) for c in args.extra.split(",") if c]
    for cfg in list(GATE_CONFIGS) + extra:
        k = cfg.kwargs
        name = f"gate N{k['BLOCK_N']} K{k['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages}"
        if cfg in extra:
            name += " (extra)"
        methods[name] = [lambda c=c, cfg=cfg: gate(*c, config=cfg) for c in calls]
    ref = torch.relu(xs[0].double() @ sets[0].w_gate.double().t() + biases[0].double())
    bad = []
    for name, fns in methods.items():
        if name.startswith("gate"):
            got = fns[0]().double()
            listed = int(counts[0])
            if not (float((got - ref).norm() / ref.norm()) < 1e-2 and abs(listed - int((ref > 0).sum())) <= 8):
                bad.append(name)
    mb = f * d * 2 / 1e6
    print(f"{args.shape}, gate {f}x{d}, {mb:.1f} MB, {len(sets)} weight sets, active {args.active}")
    if bad:
        print(f"disagree with float64 (not timed): {', '.join(bad)}")
    result = dict(shape=args.shape, active=args.active, megabytes=mb, n_weight_sets=len(sets),
                  device=torch.cuda.get_device_name(), wrong=bad, methods=time_table(methods, args.reps, mb, skip=bad))
    from .configs import autotuned_configs
    result["autotuned"] = autotuned_configs().get("gate_kernel", {})
    print("autotuned gate config:", result["autotuned"])
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
