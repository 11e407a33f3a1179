"""Zero-fraction sparsity of `x1` (ProSparse's definition, PAPERS.md (f)) on a set of batches.

Per layer: the share of `x1` entries that are exactly 0 over all real tokens; overall: the mean over
layers. Counting is `SparsityStats`. A model that was never converted is measured through a
`silu` conversion of a shallow copy that shares every parameter and buffer with it (bit-identical
outputs), so the caller's model is left as it was.
"""
from __future__ import annotations

import copy
from typing import Iterable

from torch import nn

from actsparse.modeling import SparsityStats, sparse_mlps, sparsify

from .batching import as_batch_list, forward_logits, measurement_mode


def converted_view(model: nn.Module) -> nn.Module:
    """`model` itself when its FFNs are converted; else a `silu`-converted copy sharing its tensors."""
    if sparse_mlps(model):
        return model
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    view = copy.deepcopy(model, memo=shared)
    return sparsify(view, "silu")


def zero_fraction_sparsity(model: nn.Module, batches: Iterable) -> dict:
    """Exact-zero share of `x1` per layer and its mean over layers.

    Returns {"sparsity" (mean over layers), "sparsity_per_layer", "activation_ratio" (1 - sparsity),
    "tokens" (real tokens seen)}. Padded rows are split into their real tokens first, so padding is
    never counted.
    """
    view = converted_view(model)
    tokens = 0
    with measurement_mode(view):
        stats = SparsityStats(view)
        try:
            for batch in as_batch_list(batches):
                rows = batch.unpadded_rows() if batch.has_padding() else [batch]
                for row in rows:
                    forward_logits(view, row)
                    tokens += row.input_ids.numel()
        finally:
            stats.detach()
    per_layer = stats.per_layer()
    overall = stats.overall()
    return {"sparsity": overall, "sparsity_per_layer": per_layer, "activation_ratio": 1.0 - overall,
            "tokens": tokens}
