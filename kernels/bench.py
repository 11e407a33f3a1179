"""`actsparse bench-kernels`: sparse-FFN kernels vs cuBLAS dense vs a PyTorch index_select baseline (GPU).

For each FFN shape, sparsity and batch: weight sets rotated past L2, realistic per-token patterns
(bench_data.py), every method checked against a float32 dense reference before it is timed, then timed
as CUDA-graph replays with CUDA events (median). Reported per method: microseconds, effective GB/s and
fraction of the read floor for the bytes the method must read (read_floor.py: this device's fastest pure read
of that many bytes, measured at the start), speed-up over dense and the most any kernel reading those bytes could
have over this dense (dense µs / floor µs). Writes bench_kernels.json, bench_kernels.md and bench_kernels.png into --out-dir.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .bench_data import (SHAPES, make_inputs, make_weight_sets, neuron_probabilities, set_gate_bias,
                         true_active)
from .bench_report import floor_line, goal_lines, markdown_table, plot_speedups, write_json
from .dispatch import DispatchConfig
from .sparse_ffn import SparseFFN

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
PREDICTED = ("ours_predicted_union", "ours_predicted_per_token", "ours_predicted_fused", "ours_predicted_inline",
             "ours_predicted_union_pdl", "ours_predicted_index", "ours_predicted_rows", "ours_predicted_index_rows",
             "ours_predicted_index_atomic", "ours_predicted_index_pdl")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="actsparse bench-kernels", description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--sparsities", default="0.5,0.6,0.7,0.8,0.9,0.95")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp16")
    p.add_argument("--reps", type=int, default=50, help="timed graph replays per method")
    p.add_argument("--min-rotation-mb", type=int, default=120,
                   help="weight copies rotated: enough that the sparsest case's calls read at least this much per "
                        "round (> 2x L2)")
    p.add_argument("--out-dir", default="runs/bench-kernels")
    p.add_argument("--methods", default=None,
                   help="comma list of method names to time (dense always runs: the ratios' baseline); default all")
    p.add_argument("--report-from", default=None, help="rebuild table + PNG from JSONs of earlier runs, comma-separated (CPU ok)")
    return p.parse_args(argv)


def _dense(ws, x):
    return F.linear(F.relu(F.linear(x, ws.w_gate)) * F.linear(x, ws.w_up), ws.w_down)


def _index_select(ws, x, rows):
    """The PyTorch gather baseline, given the active rows (found outside the timing: no host sync)."""
    gate = F.relu(F.linear(x, ws.w_gate)).index_select(1, rows)
    up = F.linear(x, ws.w_up.index_select(0, rows))
    return (gate * up) @ ws.w_down_t.index_select(0, rows)


def _methods(sets, xs, masks, batch, calib_x):
    """(name -> list of zero-argument calls, one per weight set; the path the dispatcher picks)."""
    def ffn(ws, mode, predicted_kernel="lists", exact_kernel="split", pdl=False, down_kernel="split", gate_tma=True,
            gate_prefetch=False, **stream):
        return SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, activation="relu",
                         dispatch=DispatchConfig(batch_mode=mode, predicted_kernel=predicted_kernel,
                                                 exact_kernel=exact_kernel, pdl=pdl, down_kernel=down_kernel,
                                                 gate_tma=gate_tma, gate_prefetch=gate_prefetch, **stream))
    union = [ffn(ws, "union") for ws in sets]
    gate_up = [ffn(ws, "union", exact_kernel="gate_up") for ws in sets]  # exact path, two launches
    fused = [ffn(ws, "union", "fused") for ws in sets]  # Version 2 predicted path, timed beside Version 1
    dispatched = [ffn(ws, "union", exact_kernel="auto") for ws in sets]  # the default DispatchConfig's kernels
    for f in dispatched:
        f.calibrate(calib_x)
    rows = [torch.nonzero(m.any(0)).flatten() for m in masks]
    methods = {
        "dense": [lambda ws=ws, x=x: _dense(ws, x) for ws, x in zip(sets, xs)],
        "index_select": [lambda ws=ws, x=x, r=r: _index_select(ws, x, r) for ws, x, r in zip(sets, xs, rows)],
        "ours_union": [lambda f=f, x=x: f(x) for f, x in zip(union, xs)],
        "ours_union_gate_up": [lambda f=f, x=x: f(x) for f, x in zip(gate_up, xs)],
        "ours_predicted_union": [lambda f=f, x=x, m=m: f(x, m) for f, x, m in zip(union, xs, masks)],
        "ours_predicted_fused": [lambda f=f, x=x, m=m: f(x, m) for f, x, m in zip(fused, xs, masks)],
        "ours_dispatch": [lambda f=f, x=x: f(x) for f, x in zip(dispatched, xs)],
    }
    if batch == 1:  # Version 1's lists with the compaction inside the up kernel (batch 1 only)
        inline = [ffn(ws, "union", "lists_inline") for ws in sets]
        methods["ours_predicted_inline"] = [lambda f=f, x=x, m=m: f(x, m) for f, x, m in zip(inline, xs, masks)]
        # The same set as an int32 index list (a top-k predictor's output): the lists kernels without compaction (the
        # default at one token is rows: ours_predicted_index_rows below).
        ids = [r.to(torch.int32) for r in rows]
        methods["ours_predicted_index"] = [lambda f=f, x=x, i=i: f(x, i) for f, x, i in zip(union, xs, ids)]
        pdl = [ffn(ws, "union", pdl=True) for ws in sets]  # split / lists kernels, launches overlapped (pdl.py)
        methods["ours_union_pdl"] = [lambda f=f, x=x: f(x) for f, x in zip(pdl, xs)]
        methods["ours_predicted_union_pdl"] = [lambda f=f, x=x, m=m: f(x, m) for f, x, m in zip(pdl, xs, masks)]
        # The index list with PDL: the down kernel loads its first W_down^T rows while the up kernel runs.
        methods["ours_predicted_index_pdl"] = [lambda f=f, x=x, i=i: f(x, i) for f, x, i in zip(pdl, xs, ids)]
        # One token through one kernel over the list (triton_rows_ffn.py): after the gate kernel (exact), after
        # the compaction (mask), or alone (index list).
        one = [ffn(ws, "union", "rows", exact_kernel="rows") for ws in sets]
        methods["ours_union_rows"] = [lambda f=f, x=x: f(x) for f, x in zip(one, xs)]
        methods["ours_predicted_rows"] = [lambda f=f, x=x, m=m: f(x, m) for f, x, m in zip(one, xs, masks)]
        methods["ours_predicted_index_rows"] = [lambda f=f, x=x, i=i: f(x, i) for f, x, i in zip(one, xs, ids)]
        # The same exact path with the gate kernel's plain loads (DispatchConfig(gate_tma=False)); the others at one
        # token load the gate rows through TMA (triton_gate_tma.py) where usable.
        plain_gate = [ffn(ws, "union", exact_kernel="rows", gate_tma=False) for ws in sets]
        methods["ours_union_rows_plain_gate"] = [lambda f=f, x=x: f(x) for f, x in zip(plain_gate, xs)]
        # The TMA gate kernel also prefetching the active rows into L2 (DispatchConfig(gate_prefetch=True)).
        prefetch = [ffn(ws, "union", exact_kernel="rows", gate_prefetch=True) for ws in sets]
        methods["ours_union_rows_prefetch"] = [lambda f=f, x=x: f(x) for f, x in zip(prefetch, xs)]
        # The exact rows path returning its fp32 sum row (fp32_out: no epilogue; the caller's cast, which a compiled
        # decode step merges into the residual add, is not timed here).
        methods["ours_union_rows_fp32_out"] = [lambda f=f, x=x: f(x, fp32_out=True) for f, x in zip(one, xs)]
        # The exact path in one kernel (triton_gate_rows.py): gate rows streamed, active up / down rows behind them.
        fused_exact = [ffn(ws, "union", exact_kernel="gate_rows") for ws in sets]
        methods["ours_union_gate_rows"] = [lambda f=f, x=x: f(x) for f, x in zip(fused_exact, xs)]
        # Gate and rows kernels at the same time on two streams (triton_stream_rows.py): the default consumer grid
        # (a program on every SM), a quarter and half of the SMs, and 8 warps a program.
        for suffix, kw in [("", {}), ("_p25", dict(stream_programs=0.25)), ("_p50", dict(stream_programs=0.5)),
                           ("_w8", dict(stream_warps=8)),
                           ("_p50_w8", dict(stream_programs=0.5, stream_warps=8))]:
            streamed = [ffn(ws, "union", exact_kernel="stream", **kw) for ws in sets]
            methods["ours_union_stream" + suffix] = [lambda f=f, x=x: f(x) for f, x in zip(streamed, xs)]
        # The split / lists kernels with the atomic down kernel (DispatchConfig.down_kernel="atomic").
        atomic = [ffn(ws, "union", down_kernel="atomic") for ws in sets]
        methods["ours_union_atomic"] = [lambda f=f, x=x: f(x) for f, x in zip(atomic, xs)]
        methods["ours_predicted_index_atomic"] = [lambda f=f, x=x, i=i: f(x, i) for f, x, i in zip(atomic, xs, ids)]
    if batch > 1:
        per_token = [ffn(ws, "per_token") for ws in sets]
        methods["ours_per_token"] = [lambda f=f, x=x: f(x) for f, x in zip(per_token, xs)]
        methods["ours_predicted_per_token"] = [lambda f=f, x=x, m=m: f(x, m) for f, x, m in zip(per_token, xs, masks)]
    return methods, dispatched[0]._plan(batch, False).path


def _check(name, call, ws, x, mask) -> float:
    """Relative error against a float32 dense reference (x1 zeroed outside the mask for predicted paths)."""
    x1 = F.relu(x.float() @ ws.w_gate.float().t()) * (x.float() @ ws.w_up.float().t())
    if name in PREDICTED:
        x1 = x1 * mask
    ref = x1 @ ws.w_down.float().t()
    out = call().float()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm())


def case_calls(sets, d, f, batch, sparsity, dtype, device, gen):
    """One case's inputs and calls: gate biases for `sparsity` (heavy-tailed per-neuron probabilities), an input
    per weight set, its true active mask, and every method's calls. Returns (xs, masks, methods, dispatched path)."""
    probs = neuron_probabilities(f, sparsity, torch.Generator().manual_seed(int(sparsity * 1000)))
    for ws in sets:
        set_gate_bias(ws, probs)
    xs = [make_inputs(batch, d, dtype, device, gen) for _ in sets]
    masks = [true_active(ws, x) for ws, x in zip(sets, xs)]
    return (xs, masks, *_methods(sets, xs, masks, batch, make_inputs(512, d, dtype, device, gen)))


