"""Sparsing Law fits of activation ratio A against training tokens, D = tokens / 1e9 (PAPERS.md (f)).

- ReLU-like (A falls to its limit): `A(D) = exp(-c * D**alpha + b) + A0`
- SiLU-like (A rises to its limit):  `A(D) = -c / D**alpha + A0`

A0 is the limit activation ratio (same units as the ratios given: a fraction or a percent).
Fitted with `scipy.optimize.curve_fit` (trust-region reflective, c, alpha >= 0) from a small grid of
starting exponents (these power-law fits have flat valleys, one start often stalls); the fit with
the smallest squared error wins. Uncertainty: the standard deviations from curve_fit's covariance
(`absolute_sigma=False`: scaled by the residual variance), and optionally a residual bootstrap.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

TOKENS_PER_UNIT = 1e9
FORMS = ("relu", "silu")
ALPHA_STARTS = (0.1, 0.3, 0.5, 1.0, 2.0)


def relu_form(d, c, alpha, b, a0):
    return np.exp(-c * np.power(d, alpha) + b) + a0


def silu_form(d, c, alpha, a0):
    return -c / np.power(d, alpha) + a0


PARAM_NAMES = {"relu": ("c", "alpha", "b", "A0"), "silu": ("c", "alpha", "A0")}
CURVES = {"relu": relu_form, "silu": silu_form}


def _starts(form: str, d: np.ndarray, a: np.ndarray):
    span = float(a.max() - a.min()) or abs(float(a.mean())) or 1.0
    for alpha in ALPHA_STARTS:
        if form == "relu":
            yield [1.0, alpha, math.log(span), float(a.min())]
        else:
            yield [span * float(d.min()) ** alpha, alpha, float(a.max())]


def _bounds(form: str):
    if form == "relu":
        return [0.0, 0.0, -np.inf, -np.inf], [np.inf, 10.0, np.inf, np.inf]
    return [0.0, 0.0, -np.inf], [np.inf, 10.0, np.inf]


def _best_fit(form: str, d: np.ndarray, a: np.ndarray):
    best = None
    for p0 in _starts(form, d, a):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                params, cov = curve_fit(CURVES[form], d, a, p0=p0, bounds=_bounds(form), maxfev=20000)
            except (RuntimeError, ValueError):
                continue
        sse = float(np.sum((CURVES[form](d, *params) - a) ** 2))
        if np.isfinite(sse) and (best is None or sse < best[2]):
            best = (params, cov, sse)
    if best is None:
        raise RuntimeError(f"fit_activation_scaling: the {form} form did not converge from any start")
    return best


def _bootstrap_a0_std(form: str, d: np.ndarray, a: np.ndarray, params, samples: int, seed: int) -> float:
    """Residual bootstrap: refit on fitted values plus resampled residuals; std of A0."""
    rng = np.random.default_rng(seed)
    fitted = CURVES[form](d, *params)
    residuals = a - fitted
    a0s = []
    for _ in range(samples):
        resampled = fitted + rng.choice(residuals, size=residuals.size, replace=True)
        try:
            a0s.append(_best_fit(form, d, resampled)[0][-1])
        except RuntimeError:
            continue
    return float(np.std(a0s, ddof=1)) if len(a0s) > 1 else float("nan")


def fit_activation_scaling(tokens: Sequence[float], activation_ratio: Sequence[float], form: str = "relu",
                           bootstrap: int = 0, seed: int = 0) -> dict:
    """Fit the Sparsing Law form to (tokens, activation ratio) points.

    Returns {"form", "params" {name: value}, "params_std" {name: std}, "A0", "A0_std" (covariance),
    "A0_std_bootstrap" (only when bootstrap > 0), "covariance" (list of lists, order of "param_names"),
    "param_names", "rmse", "r2", "n_points", "tokens_unit" (1e9: D = tokens / 1e9)}.
    """
    if form not in FORMS:
        raise ValueError(f"fit_activation_scaling: form must be one of {FORMS}, got {form!r}")
    d = np.asarray(tokens, dtype=np.float64) / TOKENS_PER_UNIT
    a = np.asarray(activation_ratio, dtype=np.float64)
    names = PARAM_NAMES[form]
    if d.shape != a.shape or d.ndim != 1:
        raise ValueError(f"tokens and activation_ratio must be 1-D and equally long, got {d.shape} and {a.shape}")
    if d.size <= len(names):
        raise ValueError(f"the {form} form has {len(names)} parameters; need more than that many points, got {d.size}")
    if np.any(d <= 0):
        raise ValueError("tokens must be > 0 (the forms use D**alpha)")
    params, cov, sse = _best_fit(form, d, a)
    std = np.sqrt(np.clip(np.diag(cov), 0, None))
    total = float(np.sum((a - a.mean()) ** 2))
    result = {
        "form": form, "param_names": list(names),
        "params": {n: float(v) for n, v in zip(names, params)},
        "params_std": {n: float(s) for n, s in zip(names, std)},
        "A0": float(params[-1]), "A0_std": float(std[-1]),
        "covariance": cov.tolist(), "rmse": math.sqrt(sse / d.size),
        "r2": 1.0 - sse / total if total > 0 else float("nan"),
        "n_points": int(d.size), "tokens_unit": TOKENS_PER_UNIT,
    }
    if bootstrap > 0:
        result["A0_std_bootstrap"] = _bootstrap_a0_std(form, d, a, params, bootstrap, seed)
    return result


def predict_activation_ratio(fit: dict, tokens: Sequence[float]) -> np.ndarray:
    d = np.asarray(tokens, dtype=np.float64) / fit["tokens_unit"]
    return CURVES[fit["form"]](d, *[fit["params"][n] for n in fit["param_names"]])
