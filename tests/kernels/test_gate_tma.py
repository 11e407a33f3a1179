"""The one-token gate kernel with TMA loads (triton_gate_tma.py) under TRITON_INTERPRET=1 against float64.

act(gate) for every neuron (the buffer poisoned with NaN first), the list of active neurons as a set, and the
list length; d_ff and d_model that are not multiples of the tile; fp32 / fp16 / bf16; rows that TMA cannot load
(unaligned) run the plain kernel and say so once.
"""
import logging

import pytest
import torch
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels import DispatchConfig, SparseFFN, dispatch, triton_gate  # noqa: E402
from actsparse.kernels.triton_gate import launch_gate  # noqa: E402

ACTIVATIONS = [("relu", 0.0), ("fatrelu", 0.25), ("drelu", 0.0), ("relu2", 0.0)]


def reference_act(x, w, b, activation, threshold):
    g = x.double() @ w.double().T + (0 if b is None else b.double())
    if activation == "fatrelu":
        return torch.where(g >= threshold, g, torch.zeros_like(g))
    a = torch.clamp(g, min=0)
    return a * a if activation == "relu2" else a


def run_gate(x, w, b, activation, threshold):
    f = w.shape[0]
    gact = torch.full((1, f), float("nan"))
    counts = torch.zeros(65, dtype=torch.int32)
    idx = torch.full((1, f), -7, dtype=torch.int32)
    launch_gate(x, w, b, activation, threshold, False, gact, counts, idx, tma=True)
    return gact, int(counts[0]), idx[0, :int(counts[0])]


def _plain_unreachable(monkeypatch):
    def unreachable(*_a, **_k):
        raise AssertionError("the plain gate kernel ran where TMA loads were usable")
    monkeypatch.setattr(triton_gate, "gate_kernel", type("K", (), {"__getitem__": lambda self, grid: unreachable})())


@pytest.mark.parametrize("gate_bias", [-50.0, 0.0, 50.0], ids=["none", "half", "all"])
@pytest.mark.parametrize("activation,threshold", ACTIVATIONS)
@pytest.mark.parametrize("d,f,bias", [(40, 100, True), (24, 72, False), (64, 33, True)])
def test_tma_gate_matches_float64(d, f, bias, activation, threshold, gate_bias, monkeypatch):
    _plain_unreachable(monkeypatch)
    g = torch.Generator().manual_seed(d + f)
    w = torch.randn(f, d, generator=g) / d ** 0.5
    b = gate_bias + 0.5 * torch.randn(f, generator=g) if bias else None
    x = torch.randn(1, d, generator=g) + (gate_bias / 10 if not bias else 0)
    gact, n, listed = run_gate(x, w, b, activation, threshold)
    ref = reference_act(x, w, b, activation, threshold)
    assert torch.isfinite(gact).all()
    torch.testing.assert_close(gact.double(), ref, rtol=1e-5, atol=1e-6)
    active = torch.nonzero(ref[0] != 0).flatten()
    assert n == active.numel() and sorted(listed.tolist()) == active.tolist()


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_tma_gate_half_precision(dtype, tol, monkeypatch):
    _plain_unreachable(monkeypatch)
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(100, 40, generator=g) / 40 ** 0.5).to(dtype)
    x = torch.randn(1, 40, generator=g).to(dtype)
    gact, n, listed = run_gate(x, w, None, "relu", 0.0)
    ref = reference_act(x, w, None, "relu", 0.0)
    assert float((gact.double() - ref).norm() / ref.norm()) < tol
    assert set(listed.tolist()) == set(torch.nonzero(gact[0] != 0).flatten().tolist())


def test_unaligned_rows_run_the_plain_kernel_and_say_so(caplog):
    dispatch._warned.clear()
    g = torch.Generator().manual_seed(4)
    w = torch.randn(50, 33, generator=g)          # 132-byte rows: not a multiple of 16
    x = torch.randn(1, 33, generator=g)
    with caplog.at_level(logging.WARNING):
        gact, n, listed = run_gate(x, w, None, "relu", 0.0)
    torch.testing.assert_close(gact.double(), reference_act(x, w, None, "relu", 0.0), rtol=1e-5, atol=1e-6)
    assert any("TMA loads unavailable" in r.message and "132 bytes" in r.message for r in caplog.records)


def test_sparse_ffn_same_output_with_and_without_tma():
    g = torch.Generator().manual_seed(5)
    d, f = 40, 100
    w_gate, w_up = (torch.randn(f, d, generator=g) / d ** 0.5 for _ in range(2))
    w_down_t = torch.randn(f, d, generator=g) / f ** 0.5
    x = torch.randn(1, d, generator=g)
    outs = [SparseFFN(w_gate, w_up, w_down_t, dispatch=DispatchConfig(gate_tma=t, exact_kernel=k))(x)
            for t in (True, False) for k in ("auto", "split")]
    for y in outs[1:]:
        torch.testing.assert_close(y, outs[0], rtol=1e-5, atol=1e-6)


def test_gate_prefetch_under_the_interpreter_is_said_and_exact(caplog):
    """DispatchConfig(gate_prefetch=True) needs inline PTX (a GPU): under the interpreter it says so once and the rows
    path stays exact."""
    dispatch._warned.clear()
    g = torch.Generator().manual_seed(6)
    d, f = 40, 100
    w_gate, w_up = (torch.randn(f, d, generator=g) / d ** 0.5 for _ in range(2))
    w_down_t = torch.randn(f, d, generator=g) / f ** 0.5
    x = torch.randn(1, d, generator=g)
    plain = SparseFFN(w_gate, w_up, w_down_t, dispatch=DispatchConfig(exact_kernel="rows"))(x)
    with caplog.at_level(logging.WARNING):
        y = SparseFFN(w_gate, w_up, w_down_t, dispatch=DispatchConfig(exact_kernel="rows", gate_prefetch=True))(x)
    torch.testing.assert_close(y, plain, rtol=1e-5, atol=1e-6)
    assert any("L2 prefetch" in r.message and "interpreter" in r.message for r in caplog.records)
