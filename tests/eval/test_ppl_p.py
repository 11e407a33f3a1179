"""CETT-PPL-p%: the returned CETT value is the bisection's edge, in few forward passes."""
import math

import pytest
import torch

from actsparse.eval import apply_thresholds, cett_thresholds, perplexity, ppl_p_sparsity
from actsparse.modeling import sparsify
from tiny_models import random_ids, tiny_llama


def sensitive_model(layers=2, seed=0):
    """A random ReLU model whose perplexity reacts to its FFNs (random tiny models barely do)."""
    model = sparsify(tiny_llama(num_hidden_layers=layers, seed=seed), "relu")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(5)
        model.lm_head.weight.mul_(20)
    return model


def ratio_at(model, batches, cett, dense_ppl, **kwargs):
    with apply_thresholds(model, cett_thresholds(model, batches, cett, **kwargs)):
        return perplexity(model, batches) / dense_ppl


def check_search(model, batches, p, **kwargs):
    result = ppl_p_sparsity(model, batches, p=p, **kwargs)
    dense = perplexity(model, batches)
    assert result["ppl_dense"] == pytest.approx(dense, rel=1e-9)
    assert result["forward_passes"] <= 12
    c = result["cett"]
    assert 0 < c < 1
    assert result["thresholds"] == cett_thresholds(model, batches, c, **kwargs)
    assert result["ppl_ratio"] < 1 + p
    assert ratio_at(model, batches, c, dense, **kwargs) == pytest.approx(result["ppl_ratio"], rel=1e-9)
    assert result["cett_upper"] == c + result["resolution"] == c + 1 / 1024
    assert ratio_at(model, batches, c + 1 / 1024, dense, **kwargs) >= 1 + p
    assert result["ppl_ratio_upper"] >= 1 + p
    with apply_thresholds(model, result["thresholds"]) as thresholded:
        perplexity(model, batches)
    assert result["sparsity_per_layer"] == pytest.approx(thresholded.per_layer_sparsity(), abs=1e-12)
    assert result["sparsity"] == pytest.approx(sum(result["sparsity_per_layer"]) / len(result["sparsity_per_layer"]))
    return result


def test_bisection_edge_and_forward_pass_budget():
    model = sensitive_model()
    result = check_search(model, [random_ids(seed=s) for s in range(3)], p=0.01)
    assert 0.5 < result["sparsity"] < 1
    assert math.exp(result["loss_sparse"] - result["loss_dense"]) == pytest.approx(result["ppl_ratio"])


def test_insensitive_model_reaches_cett_one():
    model = sparsify(tiny_llama(), "relu")       # FFNs hardly move its near-uniform logits
    batches = [random_ids(seed=s) for s in range(2)]
    result = ppl_p_sparsity(model, batches, p=0.05)
    assert result["cett"] == 1.0 and result["ppl_ratio"] < 1.05
    assert result["thresholds"] == cett_thresholds(model, batches, 1.0)
    assert result["forward_passes"] <= 12


@pytest.mark.slow
def test_subsampled_capture_on_a_deeper_model():
    model = sensitive_model(layers=4, seed=0)
    batches = [random_ids(batch=4, seq=32, seed=s) for s in range(4)]
    result = check_search(model, batches, p=0.02, max_tokens=200)
    assert result["captured_tokens"] == 200 and result["tokens"] == 4 * 4 * 31
