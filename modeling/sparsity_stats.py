"""Per-layer zero-fraction sparsity of `x1`, counted on the device and reducible across ranks.

Sparsity (ProSparse's definition, PAPERS.md (f)): the share of `x1` entries that are exactly 0, averaged
over tokens; overall sparsity is the mean over layers. Counting costs one comparison and one reduction per
layer and never synchronizes with the host until `per_layer()` is read, so it can stay on in training.
Checkpoint recomputes inside backward are not counted twice.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .sparsify import sparse_mlps


class SparsityStats:
    """Attach to a converted model; read `per_layer()` / `overall()`; `reset()` between windows.

        stats = SparsityStats(model)
        model(**batch)
        stats.all_reduce()          # optional, data-parallel
        print(stats.overall(), stats.per_layer())
    """

    def __init__(self, model: nn.Module):
        self.mlps = sparse_mlps(model)
        if not self.mlps:
            raise ValueError("SparsityStats: the model has no converted FFN; call actsparse.modeling.sparsify first")
        self.num_layers = len(self.mlps)
        self._zeros: torch.Tensor | None = None     # [layers] int64, exact zeros in x1
        self._entries: torch.Tensor | None = None   # [layers] int64, entries of x1 seen
        for mlp in self.mlps:
            mlp.zero_counter = self

    def add(self, layer_index: int, x1: torch.Tensor) -> None:
        with torch.no_grad():
            self.add_counts(layer_index, (x1 == 0).sum(), x1.numel())

    def add_counts(self, layer_index: int, zeros: torch.Tensor, entries: int) -> None:
        """Add a zero count already taken on the device (an int scalar tensor) and the entries it covers."""
        if self._zeros is None or self._zeros.device != zeros.device:
            self._allocate(zeros.device)
        # select + add_: one in-place launch each (indexed `+=` would add a copy back).
        self._zeros.select(0, layer_index).add_(zeros)
        self._entries.select(0, layer_index).add_(entries)

    def _allocate(self, device: torch.device) -> None:
        old_z, old_e = self._zeros, self._entries
        self._zeros = torch.zeros(self.num_layers, dtype=torch.int64, device=device)
        self._entries = torch.zeros(self.num_layers, dtype=torch.int64, device=device)
        if old_z is not None:
            self._zeros += old_z.to(device)
            self._entries += old_e.to(device)

    def reset(self) -> None:
        if self._zeros is not None:
            self._zeros.zero_()
            self._entries.zero_()

    def all_reduce(self) -> None:
        """Sum counts over the default process group (no-op when not distributed)."""
        if self._zeros is None or not (dist.is_available() and dist.is_initialized()):
            return
        both = torch.stack([self._zeros, self._entries])
        dist.all_reduce(both)
        self._zeros.copy_(both[0])
        self._entries.copy_(both[1])

    def per_layer(self) -> list[float]:
        """Zero fraction of x1 per layer (nan for a layer that has seen no tokens)."""
        if self._zeros is None:
            return [float("nan")] * self.num_layers
        z, e = self._zeros.double().cpu(), self._entries.double().cpu()
        return (z / e).tolist()

    def overall(self) -> float:
        """Mean over layers of the per-layer zero fraction."""
        values = [v for v in self.per_layer() if v == v]
        return sum(values) / len(values) if values else float("nan")

    def detach(self) -> None:
        """Stop counting."""
        for mlp in self.mlps:
            if mlp.zero_counter is self:
                mlp.zero_counter = None
