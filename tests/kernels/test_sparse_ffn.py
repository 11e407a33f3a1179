"""SparseFFN's Triton kernels under TRITON_INTERPRET=1 (CPU, fp32) against an independent float64 reference.

Odd shapes, 1 / 3 / 5 tokens, relu / fatrelu / drelu / relu2, union and per-token lists, with and without a
predicted set, sparsity 0%, ~50% and 100%, every float workspace and the output poisoned with NaN.
"""
import pytest
import torch
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels import DispatchConfig, SparseFFN  # noqa: E402
from ffn_reference import check, poisoned_empty, random_ffn, reference_ffn, rel_err  # noqa: E402



SHAPES = [(24, 72, 5), (40, 100, 1), (40, 100, 3)]  # (d_model, d_ff, tokens)
ACTIVATIONS = [("relu", 0.0), ("fatrelu", 0.25), ("drelu", 0.0), ("relu2", 0.0)]
# Gate bias per pattern: every neuron off, about half on, every neuron on.
PATTERNS = {"none": -50.0, "half": 0.0, "all": 50.0}


# "union_gate_up": union lists with DispatchConfig(exact_kernel="gate_up") (the gate kernel computes x1 too);
# "union_split": the three-launch exact path at every batch size ("auto" runs the rows kernel at one token).
MODES = {"union": DispatchConfig(batch_mode="union"), "per_token": DispatchConfig(batch_mode="per_token"),
         "union_gate_up": DispatchConfig(batch_mode="union", exact_kernel="gate_up"),
         "union_split": DispatchConfig(batch_mode="union", exact_kernel="split")}


def make_ffn(d, f, activation, threshold, mode, gate_bias, seed, biases=False):
    return random_ffn(d, f, activation, threshold, MODES[mode], gate_bias, seed, biases)


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("activation,threshold", ACTIVATIONS)
@pytest.mark.parametrize("d,f,tokens", SHAPES)
def test_no_predictor_matches_float64(d, f, tokens, activation, threshold, mode, pattern, monkeypatch):
    if mode == "union_gate_up":
        _gate_up_only(monkeypatch)
    ffn, ref = make_ffn(d, f, activation, threshold, mode, PATTERNS[pattern], seed=d + f + tokens,
                        biases=mode == "union_gate_up")
    x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(tokens))
    check(ffn(x), ref(x))


def _gate_up_only(monkeypatch):
    """Make the separate up kernel unreachable, so a passing exact_kernel="gate_up" test did fuse it."""
    from actsparse.kernels import triton_ffn

    def no_up(*_a, **_k):
        raise AssertionError("exact_kernel='gate_up' launched the separate up kernel")
    monkeypatch.setattr(triton_ffn, "launch_up", no_up)


@pytest.mark.parametrize("dtype,tokens,tol", [(torch.float16, 1, 2e-3), (torch.float16, 3, 2e-3),
                                              (torch.bfloat16, 1, 1e-2)])
def test_gate_up_half_precision(dtype, tokens, tol, monkeypatch):
    _gate_up_only(monkeypatch)
    g = torch.Generator().manual_seed(tokens)
    d, f = 40, 100
    w_gate, w_up = ((torch.randn(f, d, generator=g) / d ** 0.5).to(dtype) for _ in range(2))
    w_down = (torch.randn(d, f, generator=g) / f ** 0.5).to(dtype)
    ffn = SparseFFN(w_gate, w_up, w_down.T.contiguous(), dispatch=MODES["union_gate_up"])
    ffn.workspace_alloc = poisoned_empty
    x = torch.randn(tokens, d, generator=g).to(dtype)
    y = ffn(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, reference_ffn(x, w_gate, w_up, w_down, "relu")) < tol


