"""The scale-free L1 normalization (`l1_over_l2`): the formula written out in float64, scale invariance (the
property it exists for), its bounds, finite gradients on all-zero tokens, and its use inside a model."""
import logging
import math

import pytest
import torch

from actsparse.modeling import enable_l1, l1_penalty, sparsify
from actsparse.modeling import sparse_mlp
from actsparse.modeling.sparse_mlp import l1_of
from tiny_models import random_ids, tiny_llama


def x1_like(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(shape, generator=g)) * torch.randn(shape, generator=g)  # ~50% exact zeros
    x[0, 1] = 0.0  # one token with no active neuron
    return x


def test_formula_in_float64():
    x = x1_like((3, 5, 37))
    xd = x.double().reshape(-1, 37)
    per_token = []
    for row in xd:
        l2 = math.sqrt(sum(v * v for v in row.tolist()))
        per_token.append(0.0 if l2 == 0 else sum(abs(v) for v in row.tolist()) / (math.sqrt(37) * l2))
    expected = sum(per_token) / len(per_token)
    assert l1_of(x, "l1_over_l2").item() == pytest.approx(expected, rel=1e-6)
    assert l1_of(x.double(), "l1_over_l2").item() == pytest.approx(expected, rel=1e-12)


def test_scale_free_where_mean_is_not():
    x = x1_like((4, 50))
    for c in (0.01, 3.7):
        assert l1_of(c * x, "l1_over_l2").item() == pytest.approx(l1_of(x, "l1_over_l2").item(), rel=1e-5)
        assert l1_of(c * x, "mean").item() == pytest.approx(c * l1_of(x, "mean").item(), rel=1e-5)


def test_bounds():
    d = 64
    one_hot = torch.zeros(1, d)
    one_hot[0, 5] = -2.0
    assert l1_of(one_hot, "l1_over_l2").item() == pytest.approx(1 / math.sqrt(d))
    assert l1_of(torch.full((1, d), 0.3), "l1_over_l2").item() == pytest.approx(1.0)
    assert l1_of(torch.zeros(2, d), "l1_over_l2").item() == 0.0


def test_gradient_finite_and_zero_on_silent_tokens():
    x = x1_like((2, 6, 20)).double().requires_grad_()
    l1_of(x, "l1_over_l2").backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[0, 1] == 0).all()
    t = x1_like((2, 3, 9)).double()[:, 1:].clone().requires_grad_()
    torch.autograd.gradcheck(lambda v: l1_of(v, "l1_over_l2"), (t,))


def test_in_a_model_once_logged(caplog, monkeypatch):
    monkeypatch.setattr(sparse_mlp, "_said_unfused", False)
    model = sparsify(tiny_llama(), "relu").train()
    enable_l1(model, "l1_over_l2")
    ids = random_ids(batch=2, seq=8)
    with caplog.at_level(logging.INFO, logger="actsparse.modeling.sparse_mlp"):
        for _ in range(2):
            out = model(input_ids=ids, labels=ids)
            reg = l1_penalty(model)
    assert caplog.text.count("l1.normalization=l1_over_l2 runs in PyTorch") == 1
    n_layers = len(model.model.layers)
    assert 0 < reg.item() < n_layers and reg.requires_grad
    (out.loss + 0.1 * reg).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
