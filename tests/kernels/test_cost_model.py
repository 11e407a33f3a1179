"""The dispatcher's cost model: the committed H100 fit against a refit of its bench file, the interpolation
over batch sizes, and its decisions against the measured speed-ups in that file."""
import json
import math
from dataclasses import astuple
from pathlib import Path

import pytest

from actsparse.kernels.cost_model import (H100_FP16, H100_FP16_SOURCES, CostModel, PathCost, _at_batch,
                                          fit_cost_model, main)

RUNS = Path(__file__).resolve().parents[2] / "docs/results/2026-11-23-h100-s5/kernels"
BENCH = RUNS / "bkall/bench_kernels.json"


def _close(a: PathCost, b: PathCost, tol=1e-3) -> bool:
    return astuple(a) == pytest.approx(astuple(b), abs=tol)


def _records():
    return [r for run in H100_FP16_SOURCES
            for r in json.loads((RUNS / run / "bench_kernels.json").read_text())["records"]]


def test_committed_coefficients_are_the_fit_of_the_committed_bench():
    refit = fit_cost_model(_records(), source="refit")
    for path in ("exact", "predicted"):
        assert sorted(getattr(refit, path)) == sorted(getattr(H100_FP16, path)) == [1, 4, 8, 16, 32, 64]
        for batch, cost in getattr(refit, path).items():
            assert _close(getattr(H100_FP16, path)[batch], cost)
    assert _close(H100_FP16.dense, refit.dense)


def test_fit_recovers_known_coefficients():
    """Records generated from known coefficients (two shapes, two batches) are fitted back exactly."""
    truth_dense, truth = PathCost(10.0, 0.3), {1: PathCost(12.0, 0.1, 0.2), 8: PathCost(20.0, 0.12, 0.25)}
    records = []
    for d_model, d_ff in ((1024, 4096), (4096, 11008), (2048, 5632)):
        mb = 3 * d_model * d_ff * 2 / 1e6
        for batch, cost in truth.items():
            for f in (0.1, 0.3, 0.6):
                base = {"d_model": d_model, "d_ff": d_ff, "batch": batch, "active_union": f, "active_per_token": f}
                records.append({**base, "method": "dense", "us": truth_dense.predict(mb, 0)})
                records.append({**base, "method": "ours_union", "us": cost.predict(mb, f)})
    model = fit_cost_model(records, "synthetic")
    assert _close(model.dense, truth_dense)
    for batch, cost in truth.items():
        assert _close(model.exact[batch], cost)
    assert model.predicted == {}
    with pytest.raises(ValueError, match="two shapes"):
        fit_cost_model([r for r in records if r["d_model"] == 1024], "one shape")


def test_batch_interpolation_in_log2_and_no_cheaper_above_the_last_batch():
    costs = {1: PathCost(10.0, 0.1, 0.2), 8: PathCost(16.0, 0.1, 0.3), 32: PathCost(20.0, 0.05, 0.5)}
    assert _at_batch(costs, 8) == costs[8]
    assert _at_batch(costs, 1) == costs[1]
    mid = _at_batch(costs, 16)  # log2: half-way from 8 to 32
    assert mid.us == pytest.approx(18.0) and mid.us_per_listed_mb == pytest.approx(0.4)
    two = _at_batch(costs, 2)  # a third of the way from 1 to 8
    assert two.us == pytest.approx(10.0 + 6.0 / 3)
    above = _at_batch(costs, 64)  # extrapolated from 8 -> 32, the falling us_per_mb held at batch 32's
    assert above.us == pytest.approx(22.0) and above.us_per_listed_mb == pytest.approx(0.6)
    assert above.us_per_mb == pytest.approx(0.05)


def test_dispatch_decisions_on_the_measured_cases():
    """Over the 208 sparse cases of the fitted benches (4 shapes, batch 1-64, 4 sparsities, 2 paths), the
    default rule (sparse when predicted at most 0.95 of dense) picks no case slower than 0.97x of dense (the
    goal is 0.95x) and takes every case faster than 1.15x."""
    slowest_taken, missed, cases, taken = math.inf, [], 0, 0
    for r in _records():
        if r["method"] not in ("ours_union", "ours_predicted_union"):
            continue
        predicted = r["method"] == "ours_predicted_union"
        f = r["active_union"] if r["batch"] > 1 else r["active_per_token"]
        mb = 3 * r["d_model"] * r["d_ff"] * 2 / 1e6
        ratio = H100_FP16.sparse_us(mb, f, r["batch"], predicted) / H100_FP16.dense_us(mb)
        cases += 1
        if ratio <= 0.95:
            taken += 1
            slowest_taken = min(slowest_taken, r["speedup"])
        elif r["speedup"] > 1.15:
            missed.append((r["shape"], r["batch"], r["sparsity"], r["method"]))
    assert (cases, taken) == (208, 125)
    assert slowest_taken >= 0.97
    assert missed == []


def test_cli_prints_a_model_that_loads(tmp_path, capsys):
    assert main([str(BENCH)]) == 0
    model = CostModel.from_dict(json.loads(capsys.readouterr().out))
    assert "H100" in model.source
    assert model.to_dict() == CostModel.from_dict(model.to_dict()).to_dict()
    assert model.sparse_us(100.0, 0.1, 8, False) < model.dense_us(100.0)
