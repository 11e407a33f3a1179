"""Inference-time CETT thresholds: zero neuron j of layer l where `|x1_j| < t_l / ||W_down[:, j]||_2`.

`t_l` is on the neuron-score scale (`n_j = |x1_j| * ||W_down[:, j]||`, the scale `cett_thresholds`
returns), so the rule is "drop neurons whose output contribution is smaller than t_l" (SparsingLaw's
`set_thresholds`). It is applied by a forward pre-hook on each FFN's `down_proj` (whose input is `x1`
in converted and unconverted gated FFNs alike): no forward is patched, and removing the hooks
restores the model exactly. The hooks also count the zeros of the thresholded `x1`, the sparsity the
model actually runs at (every position the FFN sees, padded ones included: pass unpadded batches for
an exact figure). `SparsityStats` counts `x1` before these hooks, i.e. without the thresholds.

The comparison is exact for fp32/bf16/fp16 activations: the fp64 cutoff is rounded down to the largest
fp32 value strictly below it, so `|a| <= cutoff32` holds exactly when `|a| < t / ||W||` in fp64.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from .activation_capture import down_column_norms, gated_ffns


def neuron_cutoffs(threshold: float, column_norms: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-neuron cutoffs c_j with `|a_j| <= c_j`  <=>  `|a_j| < threshold / ||W_down[:, j]||` (fp64)."""
    exact = float(threshold) / column_norms.double()
    if dtype == torch.float64:
        return torch.nextafter(exact, torch.full_like(exact, -float("inf")))
    below = exact.float()
    too_big = below.double() >= exact
    return torch.where(too_big, torch.nextafter(below, torch.full_like(below, -float("inf"))), below)


class ThresholdedFFNs:
    """The hooks `apply_thresholds` installs, with per-layer counts of zeros in the thresholded `x1`."""

    def __init__(self, model: nn.Module, thresholds: Sequence[float]):
        self.ffns = gated_ffns(model)
        if len(thresholds) != len(self.ffns):
            raise ValueError(f"apply_thresholds: got {len(thresholds)} thresholds for {len(self.ffns)} gated FFNs")
        self.thresholds = [float(t) for t in thresholds]
        if any(t < 0 or t != t for t in self.thresholds):
            raise ValueError(f"apply_thresholds: thresholds must be >= 0, got {self.thresholds}")
        self.zeros = [0] * len(self.ffns)     # per layer: device int64 tensors once something ran
        self.entries = [0] * len(self.ffns)
        self.handles = [ffn.down_proj.register_forward_pre_hook(self._hook(i, ffn))
                        for i, ffn in enumerate(self.ffns)]

    def _hook(self, layer: int, ffn: nn.Module):
        norms = down_column_norms(ffn)
        threshold = self.thresholds[layer]
        cache: dict = {}

        def hook(module, args):
            x1 = args[0]
            cmp_dtype = torch.float64 if x1.dtype == torch.float64 else torch.float32
            key = (x1.device, cmp_dtype)
            if key not in cache:
                cache[key] = neuron_cutoffs(threshold, norms, cmp_dtype).to(x1.device)
            drop = x1.to(cmp_dtype).abs() <= cache[key]
            x1 = x1.masked_fill(drop, 0)
            with torch.no_grad():
                self.zeros[layer] = self.zeros[layer] + (x1 == 0).sum()
                self.entries[layer] += x1.numel()
            return (x1, *args[1:])
        return hook

    def per_layer_sparsity(self) -> list[float]:
        """Share of thresholded `x1` entries that are 0 (dropped, or exactly 0 already), per layer."""
        return [float(z) / e if e else float("nan") for z, e in zip(self.zeros, self.entries)]

    def overall_sparsity(self) -> float:
        values = [v for v in self.per_layer_sparsity() if v == v]
        return sum(values) / len(values) if values else float("nan")

    def reset_counts(self) -> None:
        self.zeros = [0] * len(self.ffns)
        self.entries = [0] * len(self.ffns)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


@contextlib.contextmanager
def apply_thresholds(model: nn.Module, thresholds: Sequence[float]):
    """Zero neuron j of layer l where `|x1_j| < thresholds[l] / ||W_down[:, j]||_2` inside the block.

        with apply_thresholds(model, cett_thresholds(model, batches, 0.2)) as thresholded:
            ppl = perplexity(model, batches)
            sparsity = thresholded.overall_sparsity()
    """
    thresholded = ThresholdedFFNs(model, thresholds)
    try:
        yield thresholded
    finally:
        thresholded.remove()
