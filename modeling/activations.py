"""The gated-FFN activations we support, each as `x1 = combine(gate, up)`.

`x1` is the down-projection input: sparsity, the L1 penalty, CETT and predictor labels are all defined
on it (PAPERS.md (a)). The `silu` entry is not listed here: a `silu` FFN keeps the model's own `act_fn`
module so that its outputs stay bit-identical to the unconverted model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_ACTIVATIONS = ("silu", "relu", "drelu", "relu2", "fatrelu")


class FATReLU(nn.Module):
    """ProSparse threshold shifting: keep `g` where `g >= threshold`, else 0.

    Ties: ProSparse's paper and DejaVu_predictor keep `g >= t` (torch.ge); its CUDA op `ffn_23` and vLLM's
    `FatreluAndMul` keep `g > t`. We follow the paper (`>=`); the two differ only where `g == t` exactly.
    With `threshold == 0` this keeps `g == 0`, which contributes 0 to `x1` either way, so it equals ReLU.
    """

    def __init__(self, threshold: float):
        super().__init__()
        if threshold < 0:
            raise ValueError(f"FATReLU threshold must be >= 0, got {threshold}")
        self.threshold = float(threshold)

    def forward(self, gate: torch.Tensor) -> torch.Tensor:
        return torch.where(gate >= self.threshold, gate, torch.zeros_like(gate))

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


class ReLU2(nn.Module):
    """ReLU squared on the gate ("ReLU² Wins"); the gated form `relu(g)^2 * up` is ours (PAPERS.md (b))."""

    def forward(self, gate: torch.Tensor) -> torch.Tensor:
        r = F.relu(gate)
        return r * r


def gate_activation(activation: str, threshold: float = 0.0) -> nn.Module:
    """The module applied to the gate projection for `activation` (dReLU also applies ReLU to `up`)."""
    if activation in ("relu", "drelu"):
        return nn.ReLU()
    if activation == "relu2":
        return ReLU2()
    if activation == "fatrelu":
        return FATReLU(threshold)
    raise ValueError(
        f"unknown activation {activation!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
    )


def check_activation(activation: str, threshold: float) -> None:
    """One clear error for a bad (activation, threshold) pair, listing what is supported."""
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
        )
    if threshold != 0.0 and activation != "fatrelu":
        raise ValueError(f"threshold={threshold} only applies to 'fatrelu', not {activation!r}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
