"""A stand-in predictor for timing the predictor decode path (bench_decode): same bytes, realistic sets.

A trained predictor (modeling/predictors) approximates the sign of the gate pre-activation with a rank-r
product. Here that product is the rank-r truncated SVD of the layer's own gate weight, plus its gate bias
(which carries each neuron's firing frequency, so predicted sets have the same heavy tail and the same union
over a batch as the true ones), minus one margin per layer chosen so that `predicted_active` of the neurons
are predicted on sample inputs. Its cost per token is a trained predictor's: two GEMVs of r x (d_model + d_ff)
weights and one comparison. Its recall is whatever the SVD gives on random weights (reported, not tuned):
the timing, not the quality, is what it stands in for.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from actsparse.modeling.predictors.low_rank_logits import LowRankLogits


class GateSVDPredictor(nn.Module):
    """x [tokens, d_model] -> bool [tokens, d_ff]: (x V_r S_r) U_r^T + bias >= margin."""

    def __init__(self, w_gate: torch.Tensor, b_gate: torch.Tensor | None, rank: int):
        super().__init__()
        u, s, v = torch.svd_lowrank(w_gate.float(), q=rank, niter=2)   # w ~ u diag(s) v^T
        dtype = w_gate.dtype
        pad = -rank % 8   # zero components up to a multiple of 8: 16-byte rows of `up` for the list kernel
        down, up = F.pad((v * s).t(), (0, 0, 0, pad)), F.pad(u, (0, pad))
        self.down = nn.Parameter(down.contiguous().to(dtype), requires_grad=False)   # [r + pad, d_model]
        self.up = nn.Parameter(up.contiguous().to(dtype), requires_grad=False)       # [d_ff, r + pad]
        bias = torch.zeros(w_gate.shape[0], device=w_gate.device) if b_gate is None else b_gate.float()
        self.register_buffer("bias", bias.to(dtype))
        self.rank = rank

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.low_rank_logits().logits(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.low_rank_logits().mask(x)

    def low_rank_logits(self) -> LowRankLogits:
        """This predictor as data the sparse kernels compute themselves at one token (SparseDecodingMLP)."""
        return LowRankLogits(self.down, self.up, self.bias, False, 0.0)

    @torch.no_grad()
    def set_margin(self, x: torch.Tensor, predicted_active: float) -> None:
        """Shift the bias so that a fraction `predicted_active` of (token, neuron) pairs is predicted on x."""
        logits = self.logits(x).float().flatten()
        k = max(1, int(round((1.0 - predicted_active) * logits.numel())))
        margin = logits.kthvalue(k).values
        self.bias -= margin.to(self.bias.dtype)


def predictor_bytes_fraction(rank: int, d_model: int, d_ff: int) -> float:
    """Predictor weights over the FFN's three matrices (same dtype)."""
    return rank * (d_model + d_ff) / (3 * d_model * d_ff)
