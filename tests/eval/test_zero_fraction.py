"""zero_fraction_sparsity against zeros of x1 counted token by token in float64."""
import pytest
import torch

from actsparse.eval import zero_fraction_sparsity
from actsparse.modeling import sparsify
from tiny_models import random_ids, tiny_llama


def zero_share_by_hand(model, inputs):
    """inputs: list of (ids [1, T]); per layer, zeros / entries of x1 over every token, by explicit loops."""
    layers = model.model.layers
    zeros, entries = [0] * len(layers), [0] * len(layers)

    def hook(i):
        def fn(module, args):
            x1 = args[0].double()
            for token in x1.reshape(-1, x1.shape[-1]):
                for value in token.tolist():
                    zeros[i] += value == 0.0
                    entries[i] += 1
        return fn

    handles = [layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    with torch.no_grad():
        for ids in inputs:
            model(ids)
    for h in handles:
        h.remove()
    return [z / e for z, e in zip(zeros, entries)]


def test_matches_brute_force_count_over_batches():
    model = sparsify(tiny_llama(), "relu")
    batches = [random_ids(seed=s) for s in range(3)]
    expected = zero_share_by_hand(model, batches)
    result = zero_fraction_sparsity(model, batches)
    assert result["sparsity_per_layer"] == pytest.approx(expected, abs=1e-12)
    assert result["sparsity"] == pytest.approx(sum(expected) / len(expected), abs=1e-12)
    assert result["activation_ratio"] == pytest.approx(1 - result["sparsity"])
    assert result["tokens"] == 3 * 2 * 12
    assert 0.3 < result["sparsity"] < 0.7


def test_padding_is_not_counted():
    model = sparsify(tiny_llama(), "relu")
    ids = random_ids(batch=2, seq=10)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0                                  # right padding on row 1
    expected = zero_share_by_hand(model, [ids[:1], ids[1:, :6]])
    result = zero_fraction_sparsity(model, [{"input_ids": ids, "attention_mask": mask}])
    assert result["sparsity_per_layer"] == pytest.approx(expected, abs=1e-12)
    assert result["tokens"] == 16


def test_unconverted_model_is_measured_without_being_changed():
    model = tiny_llama()
    ids = random_ids()
    before = model(ids).logits
    mlp_type = type(model.model.layers[0].mlp)
    result = zero_fraction_sparsity(model, [ids])
    assert result["sparsity"] == 0.0                # SiLU: no exact zeros
    assert type(model.model.layers[0].mlp) is mlp_type
    assert model.config.hidden_act == "silu" and not hasattr(model.config, "actsparse_original_act")
    assert torch.equal(model(ids).logits, before)
