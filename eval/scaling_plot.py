"""PNG of an activation-ratio scaling fit: measured points, fitted curve, limit A0 with its band."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .scaling_fit import predict_activation_ratio


def plot_activation_scaling(fit: dict, tokens: Sequence[float], ratios: Sequence[float], path_png,
                            title: str | None = None) -> Path:
    """Write the plot to `path_png` (parent folders created) and return the path."""
    import matplotlib
    matplotlib.use("Agg")     # files only; no display on cluster nodes
    import matplotlib.pyplot as plt

    d = np.asarray(tokens, dtype=np.float64) / fit["tokens_unit"]
    grid_d = np.geomspace(d.min(), d.max() * 1.5, 200)
    curve = predict_activation_ratio(fit, grid_d * fit["tokens_unit"])
    a0, a0_std = fit["A0"], fit["A0_std"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(d, ratios, s=12, color="tab:blue", label="measured")
    ax.plot(grid_d, curve, color="tab:orange", label=f"{fit['form']} fit (R²={fit['r2']:.3f})")
    ax.axhline(a0, color="tab:gray", linestyle="--", label=f"A0 = {a0:.4g} ± {a0_std:.2g}")
    if np.isfinite(a0_std):
        ax.axhspan(a0 - a0_std, a0 + a0_std, color="tab:gray", alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens (billions)")
    ax.set_ylabel("activation ratio")
    ax.set_title(title or f"Activation ratio scaling ({fit['form']})")
    ax.legend()
    fig.tight_layout()
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
