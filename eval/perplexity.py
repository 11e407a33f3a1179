"""Perplexity: exp of the token-weighted mean next-token NLL over a set of batches.

Every position t < T-1 whose token and next token are both real predicts token t+1; batches and rows
are weighted by how many such predictions they hold (not averaged per batch). For a thresholded
model, wrap the call: `with apply_thresholds(model, thresholds): perplexity(model, batches)`.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .batching import Batch, as_batch_list, forward_logits, measurement_mode


def next_token_nll(logits: torch.Tensor, batch: Batch) -> tuple[float, int]:
    """(sum of next-token NLL, number of predictions) for one batch; log-softmax in fp32, sum in fp64.

    Rows go one at a time so the fp32 copy of the logits stays at `[T, V]`.
    """
    valid = batch.valid_positions().to(logits.device)
    targets = batch.input_ids.to(logits.device)
    total, count = 0.0, 0
    for row in range(logits.shape[0]):
        predicts = valid[row, :-1] & valid[row, 1:]
        if not bool(predicts.any()):
            continue
        logprobs = F.log_softmax(logits[row, :-1][predicts].float(), dim=-1)
        picked = logprobs.gather(1, targets[row, 1:][predicts].unsqueeze(1))
        total -= float(picked.detach().double().sum())
        count += int(predicts.sum())
    return total, count


def mean_nll(model: nn.Module, batches: Iterable) -> tuple[float, int]:
    """(token-weighted mean next-token NLL, number of predictions) over `batches`."""
    total, count = 0.0, 0
    with measurement_mode(model):
        for batch in as_batch_list(batches):
            nll, n = next_token_nll(forward_logits(model, batch), batch)
            total, count = total + nll, count + n
    if count == 0:
        raise ValueError("perplexity: the batches hold no next-token prediction (every row shorter than 2 tokens)")
    return total / count, count


def perplexity(model: nn.Module, batches: Iterable) -> float:
    """exp(token-weighted mean next-token NLL) of `model` on `batches`."""
    loss, _ = mean_nll(model, batches)
    return math.exp(loss)
