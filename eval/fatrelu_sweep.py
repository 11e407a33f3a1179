"""FATReLU threshold sweep (ProSparse step 3): zero fraction and perplexity of a ReLU model at each threshold t.

    actsparse-style:  cd /tmp && python -m actsparse.eval.fatrelu_sweep EVAL.yaml [--thresholds 0,0.005,0.01,...]
                      [--max-ppl-increase 0.01] [--out sweep.json] [--png sweep.png]

The model and the held-out batches come from an `actsparse eval` config (its `model`, `dtype`, `device`,
`data`). For each t every FFN runs FATReLU(t): the gate is kept where gate >= t, else 0 (PAPERS.md; t = 0 is
ReLU). Reported per t: the exact-zero share of x1 (mean over layers), perplexity, and its ratio to t = 0.
`chosen_threshold` is the largest t whose perplexity stays within (1 + max_ppl_increase) of t = 0: the value to
export with `actsparse export RUN_DIR OUT --threshold T`. ProSparse-7B's own sweep (0 .. 0.03, PAPERS.md) picked
0.01; a model trained at another scale or budget has other gate magnitudes, hence the sweep.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from torch import nn

from actsparse.modeling import sparse_mlps, sparsify

from .perplexity import mean_nll
from .zero_fraction import zero_fraction_sparsity

DEFAULT_THRESHOLDS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5)


def set_threshold(model: nn.Module, threshold: float) -> None:
    """Every converted FFN to FATReLU(threshold) (ReLU at 0), in place."""
    sparsify(model, "relu" if threshold == 0 else "fatrelu", threshold)


def sweep(model: nn.Module, batches: list, thresholds, max_ppl_increase: float = 0.01) -> dict:
    """Rows of (threshold, sparsity, ppl, ppl_ratio) and the largest threshold within the perplexity budget.
    The model must be ReLU or FATReLU (a gate-only activation); it is left at its original threshold."""
    mlps = sparse_mlps(model)
    if not mlps or any(m.activation not in ("relu", "fatrelu") for m in mlps):
        found = sorted({m.activation for m in mlps}) or ["no converted FFN"]
        raise ValueError(f"fatrelu_sweep needs a ReLU or FATReLU model; found {', '.join(found)}")
    original = mlps[0].threshold if mlps[0].activation == "fatrelu" else 0.0
    thresholds = sorted({0.0, *(float(t) for t in thresholds)})
    rows = []
    try:
        for t in thresholds:
            set_threshold(model, t)
            loss, _ = mean_nll(model, batches)
            rows.append(dict(threshold=t, sparsity=zero_fraction_sparsity(model, batches)["sparsity"],
                             ppl=math.exp(loss)))
    finally:
        set_threshold(model, original)
    base = rows[0]["ppl"]
    for row in rows:
        row["ppl_ratio"] = row["ppl"] / base
    within = [r for r in rows if r["ppl_ratio"] <= 1.0 + max_ppl_increase]
    chosen = max(within, key=lambda r: r["threshold"])
    return dict(rows=rows, max_ppl_increase=max_ppl_increase, chosen_threshold=chosen["threshold"],
                chosen_sparsity=chosen["sparsity"], chosen_ppl_ratio=chosen["ppl_ratio"])


def plot(result: dict, path: str, title: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([100 * r["sparsity"] for r in rows], [100 * (r["ppl_ratio"] - 1) for r in rows], "o-")
    for r in rows:
        ax.annotate(f"t={r['threshold']:g}", (100 * r["sparsity"], 100 * (r["ppl_ratio"] - 1)), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.axhline(100 * result["max_ppl_increase"], color="grey", ls="--", lw=0.8)
    ax.set_xlabel("zero fraction of x1 (%)")
    ax.set_ylabel("perplexity increase over t = 0 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    from .eval_config import EvalConfigError, load_eval_config
    from .eval_data import calibration_batches
    from .run_eval import load_model_and_tokenizer

    p = argparse.ArgumentParser(prog="fatrelu_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="an `actsparse eval` YAML (model, dtype, device, data)")
    p.add_argument("--thresholds", default=",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS))
    p.add_argument("--max-ppl-increase", type=float, default=0.01)
    p.add_argument("--out", help="JSON result")
    p.add_argument("--png", help="plot of perplexity increase against sparsity")
    args = p.parse_args(argv)
    try:
        cfg = load_eval_config(args.config)
        thresholds = [float(t) for t in args.thresholds.split(",")]
        if any(t < 0 for t in thresholds):
            raise ValueError(f"--thresholds: negative value in {args.thresholds}")
        model, tokenizer = load_model_and_tokenizer(cfg)
        batches, info = calibration_batches(cfg.data, tokenizer, cfg.quality.add_bos_token)
        result = sweep(model, batches, thresholds, args.max_ppl_increase)
    except (EvalConfigError, ValueError, OSError) as err:
        print(f"fatrelu_sweep: {args.config}: {err}", file=sys.stderr)
        return 2
    result.update(model=cfg.model, data=info)
    print(f"{'t':>7} {'zero fraction':>14} {'ppl':>9} {'vs t=0':>8}")
    for r in result["rows"]:
        print(f"{r['threshold']:7g} {100 * r['sparsity']:13.2f}% {r['ppl']:9.3f} {100 * (r['ppl_ratio'] - 1):+7.2f}%")
    print(f"largest t within +{100 * args.max_ppl_increase:g}% perplexity: {result['chosen_threshold']:g} "
          f"({100 * result['chosen_sparsity']:.2f}% zeros)")
    if result["chosen_threshold"] == result["rows"][-1]["threshold"] and len(result["rows"]) > 1:
        print("the budget still holds at the largest threshold given: extend --thresholds to find where it ends")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.png:
        plot(result, args.png, f"FATReLU sweep: {cfg.display_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
