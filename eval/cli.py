"""`actsparse eval CONFIG_OR_CHECKPOINT [key=value ...]`: one model -> one results JSON.

    actsparse eval eval.yaml                                 # a YAML eval config (see eval_config.py)
    actsparse eval runs/prosparse/export quality.limit=50    # a checkpoint folder with default settings
    actsparse eval eval.yaml --kernel-bench bench.json --out results/prosparse.json
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .eval_config import EvalConfigError, config_for_checkpoint, load_eval_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actsparse eval",
        description="Sparsity metrics (zero fraction, CETT, PPL-p%), perplexity and lm-eval task groups "
                    "for one model; writes one results JSON.")
    parser.add_argument("target", help="eval config YAML, or a checkpoint folder / Hub id (default settings)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. quality.limit=20")
    parser.add_argument("--out", help="results JSON path (overrides `output`)")
    parser.add_argument("--kernel-bench",
                        help="benchmark JSON (bench-kernels or bench_decode): fills the `throughput` field")
    parser.add_argument("--name", help="model name in the results and the leaderboard")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def _is_yaml(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) and os.path.isfile(target)


def load_config(args):
    overrides = list(args.overrides)
    for flag, key in ((args.out, "output"), (args.kernel_bench, "kernel_bench"), (args.name, "name")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if _is_yaml(args.target):
        return load_eval_config(args.target, overrides)
    return config_for_checkpoint(args.target, overrides)


def _quiet_libraries() -> None:
    """--quiet: no progress bars from transformers (weight loading) or datasets either."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.quiet:
        _quiet_libraries()
    try:
        cfg = load_config(args)
    except EvalConfigError as err:
        print(f"actsparse eval: {err}", file=sys.stderr)
        return 2
    from .lm_eval_adapter import MissingTaskData
    from .results import write_results
    from .run_eval import evaluate
    from .task_groups import TaskGroupsError

    try:
        results = evaluate(cfg, show_progress=not args.quiet)
    except (MissingTaskData, TaskGroupsError) as err:
        print(f"actsparse eval: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"actsparse eval: {err}", file=sys.stderr)
        return 2
    path = write_results(results, cfg.output_path)
    print(f"actsparse eval: wrote {path} ({results['wall_time_s']['total']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
