"""Sparsing Law fits recover known parameters from noisy synthetic activation-ratio curves."""
import numpy as np
import pytest

from actsparse.eval import fit_activation_scaling, plot_activation_scaling, predict_activation_ratio

TOKENS = np.geomspace(0.5e9, 400e9, 40)


def noisy(values, scale, seed=0):
    return values + np.random.default_rng(seed).normal(0, scale, values.shape)


def test_relu_form_recovers_its_limit():
    d = TOKENS / 1e9
    true = dict(c=1.5, alpha=0.4, b=-1.0, A0=0.07)
    ratios = noisy(np.exp(-true["c"] * d ** true["alpha"] + true["b"]) + true["A0"], 5e-4)
    fit = fit_activation_scaling(TOKENS, ratios, form="relu")
    assert fit["form"] == "relu" and fit["param_names"] == ["c", "alpha", "b", "A0"]
    assert fit["A0"] == pytest.approx(true["A0"], abs=4 * fit["A0_std"] + 1e-3)
    assert 0 < fit["A0_std"] < 0.01
    for name in ("c", "alpha", "b"):
        assert fit["params"][name] == pytest.approx(true[name], rel=0.2)
    assert fit["r2"] > 0.99 and fit["rmse"] < 1e-3
    assert predict_activation_ratio(fit, [1e9])[0] == pytest.approx(np.exp(-1.5 - 1.0) + 0.07, abs=2e-3)


def test_silu_form_recovers_its_limit_and_bootstrap():
    d = TOKENS / 1e9
    true = dict(c=0.05, alpha=0.6, A0=0.40)
    ratios = noisy(-true["c"] / d ** true["alpha"] + true["A0"], 5e-4, seed=1)
    fit = fit_activation_scaling(TOKENS, ratios, form="silu", bootstrap=20)
    assert fit["A0"] == pytest.approx(0.40, abs=4 * fit["A0_std"] + 1e-3)
    assert fit["params"]["c"] == pytest.approx(0.05, rel=0.1)
    assert fit["params"]["alpha"] == pytest.approx(0.6, rel=0.1)
    assert 0 < fit["A0_std_bootstrap"] < 0.01
    assert fit["A0_std_bootstrap"] == pytest.approx(fit["A0_std"], rel=1.0)   # same order of magnitude


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="form"):
        fit_activation_scaling(TOKENS, TOKENS, form="gelu")
    with pytest.raises(ValueError, match="points"):
        fit_activation_scaling(TOKENS[:3], [0.1, 0.2, 0.3], form="silu")


def test_plot_writes_png(tmp_path):
    d = TOKENS / 1e9
    ratios = noisy(-0.05 / d ** 0.6 + 0.4, 5e-4)
    fit = fit_activation_scaling(TOKENS, ratios, form="silu")
    path = plot_activation_scaling(fit, TOKENS, ratios, tmp_path / "plots" / "scaling.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
