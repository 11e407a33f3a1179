"""Activation predictors (ProSparse / DejaVu style): collect (x, x1 != 0) pairs, train one low-rank MLP per
layer, score recall / precision / predicted sparsity, and run FFNs on the predicted neurons only."""
from .collect import collect_activations, load_layer, predictor_sites, read_manifest
from .config import PredictorsConfig, load_config
from .low_rank_logits import LowRankLogits
from .gated_mlp import PredictedSparseMLP, attach_predictors, detach_predictors, predicted_mlps, set_rule
from .metrics import PredictionCounts, heldout_perplexity, layer_mean, weighted_bce
from .predictor import (INPUT_LOCATIONS, ActiveRule, LowRankPredictor, PredictorSetConfig, load_predictors,
                        max_rank_within, predictor_fraction_of_ffn, save_predictors)
from .train import TrainSettings, train_layer, train_predictors

__all__ = [
    "collect_activations", "load_layer", "predictor_sites", "read_manifest",
    "PredictorsConfig", "load_config",
    "LowRankLogits",
    "PredictedSparseMLP", "attach_predictors", "detach_predictors", "predicted_mlps", "set_rule",
    "PredictionCounts", "heldout_perplexity", "layer_mean", "weighted_bce",
    "INPUT_LOCATIONS", "ActiveRule", "LowRankPredictor", "PredictorSetConfig", "load_predictors",
    "max_rank_within", "predictor_fraction_of_ffn", "save_predictors",
    "TrainSettings", "train_layer", "train_predictors",
]
