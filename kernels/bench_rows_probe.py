"""The rows kernel (triton_rows_ffn.py) config by config, beside the lists kernels and a gather floor (GPU).

At the 7B shape, batch 1, 90%, an index list: the rows kernel read its 27 MB in 19.2 µs of device time (1.4 TB/s;
H100, session 7), no faster than the up + down kernels (18.4 µs), while the dense gate kernel streams 2.7 TB/s.
This times, for one index list per weight set (weight sets rotated so that the rows read exceed 2x L2):
- `lists`: SparseFFN's lists kernels given the list (up, then down: two launches, autotuned);
- `rows`: SparseFFN with predicted_kernel="rows" (autotuned);
- `lists_atomic`: SparseFFN with down_kernel="atomic": the up kernel, then the rows kernel given x1 (autotuned);
- `lists_dot16`: the up and down kernels as `lists` runs them, but with a token block of 16 (the tl.dot code path,
  token 0 real, the rest masked): Triton pipelines the loads that feed tl.dot over several stages, which the
  elementwise batch-1 path does not get;
- `rows J<j> K<k> s<s>|pipe<n> w<w> G<g>`: the rows kernel at each ROWS_CONFIGS entry, as given (pipe<n>: the
  software-pipelined loop, loads issued n blocks ahead);
- `gather <D>x<J>x<S>a`: bench_down_probe's row loop over the same gate, up and W_down^T rows stacked in one
  [3 d_ff, d_model] matrix (3n listed rows, atomics into one fp32 row): the same bytes gathered with no x1 and no
  dependence between them, what one kernel reading these rows can hope for.

    cd /tmp && python -m actsparse.kernels.bench_rows_probe --active 0.1 --out rows_probe.json
"""
from __future__ import annotations

import sys

import torch

from .bench_report import write_json


def main(argv=None) -> int:
    from .bench_down_probe import config_name, parse_config, probe_case, probe_parser, time_table
    p = probe_parser("bench_rows_probe", __doc__)
    p.add_argument("--gather", default="4096x4x132a,2048x4x132a,4096x2x264a,4096x1x528a",
                   help="gather-floor block shapes, BLOCK_DxBLOCK_JxSPLITS[a], comma list")
    args = p.parse_args(argv)
    gathers = [parse_config(c) for c in args.gather.split(",") if c]
    case = probe_case("bench_rows_probe", args, touched_fraction=args.active)
    if case is None:
        return 2
    d, f, n, gen, sets, idxs = case
    from .bench_down_probe import rows_only
    from .configs import ROWS_CONFIGS
    from .dispatch import DispatchConfig
    from .sparse_ffn import SparseFFN
    from .triton_ffn import _n_sms, list_state
    from .triton_rows_ffn import launch_rows
    from .triton_up_down import launch_down, launch_up
    xs = [torch.randn(1, d, device="cuda", generator=gen, dtype=torch.float16) for _ in sets]
    stacked = [torch.cat([ws.w_gate, ws.w_up, ws.w_down_t]) for ws in sets]
    idx3 = [torch.cat([i, i + f, i + 2 * f]) for i in idxs]
    ones = torch.ones(3 * n, device="cuda")
    partials = torch.zeros(max(c[2] for c in gathers) * d, dtype=torch.float32, device="cuda")
    def ffn(ws, **dispatch):  # the kernels named, not the default (which runs rows at one token since session 8)
        return SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=DispatchConfig(**dispatch))
    lists = [ffn(ws, predicted_kernel="lists") for ws in sets]
    rows = [ffn(ws, predicted_kernel="rows") for ws in sets]
    atomic = [ffn(ws, predicted_kernel="lists", down_kernel="atomic") for ws in sets]
    state, acc = list_state("cuda"), torch.zeros(d, dtype=torch.float32, device="cuda")
    ticket = torch.zeros(1, dtype=torch.int32, device="cuda")
    out = torch.empty(1, d, dtype=torch.float16, device="cuda")

    def rows_at(cfg, ws, x, idx):
        launch_rows(x, ws.w_gate, None, ws.w_up, None, ws.w_down_t, None, None, "relu", 0.0, state[:1], idx, acc,
                    ticket, out, _n_sms(x.device), n_given=n, config=cfg)
        return out

    x1c = torch.empty(1, f, dtype=torch.float32, device="cuda")
    tickets = torch.zeros(64 * (d // 32 + 1), dtype=torch.int32, device="cuda")
    from .configs import MAX_SPLITS
    parts = torch.empty(MAX_SPLITS * d, dtype=torch.float32, device="cuda")

    def lists_dot16(ws, x, idx):
        launch_up(x, ws.w_up, None, ws.w_gate, None, None, None, False, "relu", 0.0, state[:1], idx, x1c,
                  _n_sms(x.device), n_given=n, block_t=16)
        launch_down(x1c, ws.w_down_t, None, False, state[:1], idx, parts, tickets, out, state[64:], skip_zero=True,
                    n_given=n, block_t=16)
        return out

    def reference(ws, x, idx):
        i = idx.long()
        x1 = torch.relu(x.double() @ ws.w_gate[i].double().t()) * (x.double() @ ws.w_up[i].double().t())
        return x1 @ ws.w_down_t[i].double()

    methods = {"lists": [lambda m=m, x=x, i=i: m(x, i) for m, x, i in zip(lists, xs, idxs)],
               "rows": [lambda m=m, x=x, i=i: m(x, i) for m, x, i in zip(rows, xs, idxs)],
               "lists_atomic": [lambda m=m, x=x, i=i: m(x, i) for m, x, i in zip(atomic, xs, idxs)],
               "lists_dot16": [lambda ws=ws, x=x, i=i: lists_dot16(ws, x, i) for ws, x, i in zip(sets, xs, idxs)]}
    for cfg in ROWS_CONFIGS:
        k = cfg.kwargs
        loop = f"pipe{k['PIPELINE']}" if k["PIPELINE"] else f"K{k['BLOCK_K']} s{cfg.num_stages}"
        name = f"rows J{k['BLOCK_J']} {loop} w{cfg.num_warps} G{k['GRID_PER_SM']}"
        methods[name] = [lambda c=cfg, ws=ws, x=x, i=i: rows_at(c, ws, x, i) for ws, x, i in zip(sets, xs, idxs)]
    ref = reference(sets[0], xs[0], idxs[0])
    bad = []
    for name, calls in methods.items():
        got = calls[0]().double()
        if not float((got - ref).norm() / ref.norm()) < 2e-2:
            bad.append(name)
    for g in gathers:
        methods[f"gather {config_name(g)}"] = [
            lambda s=s, i=i, g=g: rows_only(ones, s, i, partials, *g) for s, i in zip(stacked, idx3)]
    mb = 3 * n * d * 2 / 1e6
    result = dict(shape=args.shape, active=args.active, listed=n, megabytes=mb, n_weight_sets=len(sets),
                  device=torch.cuda.get_device_name(), wrong=bad)
    print(f"{args.shape}, {n} listed neurons, {mb:.1f} MB of gate + up + W_down^T rows, {len(sets)} weight sets")
    if bad:
        print(f"disagree with float64 (not timed): {', '.join(bad)}")
    result["methods"] = time_table(methods, args.reps, mb, skip=bad)
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
