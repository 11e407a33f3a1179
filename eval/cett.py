"""CETT thresholds ("ReLU² Wins"; thunlp/SparsingLaw `calc_thresholds_given_cett`), per layer, a = x1.

Neuron score `n_ij = |a_ij| * ||W_down[:, j]||_2`. For a threshold t,
    CETT(t) = mean_i ||sum_{j: n_ij <= t} a_ij W_down[:, j]||_2 / ||W_down a_i||_2
is the relative size of what the neurons at or below t add to token i's FFN output. A layer's
threshold for target c is the largest candidate t with CETT(t) <= c.

Candidates are the reference's grid: `linspace(min n, q, 65536)` with q the 0.99-quantile of every
`max(numel // 65536, 1)`-th score (the top 1% would only widen the grid's spacing). Where the reference
binary-searches the grid (assuming CETT(t) rises with t), we evaluate CETT exactly at *every*
candidate at the cost of about one matmul per layer: per token, sort the neurons by score, take the
running sum of their output vectors and its norm, and scatter each increment of that norm into the
first candidate >= its score; a cumulative sum over candidates then gives CETT on the whole grid. So
"largest candidate with CETT <= c" is exact even where CETT(t) is not monotone (on a monotone curve it
is what the binary search returns), and one curve per layer answers any target c without new work.

Deviations from the reference, all at the edges: tokens whose dense FFN output is exactly zero (0/0)
are left out of the mean; when no candidate meets the target the threshold is 0.0 (nothing dropped);
when every candidate does, the last candidate q is returned (the reference returns the one before it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from .activation_capture import DEFAULT_MAX_TOKENS, CapturedActivations, capture_x1
from .batching import as_batch_list, input_device, measurement_mode, to_batch
from .thresholding import neuron_cutoffs

NUM_CANDIDATES = 65536
CANDIDATE_QUANTILE = 0.99
IN_LOOP_MAX_TOKENS = 1024    # tokens per layer for the in-training metric: cheap, still ~1.5M scores per layer
CHUNK_ELEMENTS = 1 << 25     # fp64 elements per token chunk of running sums (256 MiB)


def threshold_candidates(scores: torch.Tensor, num: int = NUM_CANDIDATES) -> torch.Tensor:
    """The reference grid `linspace(min n, 0.99-quantile of subsampled n, num)`, fp64."""
    flat = scores.reshape(-1)
    subsample = flat[:: max(flat.numel() // num, 1)]
    top = torch.quantile(subsample, CANDIDATE_QUANTILE)
    return torch.linspace(float(flat.min()), float(top), num, dtype=torch.float64, device=scores.device)


@dataclass
class LayerCETT:
    """CETT of one layer at every candidate threshold."""
    candidates: torch.Tensor     # [K] fp64, ascending
    cett: torch.Tensor           # [K] fp64, CETT(candidates[k])
    column_norms: torch.Tensor   # [d_ff] fp64, ||W_down[:, j]||

    def threshold_for(self, target: float) -> float:
        """Largest candidate t with CETT(t) <= target (0.0 when none)."""
        # The suffix minimum is non-decreasing and is <= target exactly up to that candidate.
        suffix_min = self.cett.flip(0).cummin(0).values.flip(0)
        index = int(torch.searchsorted(suffix_min, torch.tensor([float(target)], dtype=torch.float64),
                                       right=True)) - 1
        return float(self.candidates[index]) if index >= 0 else 0.0


def layer_cett(x1: torch.Tensor, down_weight: torch.Tensor, device: torch.device | str = "cpu",
               num_candidates: int = NUM_CANDIDATES) -> LayerCETT:
    """CETT on the whole candidate grid for captured `x1` `[m, d_ff]` and `W_down` `[d_model, d_ff]`."""
    weight = down_weight.to(device, torch.float64)
    norms = torch.linalg.vector_norm(weight, dim=0)
    a = x1.to(device, torch.float64)
    scores = a.abs() * norms
    candidates = threshold_candidates(scores, num_candidates)
    out_norm = torch.linalg.vector_norm(a @ weight.T, dim=1)
    keep = out_norm > 0                                  # 0/0 tokens are left out
    a, scores, out_norm = a[keep], scores[keep], out_norm[keep]
    sorted_scores, order = scores.sort(dim=1)
    # Only neurons with 0 < n <= last candidate move the curve: zero scores add nothing (they sort
    # first) and scores past the grid sort last. Grouping tokens by their zero count keeps each
    # chunk's window of sorted positions narrow (10x less work at 90% ReLU sparsity).
    zeros = (sorted_scores == 0).sum(1)
    in_grid = (sorted_scores <= candidates[-1]).sum(1)
    by_zeros = zeros.argsort()
    # increments[k]: sum over tokens of the CETT increase that takes effect at candidate k.
    increments = torch.zeros(num_candidates + 1, dtype=torch.float64, device=device)
    chunk = max(1, CHUNK_ELEMENTS // (a.shape[1] * weight.shape[0]))
    for start in range(0, a.shape[0], chunk):
        rows = by_zeros[start:start + chunk]
        lo, hi = int(zeros[rows].min()), int(in_grid[rows].max())
        if hi > lo:
            _add_increments(increments, a[rows], sorted_scores[rows, lo:hi], order[rows, lo:hi],
                            out_norm[rows], weight, candidates)
    curve = increments[:num_candidates].cumsum(0) / max(int(keep.sum()), 1)
    return LayerCETT(candidates.cpu(), curve.cpu(), norms.cpu())


def _add_increments(increments, a, sorted_scores, order, out_norm, weight, candidates) -> None:
    """Scatter each token's CETT increments, neuron by neuron in score order, onto the grid.

    `order` is a window of each token's score-sorted neurons; every neuron before it contributes 0.
    """
    contributions = a.gather(1, order).unsqueeze(-1) * weight.T[order]      # [c, window, d_model]
    running = torch.linalg.vector_norm(contributions.cumsum(dim=1), dim=-1)  # [c, window]
    steps = torch.diff(running, dim=1, prepend=torch.zeros_like(running[:, :1])) / out_norm[:, None]
    # A neuron counts from the first candidate t >= its score (n <= t); past the grid it never does.
    first = torch.searchsorted(candidates, sorted_scores.contiguous(), right=False)
    increments.scatter_add_(0, first.reshape(-1), steps.reshape(-1))


def cett_profile(captured: CapturedActivations, device: torch.device | str = "cpu") -> list[LayerCETT]:
    return [layer_cett(x1, w, device) for x1, w in zip(captured.x1, captured.down_weights)]


def thresholds_for(profile: list[LayerCETT], target: float) -> list[float]:
    return [layer.threshold_for(target) for layer in profile]


def sparsity_at_thresholds(captured: CapturedActivations, profile: list[LayerCETT],
                           thresholds: list[float]) -> list[float]:
    """Per layer, the share of captured `x1` entries that thresholding leaves at 0 (dropped or already 0).

    Uses the same rule and rounding as `apply_thresholds` (`|a_j| < t / ||W_down[:, j]||`).
    """
    shares = []
    for x1, layer, t in zip(captured.x1, profile, thresholds):
        dtype = torch.float64 if x1.dtype == torch.float64 else torch.float32
        cutoffs = neuron_cutoffs(t, layer.column_norms, dtype)
        zero = (x1.to(dtype).abs() <= cutoffs) | (x1 == 0)
        shares.append(float(zero.double().mean()) if zero.numel() else float("nan"))
    return shares


def _capture(model: nn.Module, batches, max_tokens: int, seed: int) -> CapturedActivations:
    with measurement_mode(model):
        return capture_x1(model, as_batch_list(batches), max_tokens=max_tokens, seed=seed)


def cett_thresholds(model: nn.Module, batches: Iterable, cett: float = 0.2,
                    max_tokens: int = DEFAULT_MAX_TOKENS, seed: int = 0) -> list[float]:
    """One threshold per gated FFN, on the neuron-score scale, for CETT target `cett` on `batches`."""
    captured = _capture(model, batches, max_tokens, seed)
    return thresholds_for(cett_profile(captured, input_device(model)), cett)


def cett_sparsity(model: nn.Module, batches: Iterable, cett: float = 0.2,
                  max_tokens: int = DEFAULT_MAX_TOKENS, seed: int = 0) -> dict:
    """CETT thresholds and the sparsity they give on the captured calibration tokens.

    Returns {"cett", "thresholds", "sparsity" (mean over layers), "sparsity_per_layer", "tokens"}.
    """
    captured = _capture(model, batches, max_tokens, seed)
    profile = cett_profile(captured, input_device(model))
    thresholds = thresholds_for(profile, cett)
    per_layer = sparsity_at_thresholds(captured, profile, thresholds)
    return {"cett": float(cett), "thresholds": thresholds, "sparsity": sum(per_layer) / len(per_layer),
            "sparsity_per_layer": per_layer, "tokens": int(captured.x1[0].shape[0])}


def cett_sparsity_on_batch(model: nn.Module, batch, cett: float = 0.2,
                           max_tokens: int = IN_LOOP_MAX_TOKENS) -> float:
    """Overall CETT sparsity on one held-out batch: for logging every K training steps.

    One no-grad eval-mode forward (training collectors paused) and one CETT curve per layer over at
    most `max_tokens` sampled tokens. The curve costs a few passes over `max_tokens * d_ff * d_model`
    fp64 elements per layer, memory-bound: run it where the model is (on the GPU); on 2 busy CPU
    cores one 1536 x 576 layer took 8.6 s for 512 tokens. The model's train/eval flags and its L1 /
    zero-count state are left as they were.
    """
    return cett_sparsity(model, [to_batch(batch)], cett, max_tokens=max_tokens)["sparsity"]
