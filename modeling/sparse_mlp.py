"""The converted gated FFN: same projections, new activation, `x1` exposed to the L1 term and counters.

The module reuses the original `gate_proj` / `up_proj` / `down_proj` submodules (so state-dict keys,
tensor-parallel or ZeRO-3 partitioned parameters and hooks on them stay as they were) and replaces only
the activation. The L1 term and the zero count of `x1` come from one read of `x1` (`l1_fused.py`: one
Triton kernel on CUDA); nothing extra is kept alive for them: the L1 term saves `x1`, which `down_proj`
already saves for its own backward, so autograd holds the same storage once.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from .l1_fused import l1_with_zero_count, zero_count

log = logging.getLogger(__name__)

SCALE_FREE = "l1_over_l2"
L1_NORMALIZATIONS = ("mean", "token_mean", "sum", SCALE_FREE)


def _in_backward() -> bool:
    """True while autograd runs a backward pass, e.g. when activation checkpointing recomputes a layer."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


def l1_of(x1: torch.Tensor, normalization: str) -> torch.Tensor:
    """L1 norm of `x1`, normalized as configured, accumulated in fp32 (plain PyTorch, graph-connected).

    - `mean` (default): sum |x1| / number of elements (tokens * d_ff).
    - `token_mean`: sum |x1| / number of tokens (sum over d_ff, mean over tokens).
    - `sum`: sum |x1| (scales with batch and sequence length; only for matching other code).
    - `l1_over_l2` (ours, not ProSparse's): mean over tokens of ||x1_t||_1 / (sqrt(d_ff) ||x1_t||_2), 1 when all
      neurons carry equal magnitude, 1/sqrt(d_ff) for one neuron, 0 for none. Scale-free: multiplying x1 by
      c > 0 leaves it unchanged, so the model cannot satisfy it by shrinking up_proj rows and growing down_proj
      rows, which the absolute L1 allows (docs/RESULTS.md, session 5: -60% |x1| for +3.7 points of zeros).
      Its values are O(0.1-1) per layer, larger than `mean`'s: lambda needs its own scale.
    ProSparse does not state its normalization (PAPERS.md (c)); lambda up to 0.2 suggests a mean.
    `SparseGatedMLP` computes the first three through `l1_fused` (one pass over x1, fused with the zero count).
    """
    # Accumulate half precision in fp32 (without materializing an fp32 copy of x1); keep fp64 as is.
    acc_dtype = torch.float64 if x1.dtype == torch.float64 else torch.float32
    if normalization == SCALE_FREE:
        l1 = torch.linalg.vector_norm(x1, 1, dim=-1, dtype=acc_dtype)
        l2 = torch.linalg.vector_norm(x1, 2, dim=-1, dtype=acc_dtype)
        # A token with x1 = 0 counts 0 (0 / tiny), with zero gradient.
        return (l1 / (l2 * math.sqrt(x1.shape[-1])).clamp_min(torch.finfo(acc_dtype).tiny)).mean()
    return normalize_l1(torch.linalg.vector_norm(x1, 1, dtype=acc_dtype), x1, normalization)


def normalize_l1(abs_sum: torch.Tensor, x1: torch.Tensor, normalization: str) -> torch.Tensor:
    """sum |x1| -> the L1 term for `normalization` (see `l1_of`)."""
    if normalization == "mean":
        return abs_sum / x1.numel()
    if normalization == "token_mean":
        return abs_sum / (x1.numel() // x1.shape[-1])
    if normalization == "sum":
        return abs_sum
    raise ValueError(f"unknown L1 normalization {normalization!r}; supported: {', '.join(L1_NORMALIZATIONS)}")


_said_unfused = False


def _say_scale_free_unfused() -> None:
    global _said_unfused
    if not _said_unfused:
        _said_unfused = True
        log.info("l1.normalization=%s runs in PyTorch (per-token L1 and L2 norms); the fused Triton L1 kernel "
                 "computes sum |x1| only", SCALE_FREE)


class SparseGatedMLP(nn.Module):
    """`down_proj(act(gate_proj(x)) * up_proj(x))` with a sparse activation (`relu(up)` for dReLU).

    Attributes set by the collectors in `l1.py` / `sparsity_stats.py`:
    - `l1_normalization`: when not None, each forward stores `self.l1_term` (a graph-connected scalar).
    - `zero_counter`: when not None, each forward (but not a checkpoint recompute) adds the number of
      exact zeros in `x1` and the number of tokens to it, on the device, without synchronizing.
    """

    def __init__(self, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module, act_fn: nn.Module,
                 activation: str, threshold: float = 0.0, layer_index: int = 0):
        super().__init__()
        self.gate_proj = gate_proj
        self.up_proj = up_proj
        self.down_proj = down_proj
        self.act_fn = act_fn
        self.activation = activation
        self.threshold = float(threshold)
        self.layer_index = layer_index
        self.relu_on_up = activation == "drelu"
        self.l1_normalization: str | None = None
        self.l1_term: torch.Tensor | None = None
        self.zero_counter = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.up_proj(x)
        if self.relu_on_up:
            up = F.relu(up)
        x1 = self.act_fn(self.gate_proj(x)) * up
        # A checkpoint recompute (inside backward) must not count again; its L1 term stays graph-connected.
        count = self.zero_counter is not None and not _in_backward()
        fused = self.l1_normalization not in (None, SCALE_FREE)  # l1_fused computes sum |x1| only
        if self.l1_normalization == SCALE_FREE:
            _say_scale_free_unfused()
            self.l1_term = l1_of(x1, SCALE_FREE)
        if fused:
            x1, abs_sum, zeros = l1_with_zero_count(x1, count_zeros=count)
            self.l1_term = normalize_l1(abs_sum, x1, self.l1_normalization)
        elif count:
            zeros = zero_count(x1)
        if count:
            self.zero_counter.add_counts(self.layer_index, zeros, x1.numel())
        return self.down_proj(x1)

    def extra_repr(self) -> str:
        thr = f", threshold={self.threshold}" if self.activation == "fatrelu" else ""
        return f"activation={self.activation}{thr}, layer_index={self.layer_index}"
