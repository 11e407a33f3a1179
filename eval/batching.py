"""Calibration batches in, model outputs out: the plumbing every metric here shares.

A batch is a LongTensor of input ids `[B, T]` or a dict with `input_ids` (and optionally
`attention_mask`, 1 = real token). Batches are materialized once (`as_batch_list`) because the
CETT-PPL search walks the same data several times.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from actsparse.modeling import sparse_mlps


@dataclass
class Batch:
    input_ids: torch.Tensor                 # [B, T] int64, on CPU until `model_inputs` moves it
    attention_mask: torch.Tensor | None     # [B, T] 0/1, None when every position is a real token

    def valid_positions(self) -> torch.Tensor:
        """[B, T] bool: positions holding a real token."""
        if self.attention_mask is None:
            return torch.ones_like(self.input_ids, dtype=torch.bool)
        return self.attention_mask.bool()

    def has_padding(self) -> bool:
        return self.attention_mask is not None and not bool(self.attention_mask.bool().all())

    def unpadded_rows(self) -> Iterator["Batch"]:
        """Each row with its padding dropped, as a batch of one (so nothing has to be masked)."""
        for ids, valid in zip(self.input_ids, self.valid_positions()):
            yield Batch(ids[valid].unsqueeze(0), None)


def to_batch(batch) -> Batch:
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, torch.Tensor):
        ids, mask = batch, None
    elif isinstance(batch, dict) or hasattr(batch, "keys"):
        ids, mask = batch["input_ids"], batch.get("attention_mask")
    else:
        raise TypeError(f"a batch must be a LongTensor of input ids or a dict with 'input_ids', got {type(batch)}")
    ids = torch.as_tensor(ids)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if mask is not None:
        mask = torch.as_tensor(mask)
        mask = mask.unsqueeze(0) if mask.dim() == 1 else mask
    return Batch(ids.long(), mask)


def as_batch_list(batches: Iterable) -> list[Batch]:
    if isinstance(batches, (torch.Tensor, dict)):
        batches = [batches]
    out = [to_batch(b) for b in batches]
    if not out:
        raise ValueError("no calibration batches given")
    return out


def input_device(model: nn.Module) -> torch.device:
    """Where input ids must live: the embedding's device (also right for accelerate's device maps)."""
    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.device
    return next(model.parameters()).device


def forward_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Logits `[B, T, V]` of one batch (HF models return an output object, plain modules a tensor)."""
    device = input_device(model)
    ids = batch.input_ids.to(device)
    if batch.attention_mask is None:
        out = model(ids) if not _is_hf(model) else model(input_ids=ids, use_cache=False)
    else:
        out = model(input_ids=ids, attention_mask=batch.attention_mask.to(device), use_cache=False)
    return out if isinstance(out, torch.Tensor) else out.logits


def _is_hf(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model, "get_input_embeddings")


@contextlib.contextmanager
def measurement_mode(model: nn.Module):
    """Eval mode, no grad, and the converted FFNs' training-time collectors (L1 term, zero counter) paused.

    Measuring must not leak into a training run's statistics or L1 term when called mid-training; each
    module's own train/eval flag is restored afterwards (not a blanket `model.train()`).
    """
    mlps = sparse_mlps(model)
    saved = [(m.zero_counter, m.l1_normalization, m.l1_term) for m in mlps]
    modes = [(module, module.training) for module in model.modules()]
    for m in mlps:
        m.zero_counter, m.l1_normalization = None, None
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        for m, (counter, norm, term) in zip(mlps, saved):
            m.zero_counter, m.l1_normalization, m.l1_term = counter, norm, term
