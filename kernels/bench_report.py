"""Benchmark report: markdown table, goal checks and a PNG of speed-up vs sparsity, from the JSON records; the
JSON writer the kernel benchmark scripts share."""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# (description, shape, batch, sparsity, method, minimum speed-up over dense) from the issue.
GOALS = [
    ("batch 1, 90%, no predictor", "llama2-7b", 1, 0.9, "ours_union", 3.0),
    ("batch 1, 90%, no predictor (gate + up fused)", "llama2-7b", 1, 0.9, "ours_union_gate_up", 3.0),
    ("batch 1, 90%, active set given", "llama2-7b", 1, 0.9, "ours_predicted_union", 6.0),
    ("batch 1, 90%, active set given as an index list", "llama2-7b", 1, 0.9, "ours_predicted_index", 6.0),
    ("batch 1, 90%, active set given (Version 2, fused)", "llama2-7b", 1, 0.9, "ours_predicted_fused", 6.0),
    ("batch 1, 90%, active set given (lists, inline compaction)", "llama2-7b", 1, 0.9, "ours_predicted_inline", 6.0),
    ("batch 1, 90%, no predictor (PDL launches)", "llama2-7b", 1, 0.9, "ours_union_pdl", 3.0),
    ("batch 1, 90%, active set given (PDL launches)", "llama2-7b", 1, 0.9, "ours_predicted_union_pdl", 6.0),
    ("batch 1, 90%, no predictor (rows kernel)", "llama2-7b", 1, 0.9, "ours_union_rows", 3.0),
    ("batch 1, 90%, no predictor (rows kernel, fp32 sum returned)", "llama2-7b", 1, 0.9, "ours_union_rows_fp32_out",
     3.0),
    ("batch 1, 90%, no predictor (rows kernel, gate without TMA)", "llama2-7b", 1, 0.9, "ours_union_rows_plain_gate",
     3.0),
    ("batch 1, 90%, no predictor (rows kernel, active rows prefetched to L2)", "llama2-7b", 1, 0.9,
     "ours_union_rows_prefetch", 3.0),
    ("batch 1, 90%, active set given (rows kernel)", "llama2-7b", 1, 0.9, "ours_predicted_rows", 6.0),
    ("batch 1, 90%, active set given as an index list (rows kernel)", "llama2-7b", 1, 0.9,
     "ours_predicted_index_rows", 6.0),
    ("batch 1, 90%, no predictor (one kernel: gate rows, then active up / down rows)", "llama2-7b", 1, 0.9,
     "ours_union_gate_rows", 3.0),
    ("batch 1, 90%, no predictor (atomic down)", "llama2-7b", 1, 0.9, "ours_union_atomic", 3.0),
    ("batch 1, 90%, active set given as an index list (atomic down)", "llama2-7b", 1, 0.9,
     "ours_predicted_index_atomic", 6.0),
    ("batch 1, 90%, active set given as an index list (PDL, down rows prefetched)", "llama2-7b", 1, 0.9,
     "ours_predicted_index_pdl", 6.0),
    ("batch 8, 90% per-token sparsity, the dispatcher's path", "llama2-7b", 8, 0.9, "ours_dispatch", 1.5),
]


def write_json(path, result) -> None:
    """`result` as indented JSON at `path`, its folder created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


def floor_line(meta: dict) -> str:
    """The run's read floor and copy bandwidth in words (JSONs from before session 20 have the copy bandwidth only,
    and their "% of floor" is against it)."""
    copy = f"copy bandwidth {meta.get('copy_gbs', 0):.0f} GB/s (read + write)"
    if "read_gbs" not in meta:
        return copy + " (the % of floor column is against it: no read floor in this run)"
    return f"read floor {meta['read_t0_us']:.1f} µs + bytes at {meta['read_gbs']:.0f} GB/s, {copy}"


def markdown_table(records: list[dict]) -> str:
    head = ("| shape | batch | sparsity | active/token | union active | method | µs (p10-p90) | GB/s | "
            "% of floor | speed-up | at most |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in records:
        if "us" not in r:
            rows.append(f"| {r['shape']} | {r['batch']} | {r['sparsity']:.2f} | | | {r['method']} | "
                        f"{r.get('error', 'not timed')} | | | | |")
            continue
        rows.append(f"| {r['shape']} | {r['batch']} | {r['sparsity']:.2f} | {r['active_per_token']:.3f} | "
                    f"{r['active_union']:.3f} | {r['method']} | {r['us']:.1f} ({r['us_p10']:.1f}-{r['us_p90']:.1f}) | "
                    f"{r['gbs']:.0f} | {100 * r['floor_fraction']:.0f}% | {r['speedup']:.2f}x"
                    + (f" ({r['dispatched_path']})" if "dispatched_path" in r else "")
                    + (f" | {r['max_speedup']:.2f}x |" if "max_speedup" in r else " | |"))
    return head + "\n".join(rows) + "\n"


def goal_lines(records: list[dict]) -> list[str]:
    """Measured figure against each goal; the 0.95x floor over every dispatched case."""
    lines = []
    for desc, shape, batch, sparsity, method, minimum in GOALS:
        hit = [r for r in records if (r["shape"], r["batch"], r["method"]) == (shape, batch, method)
               and abs(r["sparsity"] - sparsity) < 1e-6 and "speedup" in r]
        if hit:
            s = hit[0]["speedup"]
            bound = (f" (this device's read floor for its bytes allows at most {hit[0]['max_speedup']:.2f}x)"
                     if "max_speedup" in hit[0] else "")
            lines.append(f"{desc} ({shape}, {method}): {s:.2f}x, goal >= {minimum}x: "
                         f"{'met' if s >= minimum else 'MISSED'}{bound}")
        else:
            lines.append(f"{desc} ({shape}): not in this run")
    dispatched = [r for r in records if r["method"] == "ours_dispatch" and "speedup" in r]
    if dispatched:
        worst = min(dispatched, key=lambda r: r["speedup"])
        lines.append(f"worst dispatched speed-up: {worst['speedup']:.2f}x ({worst['shape']}, batch {worst['batch']}, "
                     f"sparsity {worst['sparsity']}), goal >= 0.95x: {'met' if worst['speedup'] >= 0.95 else 'MISSED'}")
    return lines


def plot_speedups(records: list[dict], path: Path) -> bool:
    """One panel per shape: speed-up over dense vs sparsity, a line per (method, batch). False: no matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no PNG (rerun with --report-from on a machine that has it)")
        return False
    shapes = sorted({r["shape"] for r in records})
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        lines = sorted({(r["method"], r["batch"]) for r in records if r["shape"] == shape and r["method"] != "dense"})
        for method, batch in lines:
            pts = sorted((r["sparsity"], r["speedup"]) for r in records
                         if (r["shape"], r["method"], r["batch"]) == (shape, method, batch) and "speedup" in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{method} b{batch}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(title=shape, xlabel="per-token sparsity", ylabel="speed-up over cuBLAS dense")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True
