"""Predicted microseconds of one FFN call, dense (cuBLAS) against our sparse union kernels, for the dispatcher.

Every path is modelled as `us + us_per_mb * W + us_per_listed_mb * f * W`, with W the MB of the three weight
matrices and f the fraction of neurons whose rows are read:
- dense: a fixed launch/latency cost plus W at cuBLAS's rate (f plays no part);
- exact (no predictor): the dense gate (a share of W) plus the listed neurons' up and down rows (f * W);
- predicted set: the listed neurons' gate, up and down rows (f * W), plus what scales with the layer's size
  (compaction over d_ff, the split-K reduction over d_model).
The sparse paths get one set of coefficients per measured batch size (1, 4, 8, 16, 32, 64 tokens), interpolated
linearly in log2(tokens) in between; above the largest measured batch each coefficient is extrapolated from
the last two and never taken below its value at the largest batch (more tokens never make a call cheaper).

The coefficients are least-squares fits (`fit_cost_model`) to `actsparse bench-kernels` records: with the
shapes of very different sizes in one run (MiniCPM-1B's 35 MB to LLaMA2-13B's 425 MB) the fixed cost and the
per-MB rates separate. Its sparse-time error over those runs: 95% of the 208 measured cases within 14%, all
within 28% (the worst at batch 1, where sparse wins by far anyway). Why not weight bytes alone (the
dispatcher's earlier rule): at MiniCPM-1B's shape our three-launch path costs ~20 us before it reads a byte,
so at 32 tokens it lost to cuBLAS (0.77x) at a byte ratio that is a clear win at the 7B shape
(docs/RESULTS.md, session 5). Refit on another GPU with
`python -m actsparse.kernels.cost_model runs/bench-kernels/bench_kernels.json` and pass the printed model as
`DispatchConfig(cost_model=CostModel.from_dict(...))`.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class PathCost:
    us: float                   # fixed cost of a call
    us_per_mb: float            # per MB of the three weight matrices
    us_per_listed_mb: float = 0.0  # per MB of the listed neurons' rows (f * W)

    def predict(self, weight_mb: float, fraction: float) -> float:
        return self.us + self.us_per_mb * weight_mb + self.us_per_listed_mb * fraction * weight_mb


@dataclass(frozen=True)
class CostModel:
    source: str                                  # where the fit came from (device, file, commit)
    dense: PathCost
    exact: dict[int, PathCost] = field(default_factory=dict)      # by batch size (tokens)
    predicted: dict[int, PathCost] = field(default_factory=dict)

    def dense_us(self, weight_mb: float) -> float:
        return self.dense.predict(weight_mb, 0.0)

    def sparse_us(self, weight_mb: float, fraction: float, n_tokens: int, predicted: bool) -> float:
        return _at_batch(self.predicted if predicted else self.exact, n_tokens).predict(weight_mb, fraction)

    def to_dict(self) -> dict:
        return {"source": self.source, "dense": asdict(self.dense),
                "exact": {str(t): asdict(c) for t, c in self.exact.items()},
                "predicted": {str(t): asdict(c) for t, c in self.predicted.items()}}

    @classmethod
    def from_dict(cls, raw: dict) -> "CostModel":
        by_batch = lambda d: {int(t): PathCost(**c) for t, c in d.items()}  # noqa: E731
        return cls(source=raw["source"], dense=PathCost(**raw["dense"]), exact=by_batch(raw["exact"]),
                   predicted=by_batch(raw["predicted"]))


def _at_batch(costs: dict[int, PathCost], n_tokens: int) -> PathCost:
    """Coefficients at `n_tokens`: interpolated in log2(tokens) between measured batch sizes, extrapolated
    (not below the largest measured batch's values) above them, the smallest measured batch's below."""
    batches = sorted(costs)
    if n_tokens <= batches[0] or len(batches) == 1:
        return costs[batches[0] if n_tokens <= batches[0] else batches[-1]]
    hi = next((b for b in batches if b >= n_tokens), None)
    lo_b, hi_b = (batches[batches.index(hi) - 1], hi) if hi is not None else (batches[-2], batches[-1])
    w = (math.log2(n_tokens) - math.log2(lo_b)) / (math.log2(hi_b) - math.log2(lo_b))
    lo, up = asdict(costs[lo_b]), asdict(costs[hi_b])
    mixed = {k: lo[k] + w * (up[k] - lo[k]) for k in lo}
    if hi is None:  # extrapolating: never cheaper than at the largest measured batch
        mixed = {k: max(v, up[k]) for k, v in mixed.items()}
    return PathCost(**mixed)


# Fitted by `fit_cost_model` to the three `actsparse bench-kernels` runs of session 5 (one H100 80GB HBM3, fp16,
# kernels at commit b04b099 = 86f52f5): docs/results/2026-11-23-h100-s5/kernels/ bkall (four shapes, batch 1 / 8 /
# 32), dispatch_a (MiniCPM-1B and LLaMA2-7B, batch 4 / 16 / 32 / 64), dispatch_b (LLaMA2-13B and Mistral-7B, batch
# 4 / 16 / 64); sparsity 0.5-0.95 throughout. A test refits those files and checks these numbers.
H100_FP16_SOURCES = ("bkall", "dispatch_a", "dispatch_b")
H100_FP16 = CostModel(
    source="NVIDIA H100 80GB HBM3, fp16, docs/results/2026-11-23-h100-s5/kernels/{bkall,dispatch_a,dispatch_b}",
    dense=PathCost(us=16.4921, us_per_mb=0.3468),
    exact={1: PathCost(14.9607, 0.1352, 0.1897), 4: PathCost(20.4581, 0.1347, 0.2246),
           8: PathCost(20.7075, 0.1244, 0.2298), 16: PathCost(22.4859, 0.1300, 0.2422),
           32: PathCost(24.3261, 0.1383, 0.2733), 64: PathCost(23.2566, 0.1919, 0.3600)},
    predicted={1: PathCost(12.8031, 0.0413, 0.2844), 4: PathCost(22.5634, 0.0332, 0.3111),
               8: PathCost(21.7828, 0.0235, 0.3216), 16: PathCost(26.8017, 0.0179, 0.3451),
               32: PathCost(26.0755, 0.0106, 0.4201), 64: PathCost(23.1845, 0.0592, 0.5000)},
)

_METHODS = {"ours_union": "exact", "ours_predicted_union": "predicted"}


def fit_cost_model(records: list[dict], source: str) -> CostModel:
    """Least-squares coefficients from `actsparse bench-kernels` records (its JSON's "records")."""
    dense_rows, sparse_rows = [], {"exact": {}, "predicted": {}}
    for r in records:
        mb = 3 * r["d_model"] * r["d_ff"] * 2 / 1e6  # fp16 / bf16 bytes (the fit's MB are 2-byte weights)
        if r["method"] == "dense":
            dense_rows.append((mb, 0.0, r["us"]))
        elif r["method"] in _METHODS:
            fraction = r["active_union"] if r["batch"] > 1 else r["active_per_token"]
            sparse_rows[_METHODS[r["method"]]].setdefault(r["batch"], []).append((mb, fraction, r["us"]))
    if not dense_rows or not sparse_rows["exact"]:
        raise ValueError("fit_cost_model: the records need method 'dense' and 'ours_union' rows")

    def fit(rows, with_fraction=True) -> PathCost:
        a = np.array(rows, dtype=np.float64)
        cols = [np.ones(len(a)), a[:, 0]] + ([a[:, 0] * a[:, 1]] if with_fraction else [])
        coef = np.linalg.lstsq(np.stack(cols, axis=1), a[:, 2], rcond=None)[0]
        return PathCost(*(round(float(c), 4) for c in coef))

    shapes = {mb for mb, _, _ in dense_rows}
    if len(shapes) < 2:
        raise ValueError("fit_cost_model: needs at least two shapes to separate fixed and per-MB costs")
    return CostModel(source=source, dense=fit(dense_rows, with_fraction=False),
                     exact={t: fit(rows) for t, rows in sorted(sparse_rows["exact"].items())},
                     predicted={t: fit(rows) for t, rows in sorted(sparse_rows["predicted"].items())})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Fit the dispatcher's cost model to an `actsparse bench-kernels` JSON "
                                            "(several shapes, batches and sparsities in one run) and print it.")
    p.add_argument("bench_json")
    args = p.parse_args(argv)
    with open(args.bench_json) as fh:
        raw = json.load(fh)
    device = raw.get("meta", {}).get("device", "unknown device")
    model = fit_cost_model(raw["records"], source=f"{device}, {args.bench_json}")
    print(json.dumps(model.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