def _active(kind, fraction, tokens, f, seed):
    g = torch.Generator().manual_seed(seed)
    rows = 1 if kind != "mask2d" else tokens
    mask = torch.rand(rows, f, generator=g) < fraction
    if kind == "index":
        return torch.nonzero(mask[0]).flatten(), mask
    if kind == "index32":  # the kernels' own list type, in no particular order (a predictor's top-k)
        ids = torch.nonzero(mask[0]).flatten()
        return ids[torch.randperm(ids.numel(), generator=g)].to(torch.int32), mask
    return (mask[0] if kind == "mask1d" else mask), mask


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("kind", ["mask1d", "mask2d", "index", "index32"])
@pytest.mark.parametrize("mode", ["union", "per_token"])
@pytest.mark.parametrize("activation,threshold", [ACTIVATIONS[0], ACTIVATIONS[2]])
@pytest.mark.parametrize("d,f,tokens", [SHAPES[0], SHAPES[1]])
def test_predicted_set_matches_float64(d, f, tokens, activation, threshold, mode, kind, fraction):
    ffn, ref = make_ffn(d, f, activation, threshold, mode, 0.0, seed=f + tokens, biases=True)
    x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(3))
    active, mask = _active(kind, fraction, tokens, f, seed=tokens)
    check(ffn(x, active), ref(x, mask))


def test_fatrelu_keeps_gate_equal_to_threshold():
    """FATReLU keeps g >= t (PAPERS.md): with x = 0 the gate equals its bias, set exactly to t."""
    ffn, ref = make_ffn(24, 72, "fatrelu", 0.5, "union", 0.0, seed=5, biases=True)
    ffn.b_gate = torch.full((72,), 0.5)
    x = torch.zeros(1, 24)
    y = ffn(x)
    expected = reference_ffn(x, ffn.w_gate, ffn.w_up, ffn.w_down_t.T, "fatrelu", 0.5, ffn.b_gate, ffn.b_up,
                             ffn.b_down)
    check(y, expected)
    assert rel_err(y, expected - ffn.b_down.double()) > 0.1  # the tie neurons did contribute


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dense_fallback_and_torch_backend(backend):
    """Calibrated at ~100% active, the dispatcher picks the dense path; uncalibrated, the sparse one."""
    ffn, ref = make_ffn(40, 100, "relu", 0.0, "union", 50.0, seed=9)
    ffn.backend = backend
    x = torch.randn(3, 40)
    assert ffn.calibrate(x) == 1.0
    check(ffn(x), ref(x))
    mask = torch.rand(100) < 0.5
    check(ffn(x, mask), ref(x, mask[None]))
    ffn.neuron_prob = None
    check(ffn(x), ref(x))


@pytest.mark.parametrize("dtype,tokens,tol", [(torch.float16, 1, 2e-3), (torch.float16, 3, 2e-3),
                                              (torch.bfloat16, 1, 1e-2)])
@pytest.mark.parametrize("mode", ["union", "per_token"])
def test_half_precision(dtype, tokens, tol, mode):
    """fp16 / bf16 weights and inputs (fp32 accumulation) against float64 of the same rounded values.
    bf16 with several tokens is left to test_gpu.py: the interpreter's bf16 `tl.dot` returns garbage
    (triton 3.9: a 16x16 bf16 dot is off by 1e9 relative, fp16 is exact), so only the GEMV path is run."""
    g = torch.Generator().manual_seed(tokens)
    d, f = 40, 100
    w_gate, w_up = ((torch.randn(f, d, generator=g) / d ** 0.5).to(dtype) for _ in range(2))
    w_down = (torch.randn(d, f, generator=g) / f ** 0.5).to(dtype)
    ffn = SparseFFN(w_gate, w_up, w_down.T.contiguous(), dispatch=DispatchConfig(batch_mode=mode))
    ffn.workspace_alloc = poisoned_empty
    x = torch.randn(tokens, d, generator=g).to(dtype)
    y = ffn(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, reference_ffn(x, w_gate, w_up, w_down, "relu")) < tol


# Version 2 predicted path (DispatchConfig(predicted_kernel="fused"), triton_predicted.py): union mode only.
FUSED_SHAPES = [(40, 100, 1), (24, 72, 5)]


def _fused_only(monkeypatch):
    """Make the Version 1 kernels unreachable, so a passing test did run the fused ones."""
    from actsparse.kernels import triton_ffn

    def version_1(*args, **kwargs):
        raise AssertionError("predicted_kernel='fused' ran the Version 1 kernels")
    monkeypatch.setattr(triton_ffn, "triton_sparse_ffn", version_1)


