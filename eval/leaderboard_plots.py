"""PNG plots for the leaderboard (matplotlib, Agg backend: files only, no display).

- `sparsity_vs_quality.png`: suite average against zero-fraction sparsity, ours filled, published hollow.
- `per_layer_sparsity.png`: zero fraction per layer (solid) and CETT sparsity per layer (dashed) per model.
- `training_curves.png`: lm_loss, sparsity, l1_lambda against step from each run's metrics.jsonl.
- `scaling_<run>.png`: the Sparsing Law fit of activation ratio against tokens (via scaling_fit.py).
"""
from __future__ import annotations

import json
import logging
import os
import re

log = logging.getLogger(__name__)
MIN_SCALING_POINTS = 8     # the ReLU form has 4 parameters; fewer points only trace noise


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _short_source(source: str) -> str:
    """'ProSparse (arXiv 2402.13516) Table 4 (same-data ...)' -> 'ProSparse Table 4'."""
    return re.sub(r" \([^)]*\)", "", source).split(",")[0]


def plot_sparsity_vs_quality(rows: list[dict], path: str) -> str:
    """One panel per suite with any point: x = zero-fraction sparsity %, y = suite average.

    Ours are filled red circles labelled by name; published points are hollow squares coloured by
    source and numbered, with the numbers explained in a key under each panel (names would overlap).
    """
    plt = _pyplot()
    suites = [c[:-4] for c in dict.fromkeys(k for r in rows for k in r if k.endswith(" avg"))]
    suites = [s for s in suites if any(r.get(f"{s} avg") is not None and r.get("zero_fraction_sparsity")
                                       is not None for r in rows)] or suites[:1]
    width = max(len(suites), 1)
    fig, axes = plt.subplots(1, width, figsize=(6.5 * width, 6.5), squeeze=False)
    sources = list(dict.fromkeys(r["source"] for r in rows if r["kind"] == "published"))
    for ax, suite in zip(axes[0], suites):
        key_lines = []
        for row in rows:
            x, y = row.get("zero_fraction_sparsity"), row.get(f"{suite} avg")
            if x is None or y is None:
                continue
            if row["kind"] == "ours":
                ax.scatter([x], [y], s=60, marker="o", color="tab:red", zorder=3)
                ax.annotate(row["model"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8,
                            color="tab:red")
                continue
            number = len(key_lines) + 1
            color = f"C{sources.index(row['source']) % 10}"
            ax.scatter([x], [y], s=50, marker="s", facecolors="none", edgecolors=color)
            ax.annotate(str(number), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=color)
            key_lines.append(f"{number}: {row['model']} ({_short_source(row['source'])})")
        ax.set_xlabel("activation sparsity (zero fraction of x1, %)")
        ax.set_ylabel(f"{suite} average (%)")
        ax.set_title(f"{suite}: ours (red) vs published (numbered)")
        ax.grid(alpha=0.3)
        if key_lines:
            half = (len(key_lines) + 1) // 2
            for column, lines in enumerate((key_lines[:half], key_lines[half:])):
                ax.text(0.5 * column, -0.14, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=6.5)
    fig.subplots_adjust(bottom=0.3, left=0.07, right=0.97, wspace=0.25)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_per_layer_sparsity(all_results: list[dict], path: str) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, results in enumerate(all_results):
        color = f"C{i % 10}"
        sparsity = results.get("sparsity") or {}
        for key, style in (("zero_fraction", "-"), ("cett", "--"), ("ppl_p", ":")):
            per_layer = (sparsity.get(key) or {}).get("per_layer")
            if per_layer:
                ax.plot(range(len(per_layer)), [100 * v if v is not None else float("nan") for v in per_layer],
                        style, color=color, marker="o", markersize=3, label=f"{results['name']} ({key})")
    ax.set_xlabel("layer")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("sparsity (%)")
    ax.set_title("Per-layer sparsity: zero fraction (solid), CETT (dashed), PPL-p% (dotted)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    return _save(fig, path)


def read_metrics(path: str) -> list[dict]:
    """Records of a recipe's metrics.jsonl (training records and held-out records alike)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_label(path: str) -> str:
    """RUN_DIR/metrics.jsonl: the run folder's name; any other file (e.g. metrics_relu.jsonl copied out of its
    run): its own name without the extension, less a leading `metrics_`."""
    name = os.path.basename(path)
    if name != "metrics.jsonl":
        return os.path.splitext(name)[0].removeprefix("metrics_") or name
    return os.path.basename(os.path.dirname(os.path.abspath(path))) or path


def _series(records: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_curves(runs: dict[str, list[dict]], path: str) -> str:
    """lm_loss (held-out loss dashed), sparsity (%), l1_lambda against step, one colour per run."""
    plt = _pyplot()
    panels = (("lm_loss", "LM loss"), ("sparsity", "sparsity (%)"), ("l1_lambda", "L1 lambda"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, (label, records) in enumerate(runs.items()):
        color = f"C{i % 10}"
        for ax, (key, _) in zip(axes, panels):
            steps, values = _series(records, key)
            if key == "sparsity":
                values = [100 * v for v in values]
            ax.plot(steps, values, color=color, label=label)
        steps, values = _series(records, "heldout_loss")
        if steps:
            axes[0].plot(steps, values, "--", color=color, marker="o", markersize=3, label=f"{label} held-out")
    for ax, (_, title) in zip(axes, panels):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def scaling_points(records: list[dict]) -> tuple[list[float], list[float]]:
    """(tokens, activation ratio = 1 - sparsity) of the training records that have both."""
    points = [(r["tokens"], 1.0 - r["sparsity"]) for r in records
              if r.get("tokens") and r.get("sparsity") is not None and "lm_loss" in r]
    return [p[0] for p in points], [p[1] for p in points]


def scaling_form(ratios: list[float]) -> str:
    """ReLU form when the activation ratio falls over training, SiLU form when it rises (Sparsing Law)."""
    third = max(len(ratios) // 3, 1)
    return "relu" if sum(ratios[-third:]) / third <= sum(ratios[:third]) / third else "silu"


def plot_scaling_fit(label: str, records: list[dict], out_dir: str) -> tuple[str | None, dict | None]:
    """Fit and plot when the run has MIN_SCALING_POINTS points; (None, None) with a log line otherwise."""
    from .scaling_fit import fit_activation_scaling
    from .scaling_plot import plot_activation_scaling

    tokens, ratios = scaling_points(records)
    if len(tokens) < MIN_SCALING_POINTS:
        log.info("run %s: %d (tokens, sparsity) points; the scaling fit needs %d", label, len(tokens),
                 MIN_SCALING_POINTS)
        return None, None
    form = scaling_form(ratios)
    try:
        fit = fit_activation_scaling(tokens, ratios, form)
    except (RuntimeError, ValueError) as err:
        log.warning("run %s: %s scaling fit failed: %s", label, form, err)
        return None, None
    path = os.path.join(out_dir, f"scaling_{label}.png")
    plot_activation_scaling(fit, tokens, ratios, path, title=f"{label}: activation ratio vs tokens ({form} form)")
    return path, fit
