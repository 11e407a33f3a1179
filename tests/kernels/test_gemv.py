"""The one-token TMA GEMV (triton_gemv.py) under TRITON_INTERPRET=1 against float64: odd shapes (rows and columns not
multiples of the tile), with and without a bias, fp32 / fp16 / bf16; GemvLinear in a model (one token through the op,
several through F.linear), and the fallback where TMA cannot load the rows, said once."""
import logging

import pytest
import torch
from torch import nn
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels import dispatch  # noqa: E402
from actsparse.kernels.triton_gemv import GemvLinear, gemv, gemv_unusable, use_gemv  # noqa: E402
from actsparse.kernels.triton_gemv_prefetch import gemv_prefetch, gemv_prefetch_unusable  # noqa: E402


def reference(x, w, b):
    return x.double() @ w.double().T + (0 if b is None else b.double())


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n_out,d_in", [(40, 24), (37, 72), (1, 8), (100, 200)])
def test_gemv_matches_float64(n_out, d_in, bias, relu):
    g = torch.Generator().manual_seed(n_out + d_in)
    w = torch.randn(n_out, d_in, generator=g)
    b = torch.randn(n_out, generator=g) if bias else None
    x = torch.randn(1, 1, d_in, generator=g)
    assert gemv_unusable(x, w) is None
    y = gemv(x, w, b, relu=relu)
    assert y.shape == (1, 1, n_out) and y.dtype == torch.float32
    ref = reference(x, w, b)
    torch.testing.assert_close(y.double(), ref.clamp(min=0) if relu else ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n_out,d_in", [(37, 72), (1, 8), (9, 200)])
def test_gemv_prefetch_matches_float64(n_out, d_in, bias, relu):
    """The GEMV whose programs load their whole rows before waiting for the kernel before them (PDL on a GPU;
    here a plain launch): odd rows and columns (masked up to the next power of two)."""
    g = torch.Generator().manual_seed(n_out * d_in)
    w = torch.randn(n_out, d_in, generator=g)
    b = torch.randn(n_out, generator=g) if bias else None
    x = torch.randn(1, d_in, generator=g)
    assert gemv_prefetch_unusable(x, w) is None
    y = gemv_prefetch(x, w, b, relu=relu)
    ref = reference(x, w, b)
    torch.testing.assert_close(y.double(), ref.clamp(min=0) if relu else ref, rtol=1e-5, atol=1e-5)


def test_gemv_prefetch_says_what_it_cannot_take():
    x = torch.randn(1, 16)
    assert "whole rows up to 8192" in gemv_prefetch_unusable(torch.randn(1, 8200), torch.randn(2, 8200))
    assert "not contiguous" in gemv_prefetch_unusable(x, torch.randn(16, 4).T)
    assert "2 tokens" in gemv_prefetch_unusable(torch.randn(2, 16), torch.randn(4, 16))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_gemv_half_precision(dtype, tol):
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(48, 64, generator=g).to(dtype), torch.randn(1, 64, generator=g).to(dtype)
    y = gemv(x, w)
    assert y.dtype == dtype
    ref = reference(x, w, None)
    assert float((y.double() - ref).norm() / ref.norm()) < tol


def test_gemv_linear_in_a_model(caplog):
    """use_gemv swaps the named Linears only; one token goes through the op, several through F.linear, both equal to
    the Linear's output; rows TMA cannot load (fp32, 5 columns: 20 bytes) fall back to F.linear, said once."""
    g = torch.Generator().manual_seed(4)
    model = nn.ModuleDict(dict(attn=nn.ModuleDict(dict(o_proj=nn.Linear(24, 40), q_proj=nn.Linear(24, 24)))))
    plain = {k: (m.weight.clone(), m.bias.clone()) for k, m in model["attn"].items()}
    assert use_gemv(model) == 1
    assert isinstance(model["attn"]["o_proj"], GemvLinear) and isinstance(model["attn"]["q_proj"], nn.Linear)
    w, b = plain["o_proj"]
    for tokens in (1, 3):
        x = torch.randn(1, tokens, 24, generator=g)
        torch.testing.assert_close(model["attn"]["o_proj"](x).double(), reference(x, w, b), rtol=1e-5, atol=1e-5)
    dispatch._warned.clear()
    narrow = GemvLinear(nn.Linear(5, 3))
    x = torch.randn(1, 5, generator=g)
    with caplog.at_level(logging.WARNING):
        torch.testing.assert_close(narrow(x), nn.functional.linear(x, narrow.weight, narrow.bias))
        narrow(x)
    assert sum("Triton GEMV is unavailable" in r.message for r in caplog.records) == 1
    with pytest.raises(ValueError, match="no nn.Linear named"):
        use_gemv(nn.Linear(2, 2), ("o_proj",))
