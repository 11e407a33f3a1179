"""Recall / precision / sparsity against brute-force counts; active-set rules; size budget arithmetic."""
import math

import pytest
import torch

from actsparse.modeling.predictors import (ActiveRule, LowRankPredictor, PredictionCounts, collect_activations,
                                           layer_mean, max_rank_within, predictor_fraction_of_ffn)
from actsparse.modeling.predictors.evaluate import score_on_collection, size_report
from actsparse.modeling import sparsify
from tiny_models import random_ids, tiny_llama


def brute_force(predicted, actual):
    """Entry-by-entry loop: (recall, precision, predicted sparsity, true sparsity)."""
    tp = fp = fn = pred_inactive = true_inactive = total = 0
    for p_row, a_row in zip(predicted.tolist(), actual.tolist()):
        for p, a in zip(p_row, a_row):
            total += 1
            tp += p and a
            fp += p and not a
            fn += (not p) and a
            pred_inactive += not p
            true_inactive += not a
    return tp / (tp + fn), tp / (tp + fp), pred_inactive / total, true_inactive / total


def test_counts_equal_brute_force():
    g = torch.Generator().manual_seed(3)
    actual = torch.rand(7, 13, generator=g) < 0.35
    predicted = torch.rand(7, 13, generator=g) < 0.5
    counts = PredictionCounts()
    counts.add(predicted[:3], actual[:3])
    counts.add(predicted[3:], actual[3:])                 # accumulation over batches
    recall, precision, pred_sparsity, true_sparsity = brute_force(predicted, actual)
    assert counts.recall == pytest.approx(recall)
    assert counts.precision == pytest.approx(precision)
    assert counts.predicted_sparsity == pytest.approx(pred_sparsity)
    assert counts.true_sparsity == pytest.approx(true_sparsity)


def test_layer_mean_is_mean_of_layer_rates():
    a = PredictionCounts(true_pos=9, false_pos=1, false_neg=1, entries=100)
    b = PredictionCounts(true_pos=1, false_pos=0, false_neg=3, entries=10)
    overall = layer_mean([a, b])
    assert overall["recall"] == pytest.approx((0.9 + 0.25) / 2)
    assert overall["predicted_sparsity"] == pytest.approx((0.9 + 0.9) / 2)


def test_threshold_rule_is_sigmoid_comparison():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g, dtype=torch.float64)
    for p in (0.5, 0.2, 0.05):
        assert torch.equal(ActiveRule("threshold", threshold=p)(logits), torch.sigmoid(logits) >= p)


def test_topk_rule_keeps_ceil_percent_largest():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 48, generator=g)
    active = ActiveRule("topk", topk_percent=10)(logits)
    k = math.ceil(0.10 * 48)
    assert (active.sum(-1) == k).all()
    for t in range(3):
        kth = sorted(logits[t].tolist(), reverse=True)[k - 1]
        assert torch.equal(active[t], logits[t] >= kth)
    with pytest.raises(ValueError, match="topk_percent"):
        ActiveRule("topk", topk_percent=0)


def test_size_budget_llama2_7b():
    rank = 384
    fraction = (4096 * rank + rank * 11008) / (3 * 4096 * 11008)
    assert predictor_fraction_of_ffn(4096, 11008, rank) == pytest.approx(fraction) and fraction <= 0.05
    assert predictor_fraction_of_ffn(4096, 11008, 1024) > 0.11            # ProSparse's rank: 11.4%
    best = max_rank_within(4096, 11008, 0.05)
    assert predictor_fraction_of_ffn(4096, 11008, best) <= 0.05 < predictor_fraction_of_ffn(4096, 11008, best + 1)
    report = size_report(32, 48, 8, 2, (4096, 11008), 0.05)
    assert report["predictor_bytes_per_layer"] == (32 * 8 + 8 * 48) * 2
    assert report["ffn_bytes_per_layer"] == 3 * 32 * 48 * 2


def test_score_on_collection_equals_brute_force(tmp_path):
    model = sparsify(tiny_llama(), "relu")
    collect_activations(model, [random_ids(seed=s) for s in range(2)], tmp_path, store_dtype="float32",
                        progress=False)
    torch.manual_seed(0)
    predictors = [LowRankPredictor(32, 48, 6) for _ in range(2)]
    rule = ActiveRule("threshold", threshold=0.45)
    per_layer = score_on_collection(predictors, tmp_path, rule, batch_size=7)
    from actsparse.modeling.predictors import load_layer
    for layer, counts in enumerate(per_layer):
        x, y = load_layer(tmp_path, layer)
        with torch.no_grad():
            predicted = torch.sigmoid(predictors[layer](x).double()) >= 0.45
        expected = brute_force(predicted, y)
        got = (counts.recall, counts.precision, counts.predicted_sparsity, counts.true_sparsity)
        assert got == pytest.approx(expected)


def test_heldout_perplexity_matches_written_out_nll():
    from actsparse.modeling.predictors import heldout_perplexity
    model = tiny_llama()
    ids = random_ids(batch=2, seq=8)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double(), -1)
    nll = [-logp[b, t, ids[b, t + 1]] for b in range(2) for t in range(7) if mask[b, t] and mask[b, t + 1]]
    expected = math.exp(sum(nll) / len(nll))
    got = heldout_perplexity(model, [{"input_ids": ids, "attention_mask": mask}])
    assert got == pytest.approx(expected, rel=1e-5)
