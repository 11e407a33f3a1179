"""Predictor quality counts and the held-out perplexity used to judge a prediction's cost.

Definitions (ProSparse / DejaVu_predictor, PAPERS.md (g)), with y = (x1 != 0) and p the predicted active set:
- recall = |p & y| / |y|            (share of truly active neurons the predictor keeps)
- precision = |p & y| / |p|
- predicted sparsity = |~p| / all   (share of neurons the predictor lets us skip)
- true sparsity = |~y| / all
Counts are summed over tokens within a layer (micro average); the overall figure is the mean over layers,
as ProSparse reports it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn


@dataclass
class PredictionCounts:
    """Confusion counts of predicted vs true active neurons (entries = tokens * d_ff)."""
    true_pos: int = 0
    false_pos: int = 0
    false_neg: int = 0
    entries: int = 0

    def add(self, predicted: torch.Tensor, actual: torch.Tensor) -> "PredictionCounts":
        predicted, actual = predicted.bool(), actual.bool()
        self.true_pos += int((predicted & actual).sum())
        self.false_pos += int((predicted & ~actual).sum())
        self.false_neg += int((~predicted & actual).sum())
        self.entries += actual.numel()
        return self

    def __iadd__(self, other: "PredictionCounts") -> "PredictionCounts":
        self.true_pos += other.true_pos
        self.false_pos += other.false_pos
        self.false_neg += other.false_neg
        self.entries += other.entries
        return self

    @property
    def recall(self) -> float:
        actual = self.true_pos + self.false_neg
        return self.true_pos / actual if actual else float("nan")

    @property
    def precision(self) -> float:
        predicted = self.true_pos + self.false_pos
        return self.true_pos / predicted if predicted else float("nan")

    @property
    def predicted_sparsity(self) -> float:
        return 1.0 - (self.true_pos + self.false_pos) / self.entries if self.entries else float("nan")

    @property
    def true_sparsity(self) -> float:
        return 1.0 - (self.true_pos + self.false_neg) / self.entries if self.entries else float("nan")

    def summary(self) -> dict:
        return {"recall": self.recall, "precision": self.precision, "predicted_sparsity": self.predicted_sparsity,
                "true_sparsity": self.true_sparsity, **asdict(self)}


def layer_mean(per_layer: list[PredictionCounts]) -> dict:
    """Mean over layers of each rate (ProSparse's "layer mean"), skipping layers where a rate is undefined."""
    keys = ("recall", "precision", "predicted_sparsity", "true_sparsity")
    out = {}
    for key in keys:
        values = [getattr(c, key) for c in per_layer if not math.isnan(getattr(c, key))]
        out[key] = sum(values) / len(values) if values else float("nan")
    return out


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ProSparse / DejaVu weighted BCE: w = mean(y) + 0.005, weight = y (1 - w) + w.

    Inactive entries weigh w (about the active share), active ones 1: misses cost more than false alarms.
    Same value as `binary_cross_entropy(sigmoid(logits), y, weight)`, computed from logits for stability.
    """
    y = labels.to(logits.dtype)
    w = y.mean() + 0.005
    weight = y * (1 - w) + w
    return nn.functional.binary_cross_entropy_with_logits(logits, y, weight=weight)


def _as_ids(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    return batch["input_ids"], batch.get("attention_mask")


@torch.no_grad()
def heldout_perplexity(model: nn.Module, batches: Iterable) -> float:
    """exp(mean next-token NLL) over all predicted tokens of `batches` (token-weighted, padding excluded).

    Kept here because `actsparse.modeling` may not import `actsparse.eval`; it is the plain definition.
    """
    device = next(model.parameters()).device
    nll_sum, count = 0.0, 0
    for batch in batches:
        ids, mask = _as_ids(batch)
        ids = ids.to(device)
        out = model(ids) if mask is None else model(input_ids=ids, attention_mask=mask.to(device))
        logits = (out.logits if hasattr(out, "logits") else out)[:, :-1].float()
        targets = ids[:, 1:]
        nll = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                          reduction="none")
        if mask is None:
            keep = torch.ones_like(nll, dtype=torch.bool)
        else:   # a prediction counts when both the token and the next one are real
            real = mask.bool().to(device)
            keep = (real[:, :-1] & real[:, 1:]).reshape(-1)
        nll_sum += float(nll[keep].double().sum())
        count += int(keep.sum())
    if count == 0:
        raise ValueError("heldout_perplexity: no tokens to score")
    return math.exp(nll_sum / count)