def bench_case(shape, d, f, batch, sparsity, sets, dtype, reps, read_floor, gen, timer=None,
               device="cuda", only: set | None = None) -> list[dict]:
    """Records of every method for one (shape, batch, sparsity); `read_floor` (read_floor.ReadFloor) gives the least
    µs for a method's bytes; `timer(calls, reps) -> {us, us_p10, us_p90}`; `only`: the methods to time besides dense
    (None: all)."""
    if timer is None:
        from .bench_timing import time_calls_us as timer
    xs, masks, methods, dispatched_path = case_calls(sets, d, f, batch, sparsity, dtype, device, gen)
    if only is not None:
        methods = {name: calls for name, calls in methods.items() if name == "dense" or name in only}
    per_token = float(torch.stack([m.float().mean() for m in masks]).mean())
    union = float(torch.stack([m.any(0).float().mean() for m in masks]).mean())
    elt = torch.tensor([], dtype=dtype).element_size()
    dense_bytes = 3 * d * f * elt
    records, dense_us = [], None
    for name, calls in methods.items():
        rec = dict(shape=shape, d_model=d, d_ff=f, batch=batch, sparsity=sparsity, method=name,
                   active_per_token=per_token, active_union=union, dtype=str(dtype), n_weight_sets=len(sets))
        if name == "ours_dispatch":
            rec["dispatched_path"] = dispatched_path
        err = _check(name, calls[0], sets[0], xs[0], masks[0])
        rec["rel_err"] = err
        if not err < 2e-2:
            rec["error"] = f"WRONG (rel err {err:.2e})"
            records.append(rec)
            continue
        rec.update(timer(calls, reps))
        must_read = (dense_bytes if name == "dense" else 3 * d * elt * union * f if name in PREDICTED
                     else d * f * elt + 2 * d * elt * union * f)
        dense_us = rec["us"] if name == "dense" else dense_us
        floor_us = read_floor.floor_us(must_read)
        rec.update(must_read_bytes=must_read, gbs=must_read / (rec["us"] * 1e-6) / 1e9, floor_us=floor_us,
                   floor_fraction=floor_us / rec["us"], speedup=dense_us / rec["us"], max_speedup=dense_us / floor_us)
        records.append(rec)
    return records