@pytest.mark.parametrize("biases", [True, False])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("kind", ["mask1d", "mask2d", "index"])
@pytest.mark.parametrize("activation,threshold", ACTIVATIONS)
@pytest.mark.parametrize("d,f,tokens", FUSED_SHAPES)
def test_fused_predicted_matches_float64(d, f, tokens, activation, threshold, kind, fraction, biases, monkeypatch):
    _fused_only(monkeypatch)
    ffn, _ = make_ffn(d, f, activation, threshold, "union", 0.0, seed=f + tokens, biases=biases)
    ffn.dispatch = DispatchConfig(predicted_kernel="fused")
    if not biases:
        ffn.b_gate = None  # no bias anywhere (make_ffn always gives the gate one)
    x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(3))
    active, mask = _active(kind, fraction, tokens, f, seed=tokens + 1)
    expected = reference_ffn(x, ffn.w_gate, ffn.w_up, ffn.w_down_t.T, activation, threshold, ffn.b_gate, ffn.b_up,
                             ffn.b_down, mask)
    y = ffn(x, active)
    if fraction == 0.0 and not biases:
        assert torch.equal(y, torch.zeros_like(y))  # nothing active, no bias: exactly zero (poison overwritten)
    else:
        check(y, expected)
    assert torch.equal(ffn(x, active), y)  # fixed summation order: identical bits on a repeat


def test_fused_per_token_config_and_dense_fallback(monkeypatch):
    """batch_mode='per_token' runs the fused kernels in union mode (same result); calibrated at ~100% active
    the dispatcher goes dense, with an index list too."""
    _fused_only(monkeypatch)
    ffn, ref = make_ffn(40, 100, "relu", 0.0, "per_token", 0.0, seed=11, biases=True)
    ffn.dispatch = DispatchConfig(batch_mode="per_token", predicted_kernel="fused")
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(4))
    active, mask = _active("mask2d", 0.3, 3, 100, seed=5)
    check(ffn(x, active), ref(x, mask))
    ffn.b_gate = ffn.b_gate + 50.0  # every neuron on: calibration measures 100%
    assert ffn.calibrate(x) == 1.0
    idx, mask1 = _active("index", 0.5, 3, 100, seed=6)
    expected = reference_ffn(x, ffn.w_gate, ffn.w_up, ffn.w_down_t.T, "relu", 0.0, ffn.b_gate, ffn.b_up,
                             ffn.b_down, mask1)
    check(ffn(x, idx), expected)


@pytest.mark.parametrize("tokens", [1, 5])
def test_fused_half_precision(tokens, monkeypatch):
    """fp16 through the fused kernels (fp32 accumulation) against float64 of the same rounded values."""
    _fused_only(monkeypatch)
    g = torch.Generator().manual_seed(tokens)
    d, f = 40, 100
    w_gate, w_up = ((torch.randn(f, d, generator=g) / d ** 0.5).half() for _ in range(2))
    w_down = (torch.randn(d, f, generator=g) / f ** 0.5).half()
    ffn = SparseFFN(w_gate, w_up, w_down.T.contiguous(), dispatch=DispatchConfig(predicted_kernel="fused"))
    ffn.workspace_alloc = poisoned_empty
    x = torch.randn(tokens, d, generator=g).half()
    mask = torch.rand(tokens, f, generator=g) < 0.3
    y = ffn(x, mask)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert rel_err(y, reference_ffn(x, w_gate, w_up, w_down, "relu", mask=mask)) < 2e-3


@pytest.mark.parametrize("mode", list(MODES))
def test_list_lengths_are_zero_again_after_every_call(mode):
    """No memset per call: the down kernel's last program zeroes the list lengths it read. Calls with different
    token counts, exact and predicted, on one SparseFFN each match float64, and leave its list state at zero."""
    ffn, ref = make_ffn(40, 100, "relu", 0.0, mode, 0.0, seed=11, biases=True)
    g = torch.Generator().manual_seed(12)
    for tokens in (1, 3, 5, 1):
        x = torch.randn(tokens, 40, generator=g)
        check(ffn(x), ref(x))
        assert ffn._list_state is not None and not ffn._list_state.any(), ffn._list_state
        mask = torch.rand(tokens, 100, generator=g) < 0.4
        check(ffn(x, mask), ref(x, mask))
        assert not ffn._list_state.any(), ffn._list_state


