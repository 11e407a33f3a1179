"""Predictor training: weighted BCE as written out, loss falls on a learnable task, early stop, best kept."""
import math

import pytest
import torch

from actsparse.modeling.predictors import ActiveRule, PredictionCounts, TrainSettings, train_layer, weighted_bce
from actsparse.modeling.predictors.train import split_indices, validate


def synthetic_task(n=2048, d_model=16, d_ff=24, seed=0):
    """Neuron j is active iff w_j . x > 0.5: a known, learnable function of the input (~30% active)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_model, generator=g)
    w = torch.randn(d_ff, d_model, generator=g) / math.sqrt(d_model)
    return x, (x @ w.T) > 0.5


def test_weighted_bce_matches_formula():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 9, generator=g, dtype=torch.float64)
    y = torch.rand(6, 9, generator=g) < 0.3
    yf = y.double()
    p = torch.sigmoid(logits)
    w = yf.mean() + 0.005
    weight = yf * (1 - w) + w
    expected = -(weight * (yf * torch.log(p) + (1 - yf) * torch.log(1 - p))).mean()
    torch.testing.assert_close(weighted_bce(logits, y), expected)


def test_training_reduces_weighted_bce_and_learns_the_mask():
    x, y = synthetic_task()
    settings = TrainSettings(rank=32, lr=1e-2, batch_size=256, max_epochs=6, patience=6, target_recall=1.01)
    predictor, result = train_layer(x, y, settings)
    history = result.history
    assert len(history) == 7 and math.isnan(history[0].train_loss)
    assert history[-1].train_loss < 0.5 * history[1].train_loss
    assert history[-1].val_loss < history[0].val_loss
    assert result.best.recall > 0.9 and result.best.recall >= max(r.recall for r in history)
    # the returned weights are the best epoch's: re-validating gives its recall
    _, val_idx = split_indices(x.shape[0], settings.val_fraction, settings.seed)
    _, counts = validate(predictor, x[val_idx], y[val_idx], 512, "cpu")
    assert counts.recall == pytest.approx(result.best.recall)


def test_early_stop_on_target_recall():
    x, y = synthetic_task(n=512)
    settings = TrainSettings(rank=8, batch_size=128, max_epochs=20, target_recall=0.0)
    _, result = train_layer(x, y, settings)
    assert len(result.history) == 2           # epoch 0 (untrained) + one epoch, then recall > target


def test_early_stop_after_patience_without_gain():
    x, y = synthetic_task(n=512)
    settings = TrainSettings(rank=8, lr=0.0, batch_size=128, max_epochs=20, patience=3, target_recall=1.01)
    _, result = train_layer(x, y, settings)   # lr 0: recall never changes, so 3 stale epochs end it
    assert len(result.history) == 4 and result.best_epoch == 0


def test_validate_counts_match_rule():
    x, y = synthetic_task(n=300)
    from actsparse.modeling.predictors import LowRankPredictor
    predictor = LowRankPredictor(16, 24, 4)
    _, counts = validate(predictor, x, y, 64, "cpu")
    with torch.no_grad():
        expected = PredictionCounts().add(torch.sigmoid(predictor(x)) >= 0.5, y)
    assert counts == expected and ActiveRule().describe() == "sigmoid>=0.5"
