"""CETT thresholds, their sparsity and apply_thresholds against float64 computations written out here."""
import numpy as np
import pytest
import torch

from actsparse.eval import apply_thresholds, cett_sparsity, cett_sparsity_on_batch, cett_thresholds
from actsparse.modeling import SparsityStats, sparsify
from tiny_models import random_ids, tiny_llama


def capture(model, batches):
    """Per layer: x1 rows [tokens, d_ff] (float64) seen by down_proj, and W_down (float64)."""
    rows = [[] for _ in model.model.layers]
    handles = [layer.mlp.down_proj.register_forward_pre_hook(
        lambda mod, args, i=i: rows[i].append(args[0].reshape(-1, args[0].shape[-1]).double()))
        for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        for ids in batches:
            model(ids)
    for h in handles:
        h.remove()
    weights = [layer.mlp.down_proj.weight.detach().double() for layer in model.model.layers]
    return [torch.cat(r).numpy() for r in rows], [w.numpy() for w in weights]


def cett_by_loops(a, w, t):
    """CETT(t) = mean_i ||sum_{j: n_ij <= t} a_ij W[:, j]|| / ||W a_i||, one token and neuron at a time."""
    norms = [np.sqrt(sum(w[k, j] ** 2 for k in range(w.shape[0]))) for j in range(w.shape[1])]
    ratios = []
    for a_i in a:
        part = np.zeros(w.shape[0])
        full = np.zeros(w.shape[0])
        for j, a_ij in enumerate(a_i):
            full += a_ij * w[:, j]
            if abs(a_ij) * norms[j] <= t:
                part += a_ij * w[:, j]
        ratios.append(np.linalg.norm(part) / np.linalg.norm(full))
    return float(np.mean(ratios))


def reference_threshold(a, w, target):
    """Largest grid candidate with CETT <= target, CETT evaluated for every one of the 65536 candidates."""
    n = np.abs(a) * np.linalg.norm(w, axis=0)
    flat = n.reshape(-1)
    grid = np.linspace(flat.min(), np.quantile(flat[:: max(flat.size // 65536, 1)], 0.99), 65536)
    # CETT only changes at a score value: evaluate it at each distinct score, then read it off per candidate.
    distinct = np.unique(flat)
    full = np.linalg.norm(a @ w.T, axis=1)
    kept = a[None] * (n[None] <= distinct[:, None, None])                  # [distinct, tokens, d_ff]
    at_distinct = np.mean(np.linalg.norm(kept @ w.T, axis=2) / full, axis=1)
    position = np.searchsorted(distinct, grid, side="right") - 1
    cett_on_grid = np.where(position >= 0, at_distinct[np.maximum(position, 0)], 0.0)
    ok = np.nonzero(cett_on_grid <= target)[0]
    return grid, cett_on_grid, (grid[ok[-1]] if ok.size else 0.0), (ok[-1] if ok.size else -1)


@pytest.fixture(scope="module")
def relu_model_and_data():
    return sparsify(tiny_llama(), "relu"), [random_ids(batch=1, seq=8, seed=s) for s in range(2)]


@pytest.mark.parametrize("target", [0.05, 0.2, 0.5])
def test_thresholds_are_the_largest_candidate_within_target(relu_model_and_data, target):
    model, batches = relu_model_and_data
    got = cett_thresholds(model, batches, cett=target)
    for a, w, t in zip(*capture(model, batches), got):
        grid, cett_on_grid, expected, index = reference_threshold(a, w, target)
        assert t == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert cett_by_loops(a, w, t) <= target
        assert cett_by_loops(a, w, t) == pytest.approx(cett_on_grid[index], abs=1e-12)
        assert cett_by_loops(a, w, grid[index + 1]) > target    # the next candidate is over


def test_sparsity_is_the_share_dropped_or_zero(relu_model_and_data):
    model, batches = relu_model_and_data
    result = cett_sparsity(model, batches, cett=0.2)
    xs, ws = capture(model, batches)
    expected = []
    for a, w, t in zip(xs, ws, result["thresholds"]):
        cutoff = t / np.linalg.norm(w, axis=0)
        expected.append(float(np.mean((np.abs(a) < cutoff) | (a == 0))))
    assert result["sparsity_per_layer"] == pytest.approx(expected, abs=1e-12)
    assert result["sparsity"] == pytest.approx(np.mean(expected))
    assert result["tokens"] == 16
    dense_zero = SparsityStats(model)
    with torch.no_grad():
        for ids in batches:
            model(ids)
    assert result["sparsity"] > dense_zero.overall()      # CETT drops small non-zero neurons too
    dense_zero.detach()
    assert cett_sparsity_on_batch(model, batches[0], cett=0.2) == pytest.approx(
        cett_sparsity(model, [batches[0]], cett=0.2)["sparsity"])


def test_apply_thresholds_zeros_exactly_the_neurons_of_the_rule(relu_model_and_data):
    model, batches = relu_model_and_data
    thresholds = cett_thresholds(model, batches, cett=0.2)
    before, after = [[] for _ in thresholds], [[] for _ in thresholds]
    layers = model.model.layers
    pre = [l.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: before[i].append(a[0].detach().clone()))
           for i, l in enumerate(layers)]
    with apply_thresholds(model, thresholds) as thresholded:
        post = [l.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: after[i].append(a[0].clone()))
                for i, l in enumerate(layers)]
        with torch.no_grad():
            model(batches[0])
    for h in pre + post:
        h.remove()
    for i, (layer, t) in enumerate(zip(layers, thresholds)):
        w = layer.mlp.down_proj.weight.detach().double()
        a, out = before[i][0].reshape(-1, w.shape[1]), after[i][0].reshape(-1, w.shape[1])
        dropped = 0
        for token in range(a.shape[0]):
            for j in range(a.shape[1]):
                rule = abs(float(a[token, j])) < t / float(w[:, j].norm())
                assert float(out[token, j]) == (0.0 if rule else float(a[token, j]))
                dropped += rule and float(a[token, j]) != 0
        assert dropped > 0
        assert thresholded.per_layer_sparsity()[i] == pytest.approx(float((out == 0).double().mean()))
    after_hooks_removed = []
    h = layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: after_hooks_removed.append(a[0]))
    with torch.no_grad():
        model(batches[0])
    h.remove()
    assert torch.equal(after_hooks_removed[0], before[0][0])


def test_zero_threshold_drops_nothing_and_wrong_length_is_refused(relu_model_and_data):
    model, batches = relu_model_and_data
    dense = model(batches[0]).logits
    with apply_thresholds(model, [0.0, 0.0]):
        assert torch.equal(model(batches[0]).logits, dense)
    with pytest.raises(ValueError, match="2 gated FFNs"):
        with apply_thresholds(model, [0.1]):
            pass


def test_unconverted_silu_model_and_token_cap():
    model = tiny_llama()
    small = [random_ids(batch=1, seq=8, seed=s) for s in range(2)]
    got = cett_thresholds(model, small, cett=0.2)
    for a, w, t in zip(*capture(model, small), got):
        assert t == pytest.approx(reference_threshold(a, w, 0.2)[2], rel=1e-12)
    assert type(model.model.layers[0].mlp).__name__ == "LlamaMLP"
    batches = [random_ids(seed=s) for s in range(3)]
    capped = cett_sparsity(model, batches, cett=0.2, max_tokens=30)
    assert capped["tokens"] == 30                         # 10 sampled tokens from each batch
    assert cett_sparsity(model, batches, cett=0.2, max_tokens=30) == capped   # same sample every call


def test_in_loop_metric_leaves_training_state_alone():
    from actsparse.modeling import enable_l1, l1_penalty
    model = sparsify(tiny_llama(), "relu").train()
    model.model.layers[1].eval()                       # a module the caller keeps in eval mode
    enable_l1(model)
    stats = SparsityStats(model)
    ids = random_ids()
    model(ids)
    counted = stats.per_layer()
    sparsity = cett_sparsity_on_batch(model, random_ids(seed=7), cett=0.2)
    assert 0 < sparsity < 1
    assert stats.per_layer() == counted                 # the held-out batch is not counted
    assert model.training and not model.model.layers[1].training and model.model.layers[0].training
    assert l1_penalty(model).requires_grad              # the training forward's L1 term survives
    stats.detach()
