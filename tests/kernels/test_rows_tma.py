"""The one-token rows kernel with TMA row loads (DispatchConfig(rows_tma=True), triton_rows_tma.py) under
TRITON_INTERPRET=1 against float64.

The rows kernel with register loads is made unreachable, so a passing test ran the TMA kernel. Rows of d_model
elements are viewed as [R, C] boxes: d_model 40 in fp32 is [5 -> 8, 8] (padding rows), 64 is [1, 64], 24 is [3 -> 4,
8]. The exact path (act(gate) from the gate kernel), the predicted paths (mask, index list, low-rank predictor's list;
gate rows read here), fp32_out (the sum row is the output), biases, 0% / some / 100% active, fp16 / bf16, every float
workspace poisoned with NaN; rows TMA cannot load run the register-load kernel and say so once.
"""
import logging

import pytest
import torch
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels import DispatchConfig, SparseFFN, dispatch, triton_rows_ffn  # noqa: E402
from actsparse.kernels.triton_rows_tma import row_boxes  # noqa: E402
from actsparse.modeling.predictors.low_rank_logits import LowRankLogits  # noqa: E402
from ffn_reference import check, poisoned_empty, random_ffn, reference_ffn, rel_err  # noqa: E402

ACTIVATIONS = [("relu", 0.0), ("fatrelu", 0.25), ("drelu", 0.0), ("relu2", 0.0)]
PATTERNS = {"none": -50.0, "half": 0.0, "all": 50.0}
TMA = DispatchConfig(exact_kernel="rows", predicted_kernel="rows", rows_tma=True)


def _tma_only(monkeypatch):
    """The rows kernel with register loads and the split kernels unreachable."""
    from actsparse.kernels import triton_ffn

    def unreachable(*_a, **_k):
        raise AssertionError("another kernel ran where the TMA rows kernel was usable")
    for name in ("launch_up", "launch_down"):
        monkeypatch.setattr(triton_ffn, name, unreachable)
    monkeypatch.setattr(triton_rows_ffn, "launch_rows", unreachable)


def _state_is_zero(ffn):
    assert not ffn._list_state.any() and not ffn._rows_acc.any() and not ffn._tickets.any()


def test_row_boxes():
    """[R_PAD, C] boxes: C the largest power of two <= 256 dividing d_model, R = d_model / C padded to a power of two."""
    assert row_boxes(4096, 2) == (16, 256)
    assert row_boxes(5120, 2) == (32, 256)     # 13B: 20 rows of 256, padded to 32
    assert row_boxes(2304, 2) == (16, 256)     # MiniCPM: 9 rows
    assert row_boxes(40, 4) == (8, 8)
    assert isinstance(row_boxes(33, 4), str)   # 4-byte pieces
    assert isinstance(row_boxes(12, 2), str)   # 8-byte pieces
    assert isinstance(row_boxes(16384, 2), str)  # 64 x 256 > MAX_ONE_STEP_D


@pytest.mark.parametrize("fp32_out", [False, True])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("activation,threshold", ACTIVATIONS)
@pytest.mark.parametrize("d,f", [(24, 72), (40, 100), (64, 33)])
def test_exact_matches_float64(d, f, activation, threshold, pattern, fp32_out, monkeypatch):
    _tma_only(monkeypatch)
    ffn, ref = random_ffn(d, f, activation, threshold, TMA, PATTERNS[pattern], seed=d + f, biases=True)
    g = torch.Generator().manual_seed(f)
    for _ in range(2):   # twice on one SparseFFN: its list length, sum row and ticket must be zero in between
        x = torch.randn(1, d, generator=g)
        y = ffn(x, fp32_out=fp32_out)
        check(y, ref(x))
        _state_is_zero(ffn)


def _mask_and_list(fraction, f, g):
    mask = torch.rand(1, f, generator=g) < fraction
    ids = torch.nonzero(mask[0]).flatten()
    return mask, ids[torch.randperm(ids.numel(), generator=g)].to(torch.int32)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("kind", ["mask", "index"])
@pytest.mark.parametrize("activation,threshold", ACTIVATIONS)
def test_predicted_matches_float64(activation, threshold, kind, fraction, monkeypatch):
    _tma_only(monkeypatch)
    d, f = 40, 100
    ffn, ref = random_ffn(d, f, activation, threshold, TMA, 0.0, seed=5, biases=True)
    g = torch.Generator().manual_seed(6)
    for _ in range(2):
        x = torch.randn(1, d, generator=g)
        mask, ids = _mask_and_list(fraction, f, g)
        check(ffn(x, mask if kind == "mask" else ids), ref(x, mask))
        _state_is_zero(ffn)


def test_low_rank_predictor_list_matches_float64(monkeypatch):
    """A LowRankLogits predictor: its list kernel writes the list, the TMA rows kernel reads gate, up and down rows."""
    _tma_only(monkeypatch)
    d, f, rank = 64, 100, 8
    ffn, ref = random_ffn(d, f, "relu", 0.0, TMA, 0.0, seed=7, biases=True)
    g = torch.Generator().manual_seed(8)
    down, up = torch.randn(rank, d, generator=g) / d ** 0.5, torch.randn(f, rank, generator=g)
    x = torch.randn(1, d, generator=g)
    logits = (torch.relu(x.double() @ down.double().T) @ up.double().T)[0]
    cut = float(logits.sort().values[f // 2 - 1] + logits.sort().values[f // 2]) / 2   # half the neurons, away from ties
    predictor = LowRankLogits(down=down, up=up, bias=None, relu_hidden=True, cut=cut)
    check(ffn(x, predictor), ref(x, (logits >= cut)[None]))
    _state_is_zero(ffn)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_half_precision(dtype, tol, monkeypatch):
    _tma_only(monkeypatch)
    g = torch.Generator().manual_seed(9)
    d, f = 40, 100
    w_gate, w_up = ((torch.randn(f, d, generator=g) / d ** 0.5).to(dtype) for _ in range(2))
    w_down = (torch.randn(d, f, generator=g) / f ** 0.5).to(dtype)
    ffn = SparseFFN(w_gate, w_up, w_down.T.contiguous(), dispatch=TMA)
    ffn.workspace_alloc = poisoned_empty
    x = torch.randn(1, d, generator=g).to(dtype)
    mask, ids = _mask_and_list(0.4, f, g)
    for y, m in ((ffn(x), None), (ffn(x, ids), mask), (ffn(x, fp32_out=True), None)):
        assert torch.isfinite(y).all()
        assert rel_err(y, reference_ffn(x, w_gate, w_up, w_down, "relu", mask=m)) < tol


def test_rows_tma_cannot_load_runs_the_register_kernel_and_says_so(caplog):
    """d_model 33 in fp32: 4-byte row pieces, which TMA cannot copy: the rows kernel runs, exact, said once."""
    dispatch._warned.clear()
    ffn, ref = random_ffn(33, 50, "relu", 0.0, TMA, 0.0, seed=10)
    x = torch.randn(1, 33, generator=torch.Generator().manual_seed(11))
    with caplog.at_level(logging.WARNING):
        check(ffn(x), ref(x))
        check(ffn(x), ref(x))
    said = [r for r in caplog.records if "TMA row loads unavailable" in r.getMessage()]
    assert len(said) == 1 and "d_model 33" in said[0].getMessage()
