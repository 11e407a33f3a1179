"""Where the down kernel's time goes (GPU): the whole kernel against its row reads alone, side by side.

At the 7B shape, batch 1, 90% the down kernel reads 9 MB of W_down^T rows in 9.3-10.9 µs (H100, session 6: 0.9 TB/s),
and neither one-step splits nor an unrolled reduction moved it (kernels/NOTES.md, "Session 6"). This separates
the two candidates. Each method reads the same listed rows (an int32 list of `--active` x d_ff random neurons,
weight sets rotated past L2) and is graph-timed (bench_timing):
- `down`: `down_kernel` as SparseFFN runs it (autotuned config, split-K epilogue: partial store, fence, ticket,
  the last program's sum in split order);
- `rows_only`: the same loop over the same rows with the same BLOCK_D / BLOCK_J / SPLITS, each split storing its
  partial sum and stopping there (no fence, no ticket, no final sum: its output is not the FFN's);
- `rows_only_contiguous`: as `rows_only` over the first n rows in order (the same bytes, no gather);
- `rows_only <D>x<J>x<S>`: other block shapes (`--configs`); a trailing `a` (`4096x2x132a`) adds each split's partial
  into one fp32 row with atomics instead of storing it (the cost of an atomic epilogue; S 1 has no epilogue at all).
down - rows_only is the epilogue's cost; rows_only - rows_only_contiguous the gather's.

    cd /tmp && python -m actsparse.kernels.bench_down_probe --active 0.1 --out down_probe.json
"""
from __future__ import annotations

import argparse
import sys

import torch
import triton
import triton.language as tl

from .bench_report import write_json



@triton.jit
def rows_only_kernel(x1c_ptr, wdt_ptr, idx_ptr, partial_ptr, n_listed, d_model, BLOCK_D: tl.constexpr,
                     BLOCK_J: tl.constexpr, SPLITS: tl.constexpr, ATOMIC: tl.constexpr):
    """partial[split, cols] = sum over the split's balanced range of listed neurons of x1c[i] * W_down^T[idx[i], cols]
    (batch 1): `down_kernel`'s loop without its epilogue."""
    col_blk = tl.program_id(0)
    split = tl.program_id(1)
    offs_d = col_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < d_model
    lo = (split * n_listed) // SPLITS
    hi = ((split + 1) * n_listed) // SPLITS
    acc = tl.zeros([BLOCK_J, BLOCK_D], dtype=tl.float32)
    for i0 in range(lo, hi, BLOCK_J):
        offs_i = i0 + tl.arange(0, BLOCK_J)
        i_mask = offs_i < hi
        rows = tl.load(idx_ptr + offs_i, mask=i_mask, other=0)
        x1 = tl.load(x1c_ptr + offs_i, mask=i_mask, other=0.0)
        w = tl.load(wdt_ptr + rows.to(tl.int64)[:, None] * d_model + offs_d[None, :],
                    mask=i_mask[:, None] & d_mask[None, :], other=0.0)
        acc += x1[:, None] * w.to(tl.float32)
    if ATOMIC:
        tl.atomic_add(partial_ptr + offs_d, tl.sum(acc, 0), mask=d_mask, sem="relaxed")
    else:
        tl.store(partial_ptr + split * d_model + offs_d, tl.sum(acc, 0), mask=d_mask)


def rows_only(x1c, w_down_t, idx, partials, block_d: int, block_j: int, splits: int,
              atomic: bool = False) -> torch.Tensor:
    """partials [splits, d_model] (fp32) of `rows_only_kernel`; their sum over splits is x1c . W_down^T[idx].
    `atomic`: every split adds into partials[0] (zero it first); the other rows are left alone."""
    d_model = w_down_t.shape[1]
    grid = (triton.cdiv(d_model, block_d), splits)
    rows_only_kernel[grid](x1c, w_down_t, idx, partials, idx.numel(), d_model, BLOCK_D=block_d, BLOCK_J=block_j,
                           SPLITS=splits, ATOMIC=atomic, num_warps=8 if block_d * block_j >= 4096 else 4)
    return partials


def parse_config(text: str) -> tuple[int, int, int, bool]:
    """'128x64x8' -> (BLOCK_D, BLOCK_J, SPLITS, False); '4096x2x132a' -> (..., True): atomic partials."""
    text = text.strip().lower()
    atomic = text.endswith("a")
    try:
        block_d, block_j, splits = (int(v) for v in text.rstrip("a").split("x"))
    except ValueError:
        raise SystemExit(f"bench_down_probe: --configs entry {text!r} is not BLOCK_DxBLOCK_JxSPLITS[a], e.g. 128x64x8")
    return block_d, block_j, splits, atomic


def config_name(cfg: tuple[int, int, int, bool]) -> str:
    """(BLOCK_D, BLOCK_J, SPLITS, atomic) -> '128x64x8' / '4096x2x132a', as `parse_config` reads it."""
    return "{}x{}x{}{}".format(*cfg[:3], "a" if cfg[3] else "")


def probe_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The probes' common options: --shape, --active, --reps, --out."""
    from .bench_data import SHAPES
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    p.add_argument("--shape", default="llama2-7b", choices=list(SHAPES))
    p.add_argument("--active", type=float, default=0.1, help="fraction of d_ff listed")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--out", default=None, help="JSON file")
    return p


