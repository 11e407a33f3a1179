"""Score trained predictors: per-layer recall / precision / sparsity on a held-out collection, their size
against the FFN, and the perplexity cost of computing only the predicted neurons."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .collect import load_layer, read_manifest
from .gated_mlp import attach_predictors, detach_predictors, predicted_mlps
from .metrics import PredictionCounts, heldout_perplexity, layer_mean
from .predictor import (ActiveRule, LowRankPredictor, ffn_params, max_rank_within, predictor_fraction_of_ffn,
                        predictor_params)

# ProSparse-7B's published predictor (PAPERS.md (g)): the trade-off to beat, not our measurement.
PROSPARSE_7B_PUBLISHED = {"recall": 0.9234, "predicted_sparsity": 0.7875, "rank": 1024}


@torch.no_grad()
def score_rules_on_collection(predictors: list[LowRankPredictor], data_dir, rules: list[ActiveRule],
                              label: str = "active", batch_size: int = 4096, device: str = "cpu"
                              ) -> list[list[PredictionCounts]]:
    """Per rule, per layer: confusion counts of `rule(predictor(x))` against the collected labels.

    Logits are computed once per batch and shared by all rules (a threshold sweep costs one pass)."""
    manifest = read_manifest(data_dir)
    if manifest["num_layers"] != len(predictors):
        raise ValueError(f"{data_dir}: {manifest['num_layers']} layers collected, {len(predictors)} predictors")
    per_rule = [[] for _ in rules]
    for layer, predictor in enumerate(predictors):
        x, y = load_layer(data_dir, layer, label)
        predictor = predictor.to(device, torch.float32)
        counts = [PredictionCounts() for _ in rules]
        for start in range(0, x.shape[0], batch_size):
            logits = predictor(x[start:start + batch_size].to(device, torch.float32))
            labels = y[start:start + batch_size].to(device)
            for rule, count in zip(rules, counts):
                count.add(rule(logits), labels)
        for rule_counts, count in zip(per_rule, counts):
            rule_counts.append(count)
    return per_rule


def score_on_collection(predictors: list[LowRankPredictor], data_dir, rule: ActiveRule, label: str = "active",
                        batch_size: int = 4096, device: str = "cpu") -> list[PredictionCounts]:
    """Confusion counts per layer of `rule(predictor(x))` against the collected labels."""
    return score_rules_on_collection(predictors, data_dir, [rule], label, batch_size, device)[0]


def size_report(d_model: int, d_ff: int, rank: int, bytes_per_param: int, reference_shape: tuple[int, int],
                budget_fraction: float) -> dict:
    """Predictor bytes vs FFN bytes (same dtype) for this model and at a reference shape (LLaMA-2-7B)."""
    ref_d, ref_ff = reference_shape
    return {
        "bytes_per_param": bytes_per_param,
        "predictor_bytes_per_layer": predictor_params(d_model, d_ff, rank) * bytes_per_param,
        "ffn_bytes_per_layer": ffn_params(d_model, d_ff) * bytes_per_param,
        "fraction": predictor_fraction_of_ffn(d_model, d_ff, rank),
        "reference_shape": [ref_d, ref_ff],
        "reference_predictor_params": predictor_params(ref_d, ref_ff, rank),
        "reference_ffn_params": ffn_params(ref_d, ref_ff),
        "reference_fraction": predictor_fraction_of_ffn(ref_d, ref_ff, rank),
        "budget_fraction": budget_fraction,
        "reference_max_rank_in_budget": max_rank_within(ref_d, ref_ff, budget_fraction),
        "within_budget": predictor_fraction_of_ffn(ref_d, ref_ff, rank) <= budget_fraction,
    }


def perplexity_impact(model: nn.Module, predictors: list[LowRankPredictor], input_location: str, rule: ActiveRule,
                      make_batches: Callable[[], Iterable]) -> dict:
    """Held-out perplexity exact vs with x1 masked by the prediction, and the in-model prediction counts.

    The in-model counts compare each layer's prediction with the true x1 != 0 of the same forward, in the
    masked model (so later layers see the drift of earlier masks, as at inference)."""
    detach_predictors(model)
    exact = heldout_perplexity(model, make_batches())
    attach_predictors(model, predictors, input_location, rule)
    mlps = predicted_mlps(model)
    for mlp in mlps:
        mlp.prediction_counts = PredictionCounts()
    try:
        predicted = heldout_perplexity(model, make_batches())
        in_model = [mlp.prediction_counts for mlp in mlps]
    finally:
        detach_predictors(model)
    return {"exact": exact, "predicted": predicted, "ratio": predicted / exact,
            "in_model_overall": layer_mean(in_model), "in_model_layers": [c.summary() for c in in_model]}
