"""PredictedSparseMLP: x1 masked by the predicted set (hand-computed), exact when all are kept, detachable."""
import pytest
import torch
import torch.nn.functional as F

from actsparse.modeling import sparse_mlps, sparsify
from actsparse.modeling.predictors import (ActiveRule, LowRankPredictor, PredictedSparseMLP, PredictionCounts,
                                           attach_predictors, detach_predictors, predicted_mlps, set_rule)
from tiny_models import random_ids, tiny_llama


def make(location="pre_norm", rule=None):
    model = sparsify(tiny_llama(), "relu")
    torch.manual_seed(5)
    predictors = [LowRankPredictor(32, 48, 8) for _ in model.model.layers]
    return model, predictors, attach_predictors(model, predictors, location, rule)


def test_keeping_every_neuron_is_exact():
    ids = random_ids()
    with torch.no_grad():
        exact = sparsify(tiny_llama(), "relu")(ids).logits
        _, _, model = make(rule=ActiveRule("topk", topk_percent=100))
        torch.testing.assert_close(model(ids).logits, exact, rtol=0, atol=0)


@pytest.mark.parametrize("location", ["pre_norm", "mlp_input"])
def test_masked_ffn_matches_hand_computation(location):
    model, predictors, _ = make(location, ActiveRule("threshold", threshold=0.5))
    layer = model.model.layers[1]
    seen = {}
    layer.post_attention_layernorm.register_forward_pre_hook(lambda m, a: seen.__setitem__("residual", a[0]))
    layer.mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    layer.mlp.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out))
    with torch.no_grad():
        model(random_ids())
        x = seen["x"]
        source = seen["residual"] if location == "pre_norm" else x
        active = torch.sigmoid(predictors[1].up(F.relu(predictors[1].down(source)))) >= 0.5
        x1 = F.relu(x @ layer.mlp.gate_proj.weight.T) * (x @ layer.mlp.up_proj.weight.T) * active
        expected = x1 @ layer.mlp.down_proj.weight.T
    assert 0 < active.float().mean() < 1
    torch.testing.assert_close(seen["out"], expected)


def test_counts_rule_swap_and_detach():
    model, _, _ = make(rule=ActiveRule("topk", topk_percent=25))
    ids = random_ids()
    for mlp in predicted_mlps(model):
        mlp.prediction_counts = PredictionCounts()
    with torch.no_grad():
        model(ids)
    counts = predicted_mlps(model)[0].prediction_counts
    assert counts.entries == ids.numel() * 48
    assert counts.predicted_sparsity == pytest.approx(1 - 12 / 48)
    set_rule(model, ActiveRule("topk", topk_percent=100))
    assert all(m.rule.topk_percent == 100 for m in predicted_mlps(model))
    detach_predictors(model)
    assert not predicted_mlps(model) and len(sparse_mlps(model)) == 2
    assert not any("predictor" in k for k in model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, sparsify(tiny_llama(), "relu")(ids).logits, rtol=0, atol=0)


def test_sparse_ffn_backend_receives_flat_tokens_and_active():
    model, _, _ = make(rule=ActiveRule("topk", topk_percent=50))
    calls = []

    def fake_kernel(x, active=None):
        calls.append((x.shape, active.shape, active.dtype))
        return torch.zeros_like(x)

    for mlp in predicted_mlps(model):
        mlp.sparse_ffn = fake_kernel
    with torch.no_grad():
        model(random_ids(batch=2, seq=5))
    assert calls == [((10, 32), (10, 48), torch.bool)] * 2
    assert isinstance(model.model.layers[0].mlp, PredictedSparseMLP)
