"""`actsparse leaderboard RESULTS... --out DIR [--runs metrics.jsonl ...]`

Writes DIR/leaderboard.md and DIR/leaderboard.csv (our rows beside the papers' published rows),
DIR/sparsity_vs_quality.png, DIR/per_layer_sparsity.png, and with --runs DIR/training_curves.png plus
DIR/scaling_<run>.png and DIR/scaling_fits.json for runs with enough (tokens, sparsity) points.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .leaderboard import build_table, to_markdown, write_csv
from .results import ResultsError, json_safe, load_results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actsparse leaderboard",
                                     description="Render result JSONs as a table (markdown, CSV) and PNG plots.")
    parser.add_argument("results", nargs="*", help="results JSON files written by `actsparse eval`")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--runs", nargs="*", default=[], help="training metrics.jsonl files (curves, scaling fit)")
    parser.add_argument("--no-published", action="store_true", help="leave the papers' published rows out")
    return parser


def render(results_paths: list[str], out_dir: str, run_paths: list[str] = (), include_published: bool = True) -> dict:
    """Write every output; returns {name: path} of what was written."""
    from .leaderboard_plots import (plot_per_layer_sparsity, plot_scaling_fit, plot_sparsity_vs_quality,
                                    plot_training_curves, read_metrics, run_label)

    os.makedirs(out_dir, exist_ok=True)
    all_results = [load_results(p) for p in results_paths]
    columns, rows = build_table(all_results, include_published)
    written = {"csv": write_csv(columns, rows, os.path.join(out_dir, "leaderboard.csv"))}
    with open(os.path.join(out_dir, "leaderboard.md"), "w", encoding="utf-8") as f:
        f.write(to_markdown(columns, rows))
    written["markdown"] = os.path.join(out_dir, "leaderboard.md")
    written["sparsity_vs_quality"] = plot_sparsity_vs_quality(rows, os.path.join(out_dir, "sparsity_vs_quality.png"))
    if all_results:
        written["per_layer_sparsity"] = plot_per_layer_sparsity(
            all_results, os.path.join(out_dir, "per_layer_sparsity.png"))
    runs = {}
    for path in run_paths:
        label = run_label(path)
        while label in runs:
            label += "_"
        runs[label] = read_metrics(path)
    if runs:
        written["training_curves"] = plot_training_curves(runs, os.path.join(out_dir, "training_curves.png"))
        fits = {}
        for label, records in runs.items():
            png, fit = plot_scaling_fit(label, records, out_dir)
            if png:
                written[f"scaling_{label}"], fits[label] = png, fit
        if fits:
            with open(os.path.join(out_dir, "scaling_fits.json"), "w", encoding="utf-8") as f:
                json.dump(json_safe(fits), f, indent=2)
            written["scaling_fits"] = os.path.join(out_dir, "scaling_fits.json")
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.results and not args.runs:
        print("actsparse leaderboard: give at least one results JSON or --runs metrics.jsonl", file=sys.stderr)
        return 2
    try:
        written = render(args.results, args.out, args.runs, not args.no_published)
    except (ResultsError, OSError, json.JSONDecodeError) as err:
        print(f"actsparse leaderboard: {err}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