def time_table(methods: dict, reps: int, megabytes: float, skip=()) -> dict:
    """Graph-time each method's calls (bench_timing), printing a markdown row per method as it goes; the times by
    name. `skip`: names not timed."""
    from .bench_timing import time_calls_us
    print("| method | µs (p10-p90) | TB/s |\n|---|---|---|")
    times = {}
    for name, calls in methods.items():
        if name in skip:
            continue
        t = times[name] = time_calls_us(calls, reps)
        print(f"| {name} | {t['us']:.1f} ({t['us_p10']:.1f}-{t['us_p90']:.1f}) | {megabytes / t['us']:.2f} |",
              flush=True)
    return times


def probe_case(prog: str, args, touched_fraction: float):
    """The probes' case: (d_model, d_ff, n listed, CUDA generator, fp16 weight sets rotated so that the rows read
    exceed 120 MB, one random int32 list of n neurons per set); None, said on stderr, without a CUDA GPU."""
    if not torch.cuda.is_available():
        print(f"{prog} needs a CUDA GPU (none found)", file=sys.stderr)
        return None
    from .bench_data import SHAPES, make_weight_sets
    d, f = SHAPES[args.shape]
    n = max(1, int(round(args.active * f)))
    gen = torch.Generator(device="cuda").manual_seed(0)
    sets = make_weight_sets(d, f, torch.float16, "cuda", 120 << 20, touched_fraction=touched_fraction)
    idxs = [torch.randperm(f, device="cuda", generator=gen)[:n].to(torch.int32) for _ in sets]
    return d, f, n, gen, sets, idxs


def main(argv=None) -> int:
    p = probe_parser("bench_down_probe", __doc__)
    p.add_argument("--configs", default="128x64x32,128x32x64,512x32x32,64x64x32,32x128x1,64x64x1,16x128x1,"
                                        "128x64x32a,512x32x32a,4096x2x132a,4096x4x132a,2048x4x132a",
                   help="extra rows_only block shapes, BLOCK_DxBLOCK_JxSPLITS, comma list")
    args = p.parse_args(argv)
    extra = [parse_config(c) for c in args.configs.split(",") if c]
    case = probe_case("bench_down_probe", args, touched_fraction=args.active / 3)
    if case is None:
        return 2
    d, f, n, gen, sets, idxs = case
    from . import triton_up_down
    from .triton_ffn import list_state
    first_n = torch.arange(n, dtype=torch.int32, device="cuda")
    x1c = torch.randn(n, device="cuda", generator=gen)
    state = list_state("cuda")
    tickets = torch.zeros(64 * (d // 32 + 1), dtype=torch.int32, device="cuda")
    splits_max = max([triton_up_down.configs.MAX_SPLITS] + [c[2] for c in extra])
    partials = torch.empty(splits_max * d, dtype=torch.float32, device="cuda")
    out = torch.empty(1, d, dtype=torch.float16, device="cuda")

    def down(ws, idx):
        return triton_up_down.launch_down(x1c[None], ws.w_down_t, None, False, state[:1], idx, partials, tickets,
                                          out, state[64:], skip_zero=False, n_given=n)
    ref = (x1c.double()[None] @ sets[0].w_down_t.double()[idxs[0].long()]).float()
    down(sets[0], idxs[0])
    if not torch.allclose(out.float(), ref, rtol=2e-2, atol=2e-2):
        print("bench_down_probe: down_kernel disagrees with the float64 reference", file=sys.stderr)
        return 1
    best = triton_up_down.down_kernel.best_config.kwargs
    tuned = (best["BLOCK_D"], best["BLOCK_J"], best["SPLITS"], False)
    for cfg in [tuned] + extra:
        partials.zero_()
        part = rows_only(x1c, sets[0].w_down_t, idxs[0], partials[:cfg[2] * d].view(cfg[2], d), *cfg)
        got = part[:1] if cfg[3] else part.sum(0, keepdim=True)
        if not torch.allclose(got, ref, rtol=2e-2, atol=2e-2):
            print(f"bench_down_probe: rows_only {cfg} disagrees with the float64 reference", file=sys.stderr)
            return 1
    methods = {"down": [lambda ws=ws, i=i: down(ws, i) for ws, i in zip(sets, idxs)]}
    for cfg in [tuned] + extra:
        name = "rows_only" if cfg == tuned else f"rows_only {config_name(cfg)}"
        methods[name] = [lambda ws=ws, i=i, c=cfg: rows_only(x1c, ws.w_down_t, i, partials, *c)
                         for ws, i in zip(sets, idxs)]
    methods["rows_only_contiguous"] = [lambda ws=ws: rows_only(x1c, ws.w_down_t, first_n, partials, *tuned)
                                       for ws in sets]
    mb = n * d * 2 / 1e6
    result = dict(shape=args.shape, active=args.active, listed=n, megabytes=mb, tuned_down_config=best,
                  device=torch.cuda.get_device_name())
    print(f"{args.shape}, {n} listed rows, {mb:.1f} MB of W_down^T; down_kernel config {tuned}")
    result["methods"] = time_table(methods, args.reps, mb)
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
