"""SparsityStats against zeros counted by hand on captured x1."""
import pytest
import torch

from actsparse.modeling import SparsityStats, enable_l1, l1_penalty, sparsify
from tiny_models import random_ids, tiny_llama


def count_by_hand(model, batches):
    zeros = [0] * len(model.model.layers)
    entries = [0] * len(model.model.layers)

    def hook(i):
        def fn(module, args):
            zeros[i] += int((args[0] == 0).sum())
            entries[i] += args[0].numel()
        return fn

    hooks = [layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        for ids in batches:
            model(ids)
    for h in hooks:
        h.remove()
    return [z / e for z, e in zip(zeros, entries)]


def test_per_layer_zero_fraction_over_batches():
    model = sparsify(tiny_llama(), "relu")
    batches = [random_ids(seed=s) for s in range(3)]
    expected = count_by_hand(model, batches)
    stats = SparsityStats(model)
    with torch.no_grad():
        for ids in batches:
            model(ids)
    assert stats.per_layer() == pytest.approx(expected, abs=1e-12)
    assert stats.overall() == pytest.approx(sum(expected) / len(expected))
    assert 0.2 < stats.overall() < 0.8   # random ReLU gate: about half zeros
    stats.reset()
    assert all(v != v for v in stats.per_layer())   # nothing counted since the reset: nan


def test_silu_has_no_exact_zeros_and_fatrelu_more_than_relu():
    ids = random_ids()
    silu = sparsify(tiny_llama(), "silu")
    s = SparsityStats(silu)
    silu(ids)
    assert s.overall() == 0.0
    relu = sparsify(tiny_llama(), "relu")
    s_relu = SparsityStats(relu)
    relu(ids)
    fat = sparsify(tiny_llama(), "fatrelu", threshold=0.05)
    s_fat = SparsityStats(fat)
    fat(ids)
    assert s_fat.overall() > s_relu.overall()


def test_checkpoint_recompute_is_not_counted_twice():
    ids = random_ids()
    model = sparsify(tiny_llama(), "relu").train()
    expected = count_by_hand(model, [ids])
    model.activation_checkpointing_enable({"use_reentrant": False})
    stats = SparsityStats(model)
    enable_l1(model)
    out = model(input_ids=ids, labels=ids)
    (out.loss + 0.1 * l1_penalty(model)).backward()
    assert stats.per_layer() == pytest.approx(expected, abs=1e-12)
    assert int(stats._entries[0]) == ids.numel() * model.config.intermediate_size


def test_requires_converted_model():
    with pytest.raises(ValueError, match="sparsify first"):
        SparsityStats(tiny_llama())