# Predicted set at batch 1 with the compaction inside the up kernel (predicted_kernel="lists_inline").
def _inline_compact_only(monkeypatch):
    """Make the separate compaction and up kernels unreachable, so a passing test did run compact_up_kernel."""
    from actsparse.kernels import triton_ffn

    def unreachable(*_a, **_k):
        raise AssertionError("predicted_kernel='lists_inline' at batch 1 ran the separate compaction / up kernel")
    monkeypatch.setattr(triton_ffn, "compact_mask", unreachable)
    monkeypatch.setattr(triton_ffn, "launch_up", unreachable)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("kind", ["mask1d", "mask2d", "index"])
@pytest.mark.parametrize("activation,threshold", ACTIVATIONS)
@pytest.mark.parametrize("d,f", [(24, 72), (40, 100)])
def test_inline_compaction_matches_float64(d, f, activation, threshold, kind, fraction, monkeypatch):
    _inline_compact_only(monkeypatch)
    ffn, ref = make_ffn(d, f, activation, threshold, "union", 0.0, seed=f + 7, biases=True)
    ffn.dispatch = DispatchConfig(predicted_kernel="lists_inline")
    g = torch.Generator().manual_seed(d)
    for _ in range(2):   # twice on one SparseFFN: the list lengths must be zero again in between
        x = torch.randn(1, d, generator=g)
        active, mask = _active(kind, fraction, 1, f, seed=int(torch.randint(0, 1000, (1,), generator=g)))
        check(ffn(x, active), ref(x, mask))
        assert not ffn._list_state.any()


def test_inline_compaction_leaves_batches_to_version_1():
    """Several tokens: "lists_inline" runs Version 1's kernels (the inline kernel is for one token)."""
    ffn, ref = make_ffn(40, 100, "relu", 0.0, "union", 0.0, seed=3, biases=True)
    ffn.dispatch = DispatchConfig(predicted_kernel="lists_inline")
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(4))
    mask = torch.rand(3, 100, generator=torch.Generator().manual_seed(5)) < 0.3
    check(ffn(x, mask), ref(x, mask))


def test_default_dispatch_runs_gate_up_at_8_tokens(monkeypatch):
    """exact_kernel="auto" (the default): 8 tokens take the two-launch gate_up path, and it stays exact."""
    _gate_up_only(monkeypatch)
    g = torch.Generator().manual_seed(8)
    d, f = 24, 72
    w_gate, w_up = (torch.randn(f, d, generator=g) / d ** 0.5 for _ in range(2))
    w_down = torch.randn(d, f, generator=g) / f ** 0.5
    b_gate = torch.randn(f, generator=g) * 0.5
    ffn = SparseFFN(w_gate, w_up, w_down.T.contiguous(), b_gate)
    ffn.workspace_alloc = poisoned_empty
    x = torch.randn(8, d, generator=g)
    check(ffn(x), reference_ffn(x, w_gate, w_up, w_down, "relu", b_gate=b_gate))


# One token through the rows kernel (exact_kernel / predicted_kernel "rows", triton_rows_ffn.py).
ROWS = DispatchConfig(exact_kernel="rows", predicted_kernel="rows")


def _rows_only(monkeypatch, one_step_d=True):
    """Make the up and down kernels unreachable, so a passing test did run the rows kernel; `one_step_d` False
    makes it walk the W_down^T rows 16 columns at a time (the path of d_model > MAX_ONE_STEP_D)."""
    from actsparse.kernels import triton_ffn, triton_rows_ffn

    def unreachable(*_a, **_k):
        raise AssertionError("the rows path at one token ran the separate up / down kernels")
    monkeypatch.setattr(triton_ffn, "launch_up", unreachable)
    monkeypatch.setattr(triton_ffn, "launch_down", unreachable)
    if not one_step_d:
        monkeypatch.setattr(triton_rows_ffn, "MAX_ONE_STEP_D", 16)


def _state_is_zero(ffn):
    assert not ffn._list_state.any() and not ffn._rows_acc.any() and not ffn._tickets.any()


@pytest.mark.parametrize("one_step_d", [True, False])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("activation,threshold", ACTIVATIONS)
@pytest.mark.parametrize("d,f", [(24, 72), (40, 100)])
def test_rows_kernel_exact_matches_float64(d, f, activation, threshold, pattern, one_step_d, monkeypatch):
    _rows_only(monkeypatch, one_step_d)
    ffn, ref = make_ffn(d, f, activation, threshold, "union", PATTERNS[pattern], seed=d + f, biases=True)
    ffn.dispatch = ROWS
    g = torch.Generator().manual_seed(f)
    for _ in range(2):   # twice on one SparseFFN: its list length, sum row and ticket must be zero in between
        x = torch.randn(1, d, generator=g)
        check(ffn(x), ref(x))
        _state_is_zero(ffn)