def write_report(records, out_dir: Path, meta: dict) -> None:
    write_json(out_dir / "bench_kernels.json", {"meta": meta, "records": records})
    goals = goal_lines(records)
    md = (f"Device: {meta.get('device')}, dtype {meta.get('dtype')}, {floor_line(meta)}, "
          f"command: `{meta.get('command')}`\n\n" + markdown_table(records) + "\n" + "\n".join(f"- {g}" for g in goals))
    (out_dir / "bench_kernels.md").write_text(md + "\n")
    plot_speedups(records, out_dir / "bench_kernels.png")
    print(md)


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    if args.report_from:  # one JSON, or several (comma list) from runs split to fit a time limit
        runs = [json.loads(Path(p).read_text()) for p in args.report_from.split(",")]
        meta = dict(runs[0]["meta"], command=" + ".join(r["meta"].get("command", "?") for r in runs))
        write_report([rec for r in runs for rec in r["records"]], out_dir, meta)
        return 0
    if not torch.cuda.is_available():
        print("actsparse bench-kernels needs a CUDA GPU (none found); --report-from JSON rebuilds a report on CPU",
              file=sys.stderr)
        return 2
    from .bench_timing import copy_bandwidth_gbs
    from .configs import reset_autotune_caches
    from .read_floor import measure_read_floor
    dtype = DTYPES[args.dtype]
    read_floor = measure_read_floor()
    import triton
    meta = dict(device=torch.cuda.get_device_name(), dtype=args.dtype, copy_gbs=copy_bandwidth_gbs(),
                read_t0_us=read_floor.t0_us, read_gbs=read_floor.gbs, reps=args.reps,
                torch=torch.__version__, triton=triton.__version__,
                command="actsparse bench-kernels " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"{meta['device']}: {floor_line(meta)}", flush=True)
    records = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for shape in args.shapes.split(","):
        d, f = SHAPES[shape]
        sparsities = [float(s) for s in args.sparsities.split(",")]
        sets = make_weight_sets(d, f, dtype, "cuda", args.min_rotation_mb << 20, touched_fraction=1 - max(sparsities))
        for batch in map(int, args.batches.split(",")):
            for sparsity in sparsities:
                # Each case tuned on its own pattern, as a model at that sparsity tunes on its own calls. Session 5
                # (H100, 7B, batch 1, 90%): the predicted path read 37-38 us with the configs tuned at 50% first
                # in the sweep, 27-28 us tuned at 90%.
                reset_autotune_caches()
                case = bench_case(shape, d, f, batch, sparsity, sets, dtype, args.reps, read_floor, gen,
                                  only=set(args.methods.split(",")) if args.methods else None)
                records += case
                print(markdown_table(case).split("\n", 2)[2], flush=True)
                out_dir.mkdir(parents=True, exist_ok=True)  # completed cases survive a time limit
                (out_dir / "bench_kernels.json").write_text(json.dumps({"meta": meta, "records": records}))
        del sets
        torch.cuda.empty_cache()
    write_report(records, out_dir, meta)
    return 0
