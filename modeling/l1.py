"""ProSparse's L1 regularization: `lambda * sum over layers of L1(x1)` on the down-projection input.

Usage in a training step:

    enable_l1(model, normalization="mean")     # once
    out = model(**batch)                       # each converted FFN stores its l1_term
    reg = l1_penalty(model)                    # sum over layers (graph-connected)
    loss = out.loss + l1_lambda * reg

Activation checkpointing must be non-reentrant (the transformers 5 default): a reentrant checkpoint
runs the first forward without grad, so the penalty would silently get no gradient; `l1_penalty`
raises instead.
"""
from __future__ import annotations

import torch
from torch import nn

from .sparse_mlp import L1_NORMALIZATIONS
from .sparsify import sparse_mlps


def enable_l1(model: nn.Module, normalization: str = "mean") -> None:
    """Make every converted FFN of `model` compute its L1 term on each forward."""
    if normalization not in L1_NORMALIZATIONS:
        raise ValueError(f"unknown L1 normalization {normalization!r}; supported: {', '.join(L1_NORMALIZATIONS)}")
    mlps = sparse_mlps(model)
    if not mlps:
        raise ValueError("enable_l1: the model has no converted FFN; call actsparse.modeling.sparsify first")
    for mlp in mlps:
        mlp.l1_normalization = normalization
        mlp.l1_term = None


def disable_l1(model: nn.Module) -> None:
    for mlp in sparse_mlps(model):
        mlp.l1_normalization = None
        mlp.l1_term = None


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum over layers of the L1 terms stored by the last forward (then cleared)."""
    terms = []
    for mlp in sparse_mlps(model):
        if mlp.l1_term is None:
            raise RuntimeError(
                f"layer {mlp.layer_index} has no L1 term: call enable_l1(model) and run a forward first"
            )
        terms.append(mlp.l1_term)
        mlp.l1_term = None
    total = torch.stack([t.to(terms[0].device) for t in terms]).sum()
    if model.training and torch.is_grad_enabled() and not total.requires_grad:
        if any(p.requires_grad for p in model.parameters()):
            raise RuntimeError(
                "the L1 penalty has no gradient: reentrant activation checkpointing hides it; use "
                "model.activation_checkpointing_enable({'use_reentrant': False})"
            )
    return total