@pytest.mark.parametrize("one_step_d", [True, False])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("kind", ["mask1d", "mask2d", "index", "index32"])
@pytest.mark.parametrize("activation,threshold", [ACTIVATIONS[0], ACTIVATIONS[2]])
def test_rows_kernel_predicted_matches_float64(activation, threshold, kind, fraction, one_step_d, monkeypatch):
    _rows_only(monkeypatch, one_step_d)
    d, f = 40, 100
    ffn, ref = make_ffn(d, f, activation, threshold, "union", 0.0, seed=5, biases=True)
    ffn.dispatch = ROWS
    g = torch.Generator().manual_seed(6)
    for _ in range(2):
        x = torch.randn(1, d, generator=g)
        active, mask = _active(kind, fraction, 1, f, seed=int(torch.randint(0, 1000, (1,), generator=g)))
        check(ffn(x, active), ref(x, mask))
        _state_is_zero(ffn)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_rows_kernel_half_precision(dtype, tol, monkeypatch):
    _rows_only(monkeypatch)
    g = torch.Generator().manual_seed(9)
    d, f = 40, 100
    w_gate, w_up = ((torch.randn(f, d, generator=g) / d ** 0.5).to(dtype) for _ in range(2))
    w_down = (torch.randn(d, f, generator=g) / f ** 0.5).to(dtype)
    ffn = SparseFFN(w_gate, w_up, w_down.T.contiguous(), dispatch=ROWS)
    ffn.workspace_alloc = poisoned_empty
    x = torch.randn(1, d, generator=g).to(dtype)
    idx = torch.randperm(f, generator=g)[:37].to(torch.int32)
    mask = torch.zeros(1, f, dtype=torch.bool).index_fill_(1, idx.long(), True)
    for y, m in ((ffn(x), None), (ffn(x, idx), mask)):
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert rel_err(y, reference_ffn(x, w_gate, w_up, w_down, "relu", mask=m)) < tol


def test_rows_kernel_leaves_batches_to_the_other_kernels():
    """Several tokens with "rows": the split / lists kernels run, still exact."""
    ffn, ref = make_ffn(40, 100, "relu", 0.0, "union", 0.0, seed=3, biases=True)
    ffn.dispatch = ROWS
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(4))
    mask = torch.rand(3, 100, generator=torch.Generator().manual_seed(5)) < 0.3
    check(ffn(x), ref(x))
    check(ffn(x, mask), ref(x, mask))
    assert ffn._rows_acc is None or not ffn._rows_acc.any()


# One token with DispatchConfig(down_kernel="atomic"): the up kernel, then the rows kernel given x1 (no split-K).
def _atomic_down_only(monkeypatch):
    from actsparse.kernels import triton_ffn

    def unreachable(*_a, **_k):
        raise AssertionError("down_kernel='atomic' at one token ran the split-K down kernel")
    monkeypatch.setattr(triton_ffn, "launch_down", unreachable)


@pytest.mark.parametrize("exact_kernel", ["split", "gate_up"])
@pytest.mark.parametrize("kind", ["exact", "mask1d", "index32"])
@pytest.mark.parametrize("activation,threshold", ACTIVATIONS)
def test_atomic_down_matches_float64(activation, threshold, kind, exact_kernel, monkeypatch):
    _atomic_down_only(monkeypatch)
    d, f = 40, 100
    ffn, ref = make_ffn(d, f, activation, threshold, "union", 0.0, seed=13, biases=True)
    ffn.dispatch = DispatchConfig(down_kernel="atomic", exact_kernel=exact_kernel)
    g = torch.Generator().manual_seed(14)
    for fraction in (0.0, 0.3, 1.0):
        x = torch.randn(1, d, generator=g)
        if kind == "exact":
            check(ffn(x), ref(x))
        else:
            active, mask = _active(kind, fraction, 1, f, seed=int(torch.randint(0, 1000, (1,), generator=g)))
            check(ffn(x, active), ref(x, mask))
        _state_is_zero(ffn)


