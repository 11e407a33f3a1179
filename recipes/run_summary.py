"""Throughput summary of training runs from their metrics.jsonl (for docs/RESULTS.md).

    PYTHONSAFEPATH=1 python3 -m actsparse.recipes.run_summary RUN_DIR [RUN_DIR ...] [--skip 50] [--json OUT]

Per run: median tokens/s and MFU over the logged steps after `--skip` (warm-up, compilation and
allocator growth excluded), the implied step time, last lm_loss / sparsity / lambda. Runs given in pairs
(baseline, variant, baseline, variant, ...), e.g. L1 term + sparsity counters off / on: each pair's step-time
overhead, their mean, and the noise it must beat (the spread of the baseline's step time across its repeats).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def summarize(run_dir: Path, skip: int) -> dict:
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in lines if "lm_loss" in r and r["step"] > skip]
    if not steps:
        raise SystemExit(f"{run_dir}: no training steps after step {skip}")
    tokens_per_step = steps[-1]["tokens"] / steps[-1]["step"]
    tps = statistics.median(r["tokens_per_s"] for r in steps)
    mfus = [r["mfu"] for r in steps if r.get("mfu") is not None]
    last = steps[-1]
    return {"run": str(run_dir), "steps_measured": len(steps), "tokens_per_step": tokens_per_step,
            "median_tokens_per_s": tps, "median_step_s": tokens_per_step / tps,
            "median_mfu": statistics.median(mfus) if mfus else None, "last_step": last["step"],
            "last_lm_loss": last["lm_loss"], "last_sparsity": last.get("sparsity"), "last_l1_lambda": last["l1_lambda"]}


def pair_overheads(rows: list[dict]) -> dict:
    """Runs as (baseline, variant) pairs: per-pair overhead, its mean, and the baseline's relative spread."""
    if len(rows) < 2 or len(rows) % 2:
        return {}
    base = [r["median_step_s"] for r in rows[0::2]]
    pairs = [v["median_step_s"] / b["median_step_s"] - 1.0 for b, v in zip(rows[0::2], rows[1::2])]
    out = {"pair_overheads": pairs, "step_time_overhead": sum(pairs) / len(pairs)}
    if len(base) > 1:
        out["baseline_spread"] = (max(base) - min(base)) / statistics.mean(base)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--skip", type=int, default=50, help="ignore steps up to this one")
    parser.add_argument("--json", default=None, help="also write the summaries here")
    args = parser.parse_args(argv)
    rows = [summarize(Path(r), args.skip) for r in args.runs]
    for row in rows:
        mfu = f"{100 * row['median_mfu']:.1f}%" if row["median_mfu"] is not None else "n/a"
        print(f"{row['run']}: {row['median_tokens_per_s']:,.0f} tokens/s, {1000 * row['median_step_s']:.1f} ms/step, "
              f"MFU {mfu}, loss {row['last_lm_loss']:.3f}, sparsity {row['last_sparsity']}, "
              f"lambda {row['last_l1_lambda']:g} ({row['steps_measured']} steps)")
    result = {"runs": rows}
    result.update(pair_overheads(rows))
    if "step_time_overhead" in result:
        print(f"step-time overhead, variant vs baseline: {100 * result['step_time_overhead']:+.2f}% "
              f"(pairs: {', '.join(f'{100 * o:+.2f}%' for o in result['pair_overheads'])}"
              + (f"; baseline repeats spread {100 * result['baseline_spread']:.2f}%)" if "baseline_spread" in result
                 else ")"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
