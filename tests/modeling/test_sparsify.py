"""sparsify: each activation against an independent float64 reference of the gated FFN."""
import copy

import pytest
import torch
from torch import nn

from actsparse.modeling import SUPPORTED_ACTIVATIONS, SparseGatedMLP, find_gated_ffns, sparse_mlps, sparsify
from tiny_models import random_ids, tiny_llama, tiny_minicpm_like, tiny_mistral, tiny_qwen2

BUILDERS = {"llama": tiny_llama, "mistral": tiny_mistral, "qwen2": tiny_qwen2}


def reference_x1(activation, g, u, t=0.0):
    """The paper's formulas (PAPERS.md (b)), written out in float64."""
    g, u = g.double(), u.double()
    if activation == "silu":
        return g / (1 + torch.exp(-g)) * u
    if activation == "relu":
        return torch.clamp(g, min=0) * u
    if activation == "drelu":
        return torch.clamp(g, min=0) * torch.clamp(u, min=0)
    if activation == "relu2":
        return torch.clamp(g, min=0) ** 2 * u
    if activation == "fatrelu":
        return torch.where(g >= t, g, torch.zeros_like(g)) * u
    raise AssertionError(activation)


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_silu_is_bit_identical(arch):
    model = BUILDERS[arch]()
    ids = random_ids()
    before = model(ids).logits
    converted = sparsify(copy.deepcopy(model), "silu")
    assert len(sparse_mlps(converted)) == model.config.num_hidden_layers
    assert torch.equal(converted(ids).logits, before)


@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("activation", ["relu", "drelu", "relu2", "fatrelu"])
def test_ffn_matches_float64_reference(arch, activation):
    model = BUILDERS[arch](dtype=torch.float64)
    t = 0.05 if activation == "fatrelu" else 0.0
    sparsify(model, activation, threshold=t)
    mlp = model.model.layers[1].mlp
    assert isinstance(mlp, SparseGatedMLP)
    x = torch.randn(3, 5, model.config.hidden_size, dtype=torch.float64)
    g = x @ mlp.gate_proj.weight.T
    u = x @ mlp.up_proj.weight.T
    expected = reference_x1(activation, g, u, t) @ mlp.down_proj.weight.T
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)


def test_fatrelu_keeps_gate_equal_to_threshold():
    mlp = sparsify(tiny_llama(dtype=torch.float64), "fatrelu", threshold=0.5).model.layers[0].mlp
    g = torch.tensor([0.49, 0.5, 0.51, -1.0], dtype=torch.float64)
    assert mlp.act_fn(g).tolist() == [0.0, 0.5, 0.51, 0.0]


def test_relu_model_matches_whole_model_reference():
    """Whole-model check: relu conversion equals a copy whose MLPs compute relu(g)*u by hand."""
    base = tiny_llama(dtype=torch.float64)
    ids = random_ids()
    manual = copy.deepcopy(base)
    for layer in manual.model.layers:
        layer.mlp.act_fn = nn.ReLU()
    expected = manual(ids).logits
    assert torch.allclose(sparsify(base, "relu")(ids).logits, expected, rtol=0, atol=1e-12)


def test_reconversion_and_back_to_silu():
    model = tiny_llama()
    ids = random_ids()
    before = model(ids).logits
    sparsify(model, "relu")
    sparsify(model, "fatrelu", threshold=0.01)
    assert model.config.hidden_act == "fatrelu" and model.config.hidden_act_param == 0.01
    assert all(m.activation == "fatrelu" for m in sparse_mlps(model))
    sparsify(model, "silu")
    assert model.config.hidden_act == "silu" and not hasattr(model.config, "hidden_act_param")
    assert torch.equal(model(ids).logits, before)


def test_state_dict_keys_unchanged():
    model = tiny_llama()
    keys = list(model.state_dict())
    assert list(sparsify(model, "drelu").state_dict()) == keys


def test_minicpm_like_custom_model():
    model = tiny_minicpm_like(dtype=torch.float64)
    ids = random_ids()
    manual = copy.deepcopy(model)
    for layer in manual.layers:
        layer.mlp.act_fn = nn.ReLU()
    sparsify(model, "relu")
    assert [n for n, _ in find_gated_ffns(model)] == ["layers.0.mlp", "layers.1.mlp"]
    torch.testing.assert_close(model(ids), manual(ids), rtol=0, atol=1e-12)


def test_unknown_activation_lists_supported():
    with pytest.raises(ValueError, match="supported: silu, relu, drelu, relu2, fatrelu"):
        sparsify(tiny_llama(), "gelu")


def test_threshold_only_for_fatrelu():
    with pytest.raises(ValueError, match="only applies to 'fatrelu'"):
        sparsify(tiny_llama(), "relu", threshold=0.1)


def test_model_without_gated_ffn_fails_clearly():
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="has no gated FFN.*supported: LLaMA"):
        sparsify(plain, "relu")


def test_supported_list():
    assert SUPPORTED_ACTIVATIONS == ("silu", "relu", "drelu", "relu2", "fatrelu")