def test_down_kernel_is_checked():
    with pytest.raises(ValueError, match="down_kernel"):
        DispatchConfig(down_kernel="tree")


def test_default_dispatch_runs_the_rows_kernel_at_one_token(monkeypatch):
    """exact_kernel="auto" (the default): one token takes the gate kernel and the rows kernel, and stays exact."""
    _rows_only(monkeypatch)
    ffn, ref = make_ffn(40, 100, "relu", 0.0, "union", 0.0, seed=21, biases=True)
    ffn.dispatch = DispatchConfig()
    x = torch.randn(1, 40, generator=torch.Generator().manual_seed(22))
    check(ffn(x), ref(x))
    _state_is_zero(ffn)


# One token's exact path in one kernel (DispatchConfig(exact_kernel="gate_rows"), triton_gate_rows.py).
GATE_ROWS = DispatchConfig(exact_kernel="gate_rows")


def _gate_rows_only(monkeypatch):
    """Make every other kernel of the exact path unreachable, so a passing test did run the one kernel."""
    from actsparse.kernels import triton_ffn, triton_rows_ffn

    def unreachable(*_a, **_k):
        raise AssertionError("exact_kernel='gate_rows' at one token ran another kernel")
    for name in ("launch_up", "launch_down", "launch_gate"):
        monkeypatch.setattr(triton_ffn, name, unreachable)
    monkeypatch.setattr(triton_rows_ffn, "launch_rows", unreachable)


@pytest.mark.parametrize("stages", [0, 3])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("activation,threshold", [a for a in ACTIVATIONS if a[0] != "drelu"])
@pytest.mark.parametrize("d,f", [(24, 72), (40, 100), (33, 7)])
def test_gate_rows_kernel_exact_matches_float64(d, f, activation, threshold, pattern, stages, monkeypatch):
    """Odd shapes (f=7: fewer neuron blocks than programs), every activation it serves, gate / up / down biases,
    no neuron / half / every neuron active; twice on one SparseFFN (its sum row and ticket must be zero between).
    Both loops: pipelined by hand (STAGES 0) and the plain loop Triton pipelines (STAGES 3; the interpreter runs it
    in order, so this checks its arithmetic, not the overlap)."""
    from actsparse.kernels import triton_gate_rows
    _gate_rows_only(monkeypatch)
    monkeypatch.setitem(triton_gate_rows.gate_rows_kernel.values, "STAGES", lambda _args: stages)
    ffn, ref = make_ffn(d, f, activation, threshold, "union", PATTERNS[pattern], seed=d + f + 1, biases=True)
    ffn.dispatch = GATE_ROWS
    g = torch.Generator().manual_seed(f + 1)
    for _ in range(2):
        x = torch.randn(1, d, generator=g)
        check(ffn(x), ref(x))
        _state_is_zero(ffn)


@pytest.mark.parametrize("case", ["drelu", "wide", "predicted", "batch"])
def test_gate_rows_leaves_other_calls_to_the_other_kernels(case, monkeypatch):
    """dReLU and d_model > MAX_ONE_STEP_D fall back to the gate + rows kernels (said once in the log); a predicted
    set and several tokens take their own kernels. All stay exact, and the one kernel is not launched."""
    from actsparse.kernels import triton_gate_rows, triton_rows_ffn

    def unreachable(*_a, **_k):
        raise AssertionError("the one-kernel exact path ran where it does not apply")
    monkeypatch.setattr(triton_gate_rows, "launch_gate_rows", unreachable)
    if case == "wide":
        monkeypatch.setattr(triton_rows_ffn, "MAX_ONE_STEP_D", 16)
    activation = "drelu" if case == "drelu" else "relu"
    ffn, ref = make_ffn(40, 100, activation, 0.0, "union", 0.0, seed=31, biases=True)
    ffn.dispatch = GATE_ROWS
    g = torch.Generator().manual_seed(32)
    x = torch.randn(3 if case == "batch" else 1, 40, generator=g)
    if case == "predicted":
        active, mask = _active("mask1d", 0.3, 1, 100, seed=33)
        check(ffn(x, active), ref(x, mask))
    else:
        check(ffn(x), ref(x))


