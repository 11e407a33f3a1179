"""CETT-PPL-p% sparsity (Sparsing Law, Algorithm 1): one CETT value shared by all layers, searched so the
thresholded model's perplexity stays just under (1 + p) times the dense one.

Cost: ONE dense pass captures `x1` (bounded sample, see activation_capture.py) and the dense loss;
each layer's CETT is then known on the whole candidate grid (cett.py), so a candidate c's thresholds
come from the cache without a forward pass. Bisection of c in [0, 1] stops at r - l <= 1/1024: 10
thresholded passes. A pass is skipped when c gives the same thresholds as one already run, and when
all thresholds are 0 (nothing dropped: the dense loss is exact). At most one more pass checks an end
of the interval that the bisection never ran (c = 0 when every midpoint failed; c = 1 when every
midpoint passed), so the total is <= 12 passes over the calibration set.

Loss is the token-weighted mean next-token NLL over all calibration batches (the paper averages the
losses of its first 10 validation batches); ratio = exp(L_sparse - L_dense). Thresholds come from the
pooled captured tokens of all batches (the paper averages per-batch thresholds).
"""
from __future__ import annotations

import math
from typing import Iterable

from torch import nn

from .activation_capture import DEFAULT_MAX_TOKENS, CapturedActivations, capture_x1
from .batching import as_batch_list, input_device, measurement_mode
from .cett import LayerCETT, cett_profile, thresholds_for
from .perplexity import mean_nll
from .thresholding import apply_thresholds

DEFAULT_RESOLUTION = 1 / 1024


class ThresholdedLossCache:
    """Loss and measured sparsity per distinct threshold vector; counts the forward passes it runs."""

    def __init__(self, model: nn.Module, batches: list, captured: CapturedActivations, profile: list[LayerCETT]):
        self.model, self.batches, self.profile = model, batches, profile
        self.dense_loss = captured.dense_loss
        self.forward_passes = 1                     # the capture pass
        zero = (0.0,) * captured.num_layers
        self.results = {zero: (captured.dense_loss, list(captured.zero_fraction))}

    def evaluate(self, cett: float) -> tuple[list[float], float, list[float]]:
        """(thresholds, loss, per-layer sparsity measured in the thresholded pass) for CETT value c."""
        thresholds = thresholds_for(self.profile, cett)
        key = tuple(thresholds)
        if key not in self.results:
            with apply_thresholds(self.model, thresholds) as thresholded:
                loss, _ = mean_nll(self.model, self.batches)
                self.results[key] = (loss, thresholded.per_layer_sparsity())
            self.forward_passes += 1
        loss, sparsity = self.results[key]
        return thresholds, loss, sparsity

    def ratio(self, cett: float) -> float:
        return math.exp(self.evaluate(cett)[1] - self.dense_loss)


def ppl_p_sparsity(model: nn.Module, batches: Iterable, p: float = 0.01,
                   resolution: float = DEFAULT_RESOLUTION, max_tokens: int = DEFAULT_MAX_TOKENS,
                   seed: int = 0) -> dict:
    """Bisect one CETT value c in [0, 1] so that exp(L_sparse - L_dense) < 1 + p, as large as possible.

    Returns a dict:
      cett, thresholds (per layer, neuron-score scale, = cett_thresholds(model, batches, cett)),
      ppl_ratio (at cett; < 1 + p), sparsity (mean over layers) and sparsity_per_layer (share of x1
      entries at 0 in the thresholded pass over the calibration set), loss_dense, loss_sparse,
      ppl_dense, ppl_sparse, cett_upper (= cett + resolution, or 1.0) and ppl_ratio_upper (its ratio,
      >= 1 + p unless cett reached 1), p, resolution, forward_passes, tokens (next-token predictions),
      captured_tokens (x1 rows per layer used for the thresholds).
    """
    batches = as_batch_list(batches)
    with measurement_mode(model):
        captured = capture_x1(model, batches, max_tokens=max_tokens, seed=seed)
    cache = ThresholdedLossCache(model, batches, captured, cett_profile(captured, input_device(model)))
    limit = 1.0 + p
    low, high = 0.0, 1.0
    high_ratio = None
    while high - low > resolution:
        mid = (low + high) / 2
        ratio = cache.ratio(mid)
        if ratio < limit:
            low = mid
        else:
            high, high_ratio = mid, ratio
    if high_ratio is None:                       # c = 1 never ran: it may pass too
        high_ratio = cache.ratio(high)
        if high_ratio < limit:
            low = high
    thresholds, loss, sparsity = cache.evaluate(low)
    return {
        "cett": low, "thresholds": thresholds, "ppl_ratio": math.exp(loss - cache.dense_loss),
        "sparsity": sum(sparsity) / len(sparsity), "sparsity_per_layer": sparsity,
        "loss_dense": cache.dense_loss, "loss_sparse": loss,
        "ppl_dense": math.exp(cache.dense_loss), "ppl_sparse": math.exp(loss),
        "cett_upper": high, "ppl_ratio_upper": high_ratio, "p": p, "resolution": resolution,
        "forward_passes": cache.forward_passes, "tokens": captured.nll_tokens,
        "captured_tokens": int(captured.x1[0].shape[0]),
    }
