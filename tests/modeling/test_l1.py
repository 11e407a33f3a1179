"""L1 term: value and gradient against autograd on an explicit float64 formula, with/without checkpointing."""
import copy

import pytest
import torch

from actsparse.modeling import enable_l1, l1_penalty, sparsify
from tiny_models import random_ids, tiny_llama


def capture_x1(model):
    """Forward hooks on down_proj inputs: x1 of every layer, graph-connected (independent of our code)."""
    captured = []
    hooks = [layer.mlp.down_proj.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
             for layer in model.model.layers]
    return captured, hooks


def reference_l1(x1s, normalization):
    total = 0
    for x1 in x1s:
        s = x1.abs().sum()
        total = total + {"mean": s / x1.numel(), "token_mean": s / (x1.numel() // x1.shape[-1]), "sum": s}[normalization]
    return total


@pytest.mark.parametrize("normalization", ["mean", "token_mean", "sum"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_l1_gradient_matches_autograd_reference(normalization, checkpointing):
    lam = 0.3
    ids = random_ids(batch=2, seq=10)
    model = sparsify(tiny_llama(dtype=torch.float64), "relu")
    reference = copy.deepcopy(model)
    model.train()
    reference.train()
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})

    enable_l1(model, normalization)
    out = model(input_ids=ids, labels=ids)
    reg = l1_penalty(model)
    (out.loss + lam * reg).backward()

    captured, hooks = capture_x1(reference)
    ref_out = reference(input_ids=ids, labels=ids)
    ref_reg = reference_l1(captured, normalization)
    (ref_out.loss + lam * ref_reg).backward()
    for h in hooks:
        h.remove()

    torch.testing.assert_close(reg.double(), ref_reg, rtol=1e-6, atol=0)
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-5, atol=1e-9, msg=name)


def test_l1_gradient_is_nonzero_and_pushes_toward_sparsity():
    ids = random_ids()
    model = sparsify(tiny_llama(dtype=torch.float64), "relu").train()
    enable_l1(model)
    model(input_ids=ids)
    reg = l1_penalty(model)
    reg.backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_reentrant_checkpointing_is_refused():
    ids = random_ids()
    model = sparsify(tiny_llama(), "relu").train()
    model.activation_checkpointing_enable({"use_reentrant": True})
    enable_l1(model)
    model(input_ids=ids, labels=ids)
    with pytest.raises(RuntimeError, match="use_reentrant"):
        l1_penalty(model)


def test_l1_requires_forward_and_conversion():
    model = tiny_llama()
    with pytest.raises(ValueError, match="sparsify first"):
        enable_l1(model)
    sparsify(model, "relu")
    enable_l1(model)
    with pytest.raises(RuntimeError, match="run a forward first"):
        l1_penalty(model)
    with pytest.raises(ValueError, match="unknown L1 normalization"):
        enable_l1(model, "max")