# One token with fp32_out (SparseFFN.forward): the gate kernel sets the fp32 output row to b_down and the rows kernel
# adds its sums into it, with no epilogue; other paths cast their output.
@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("activation,threshold", ACTIVATIONS)
def test_fp32_out_rows_path_matches_float64(activation, threshold, pattern, biases, monkeypatch):
    if activation != "drelu":
        _rows_only(monkeypatch)
    from actsparse.kernels import triton_rows_ffn
    seen = []
    launch = triton_rows_ffn.launch_rows
    monkeypatch.setattr(triton_rows_ffn, "launch_rows", lambda *a, **k: seen.append(k.get("sum_is_out")) or launch(*a, **k))
    ffn, ref = make_ffn(40, 100, activation, threshold, "union", PATTERNS[pattern], seed=41, biases=biases)
    ffn.dispatch = DispatchConfig()
    assert ffn.sums_in_fp32(1, False) == (activation != "drelu")  # "auto" leaves dReLU on the split kernels
    g = torch.Generator().manual_seed(42)
    for _ in range(3):   # the output is a fresh (NaN-poisoned) buffer each call; the list length goes back to 0
        x = torch.randn(1, 40, generator=g)
        y = ffn(x, fp32_out=True)
        assert y.dtype == torch.float32
        check(y, ref(x))
        _state_is_zero(ffn)
    assert seen == ([True] * 3 if activation != "drelu" else [])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp32_out_half_precision_is_the_sum_before_rounding(dtype, monkeypatch):
    """fp16 / bf16 weights: fp32_out gives the fp32 sum, which rounds to what the default call returns (both sum the
    same neurons in fp32; the rows kernel's atomics may order them differently: one output ulp)."""
    _rows_only(monkeypatch)
    g = torch.Generator().manual_seed(43)
    d, f = 40, 100
    w_gate, w_up = ((torch.randn(f, d, generator=g) / d ** 0.5).to(dtype) for _ in range(2))
    w_down = (torch.randn(d, f, generator=g) / f ** 0.5).to(dtype)
    b_down = torch.randn(d, generator=g).to(dtype)
    ffn = SparseFFN(w_gate, w_up, w_down.T.contiguous(), b_down=b_down)
    ffn.workspace_alloc = poisoned_empty
    x = torch.randn(1, d, generator=g).to(dtype)
    y32, y = ffn(x, fp32_out=True), ffn(x)
    assert y32.dtype == torch.float32 and y.dtype == dtype
    ref = reference_ffn(x, w_gate, w_up, w_down, "relu", b_down=b_down)
    assert rel_err(y32, ref) < (2e-3 if dtype == torch.float16 else 1e-2)
    ulp = torch.finfo(dtype).eps * y.float().abs().clamp_min(1e-3)
    assert ((y32.to(dtype).float() - y.float()).abs() <= ulp).all()


@pytest.mark.parametrize("case", ["batch", "predicted", "split", "gate_rows", "plain_gate"])
def test_fp32_out_elsewhere_casts(case, monkeypatch, caplog):
    """Where the output is not the rows kernel's sum (several tokens, a predicted set, other exact kernels) fp32_out
    returns the usual output as float32; with the plain gate kernel (no TMA) the rows path still sums into the fp32
    output, set by one more launch (said once in the log)."""
    from actsparse.kernels import dispatch, triton_gate_tma
    ffn, ref = make_ffn(40, 100, "relu", 0.0, "union", 0.0, seed=44, biases=True)
    ffn.dispatch = DispatchConfig(exact_kernel={"split": "split", "gate_rows": "gate_rows"}.get(case, "auto"))
    if case == "plain_gate":
        monkeypatch.setattr(triton_gate_tma, "tma_unusable", lambda *_a: "a test")
        monkeypatch.setattr(dispatch, "_warned", set())
    g = torch.Generator().manual_seed(45)
    x = torch.randn(3 if case == "batch" else 1, 40, generator=g)
    active, mask = _active("mask1d", 0.3, 1, 100, seed=46) if case == "predicted" else (None, None)
    assert ffn.sums_in_fp32(x.shape[0], active is not None) == (case == "plain_gate")
    with caplog.at_level("WARNING"):
        y = ffn(x, active, fp32_out=True)
    assert y.dtype == torch.float32
    check(y, ref(x, mask))
    if case == "plain_gate":
        assert any("one more launch" in r.message for r in caplog.records)
