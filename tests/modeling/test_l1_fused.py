"""l1_fused: sum |x1|, zero count and the gradient g + s * sign(x1) against float64 formulas written out here;
the Triton kernels (through the interpreter on CPU, compiled on a GPU) and the torch path; SparseGatedMLP
against the plain formulation (`l1_of` + `SparsityStats.add`), with and without checkpointing."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from actsparse.modeling import L1_NORMALIZATIONS, SparseGatedMLP, SparsityStats, enable_l1, l1_penalty, sparsify
from actsparse.modeling import l1_fused
from actsparse.modeling.sparse_mlp import l1_of
from tiny_models import random_ids, tiny_llama

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the conftest set TRITON_INTERPRET=1
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
SHAPES = [(3, 37), (1, 1), (0,), (2, 0, 5), (4, l1_fused.SUM_BLOCK + 5)]  # the last spans several programs
C = 0.37  # weight of the sum in the test loss: g_sum


class PoisonedTorch:
    """`torch` for l1_fused with `empty` / `empty_like` filled with garbage: every output must be written."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(1 << 20)

    def empty(self, *args, **kwargs):
        return self._poison(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(torch.empty_like(*args, **kwargs))


@pytest.fixture
def poisoned(monkeypatch):
    monkeypatch.setattr(l1_fused, "torch", PoisonedTorch())


def make_x(shape, content, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if content == "zeros":
        x = torch.zeros(shape)
    elif content == "mixed":
        x = torch.where(x.abs() < 0.5, torch.zeros(()), x)  # about 38% exact zeros, some of them -0.0
        x = torch.where(torch.rand(shape, generator=g) < 0.1, -0.0 * x, x)
    else:
        x = torch.where(x == 0, torch.ones(()), x)
    return x.to(dtype=dtype, device=DEVICE)


def reference(x, w, used):
    """float64: sum |x|, number of exact zeros, d(loss)/dx for loss = (y * w).sum() + C * sum |x|."""
    xd = x.double()
    grad = {"both": w.double() + C * xd.sign(), "sum_only": C * xd.sign(), "x1_only": w.double()}[used]
    return xd.abs().sum(), int((xd == 0).sum()), grad


def run(x, w, used, backend):
    x = x.clone().requires_grad_()
    y, abs_sum, zeros = l1_fused.l1_with_zero_count(x, count_zeros=True, backend=backend)
    loss = {"both": (y * w).sum() + C * abs_sum, "sum_only": C * abs_sum, "x1_only": (y * w).sum()}[used]
    loss.backward()
    return abs_sum, zeros, x.grad


def check(x, w, used, backend, sum_rtol, grad_tol):
    abs_sum, zeros, grad = run(x, w, used, backend)
    ref_sum, ref_zeros, ref_grad = reference(x, w, used)
    assert abs_sum.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    assert zeros.dtype == torch.int64 and int(zeros) == ref_zeros
    torch.testing.assert_close(abs_sum.double(), ref_sum, rtol=sum_rtol, atol=1e-30)
    assert grad.dtype == x.dtype and grad.shape == x.shape
    torch.testing.assert_close(grad.double(), ref_grad, rtol=grad_tol, atol=grad_tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("content", ["mixed", "zeros", "no_zeros"])
def test_triton_path_matches_float64(dtype, shape, content, poisoned):
    x = make_x(shape, content, dtype)
    w = make_x(shape, "no_zeros", dtype, seed=1)
    grad_tol = 1e-6 if dtype == torch.float32 else 1e-2  # half precision: one rounding of g + s*sign
    check(x, w, "both", "triton", 1e-6 if dtype == torch.float32 else 1e-5, grad_tol)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("used", ["sum_only", "x1_only"])
def test_one_gradient_missing(backend, used, poisoned):
    """g_x1 or g_sum arrives as None: the gradient is C * sign(x) or w alone."""
    x, w = make_x((5, 300), "mixed", torch.float32), make_x((5, 300), "no_zeros", torch.float32, seed=1)
    check(x, w, used, backend, 1e-6, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(3, 37), (0,), (7, 130)])
def test_torch_path_matches_float64(dtype, shape):
    x = make_x(shape, "mixed", dtype)
    w = make_x(shape, "no_zeros", dtype, seed=1)
    check(x, w, "both", "torch", 1e-6 if dtype != torch.float16 else 1e-5, 1e-2 if dtype == torch.float16 else 1e-6)


def test_backend_choice():
    x64 = make_x((3, 5), "mixed", torch.float64)
    assert not l1_fused._use_triton(x64, "triton")   # fp64 always takes the torch path
    assert l1_fused._use_triton(make_x((3, 5), "mixed", torch.float32), "auto") == (DEVICE == "cuda")
    with pytest.raises(ValueError, match="unknown L1 backend"):
        l1_fused._use_triton(x64, "cuda")
    x = make_x((3, 37), "mixed", torch.float32)
    assert int(l1_fused.zero_count(x, backend="triton")) == int(l1_fused.zero_count(x, backend="torch"))


def capture_reference(model, stats, normalization):
    """The plain formulation on down_proj's input: l1_of(x1) per layer and SparsityStats.add."""
    terms = []

    def hook(i):
        def fn(module, args):
            terms.append(l1_of(args[0], normalization))
            stats.add(i, args[0])
        return fn

    return terms, [layer.mlp.down_proj.register_forward_pre_hook(hook(i))
                   for i, layer in enumerate(model.model.layers)]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("normalization", L1_NORMALIZATIONS)
def test_model_matches_l1_of_and_stats_add(backend, normalization, monkeypatch):
    monkeypatch.setattr(l1_fused, "BACKEND", backend)
    ids = random_ids(batch=2, seq=10).to(DEVICE)
    model = sparsify(tiny_llama(), "relu").to(DEVICE).train()
    reference = copy.deepcopy(model)

    stats = SparsityStats(model)
    enable_l1(model, normalization)
    out = model(input_ids=ids, labels=ids)
    reg = l1_penalty(model)
    (out.loss + 0.3 * reg).backward()

    ref_stats = SparsityStats(reference)
    ref_stats.detach()   # counted by the hook instead
    terms, hooks = capture_reference(reference, ref_stats, normalization)
    ref_out = reference(input_ids=ids, labels=ids)
    ref_reg = torch.stack(terms).sum()
    (ref_out.loss + 0.3 * ref_reg).backward()
    for h in hooks:
        h.remove()

    torch.testing.assert_close(reg, ref_reg, rtol=1e-6, atol=0)
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-6, atol=1e-7, msg=name)
    assert stats._zeros.tolist() == ref_stats._zeros.tolist()
    assert stats._entries.tolist() == ref_stats._entries.tolist() == [2 * 10 * 48] * 2
    assert 0 < stats.overall() < 1


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_checkpoint_recompute_counts_once_and_keeps_l1_gradient(backend, monkeypatch):
    monkeypatch.setattr(l1_fused, "BACKEND", backend)
    torch.manual_seed(0)
    mlp = SparseGatedMLP(nn.Linear(8, 300, bias=False), nn.Linear(8, 300, bias=False), nn.Linear(300, 8, bias=False),
                         nn.ReLU(), "relu").to(DEVICE)
    x = torch.randn(5, 8, device=DEVICE)
    results = []
    for use_checkpoint in (False, True):
        m = copy.deepcopy(mlp)
        stats = SparsityStats(nn.Sequential(m))
        m.l1_normalization = "mean"
        y = checkpoint(m, x, use_reentrant=False) if use_checkpoint else m(x)
        (y.square().sum() + 0.5 * m.l1_term).backward()
        results.append((stats, [p.grad for p in m.parameters()]))
    (plain_stats, plain_grads), (ckpt_stats, ckpt_grads) = results
    assert int(ckpt_stats._entries[0]) == 5 * 300                       # recompute not counted again
    assert int(ckpt_stats._zeros[0]) == int(plain_stats._zeros[0]) > 0
    for g, g_ref in zip(ckpt_grads, plain_grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-8)
    # the L1 term contributed to the gradient through the recompute
    m = copy.deepcopy(mlp)
    m(x).square().sum().backward()
    assert not torch.allclose(m.up_proj.weight.grad, ckpt_grads[1])
