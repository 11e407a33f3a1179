"""The stream path (triton_stream_rows.py: TMA gate kernel in STREAM mode + rows consumer) under TRITON_INTERPRET=1.

Against a float64 dense FFN: odd d_model / d_ff, fp32, gate and up / down biases, every activation, none / some /
all neurons active, the output poisoned with NaN first; every call leaves the entries empty and the counters zero
(the next call needs no memset); the packed entries the gate kernel writes (act(gate) bits, id) against float64;
where the stream path cannot run (d_model too wide for whole W_down^T rows) the rows path runs and the log says so.
Under the interpreter programs run one after another (gate first): the concurrency itself is GPU-tested
(test_gpu.py: test_stream_path_chained_and_replayed_matches_rows_path).
"""
import logging

import pytest
import torch
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels import DispatchConfig, SparseFFN, dispatch, triton_rows_ffn  # noqa: E402
from actsparse.kernels.triton_gate_tma import launch_gate_tma  # noqa: E402
from actsparse.kernels.triton_stream_rows import stream_state  # noqa: E402

ACTIVATIONS = [("relu", 0.0), ("fatrelu", 0.25), ("drelu", 0.0), ("relu2", 0.0)]


def reference(x, wg, wu, wd_t, bg, bu, bd, activation, threshold):
    x = x.double()
    g = x @ wg.double().T + (0 if bg is None else bg.double())
    up = x @ wu.double().T + (0 if bu is None else bu.double())
    if activation == "fatrelu":
        a = torch.where(g >= threshold, g, torch.zeros_like(g))
    else:
        a = torch.clamp(g, min=0)
        a = a * a if activation == "relu2" else a
    if activation == "drelu":
        up = torch.clamp(up, min=0)
    return (a * up) @ wd_t.double() + (0 if bd is None else bd.double())


def _weights(d, f, seed, bias, gate_shift):
    g = torch.Generator().manual_seed(seed)
    wg, wu = (torch.randn(f, d, generator=g) / d ** 0.5 for _ in range(2))
    wd_t = torch.randn(f, d, generator=g) / f ** 0.5
    bg = gate_shift + 0.3 * torch.randn(f, generator=g) if bias else None
    bu = 0.1 * torch.randn(f, generator=g) if bias else None
    bd = 0.1 * torch.randn(d, generator=g) if bias else None
    x = torch.randn(1, d, generator=g)
    if not bias:  # the gate shift through the input instead: column 0 of x times the gate rows' sign
        wg[:, 0] = wg[:, 0].abs()
        x[0, 0] = gate_shift * d ** 0.5
    return x, wg, wu, wd_t, bg, bu, bd


def _not_the_rows_kernel(monkeypatch):
    def unreachable(*_a, **_k):
        raise AssertionError("the rows kernel ran: the stream path was not taken")
    monkeypatch.setattr(triton_rows_ffn, "launch_rows", unreachable)


def _poisoned(*shape, **kw):
    return torch.full(shape, float("nan"), **kw)


@pytest.mark.parametrize("gate_shift", [-50.0, 0.0, 50.0], ids=["none", "some", "all"])
@pytest.mark.parametrize("activation,threshold", ACTIVATIONS)
@pytest.mark.parametrize("d,f,bias", [(40, 100, True), (24, 37, False), (56, 33, True)])
def test_stream_path_matches_float64(d, f, bias, activation, threshold, gate_shift, monkeypatch):
    _not_the_rows_kernel(monkeypatch)
    x, wg, wu, wd_t, bg, bu, bd = _weights(d, f, d + f, bias, gate_shift)
    ffn = SparseFFN(wg, wu, wd_t, bg, bu, bd, activation=activation, threshold=threshold,
                    dispatch=DispatchConfig(exact_kernel="stream", stream_block_j=4))
    ffn.workspace_alloc = _poisoned
    ref = reference(x, wg, wu, wd_t, bg, bu, bd, activation, threshold)
    for _ in range(3):  # each call leaves the state as it found it
        out = ffn(x)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
        entries, sync = ffn._stream_state
        assert (entries == -1).all() and not sync.any()
        assert not ffn._list_state.any() and not ffn._rows_acc.any()


def test_gate_stream_mode_writes_packed_entries():
    """STREAM mode of the TMA gate kernel: entry = act(gate) bits << 32 | id for each active neuron (a set: the
    order follows the programs), -1 elsewhere; counts[0] the number listed; `done` the neurons covered (d_ff)."""
    x, wg, *_ = _weights(40, 100, 1, False, 0.0)
    entries, sync = stream_state(100, "cpu")
    counts = torch.zeros(65, dtype=torch.int32)
    launch_gate_tma(x, wg, None, "relu", 0.0, None, counts, None, stream=(entries, sync[1:2]))
    act = torch.clamp(x.double() @ wg.double().T, min=0)[0]
    n = int(counts[0])
    assert n == int((act > 0).sum()) and (entries[n:] == -1).all() and int(sync[1]) == 100
    ids = (entries[:n] & 0xFFFFFFFF).long()
    bits = (entries[:n] >> 32).to(torch.int32)
    assert torch.equal(torch.sort(ids).values, torch.nonzero(act > 0).flatten())
    torch.testing.assert_close(bits.view(torch.float32).double(), act[ids], rtol=1e-5, atol=1e-6)


def test_stream_path_falls_back_to_rows_for_wide_rows(monkeypatch, caplog):
    """d_model above MAX_ONE_STEP_D: the stream path's whole-row tiles do not apply; the rows path runs, said once."""
    monkeypatch.setattr(triton_rows_ffn, "MAX_ONE_STEP_D", 16)
    dispatch._warned.clear()
    x, wg, wu, wd_t, *_ = _weights(24, 37, 3, False, 0.0)
    ffn = SparseFFN(wg, wu, wd_t, dispatch=DispatchConfig(exact_kernel="stream"))
    with caplog.at_level(logging.WARNING):
        out = ffn(x)
        ffn(x)
    torch.testing.assert_close(out.double(), reference(x, wg, wu, wd_t, None, None, None, "relu", 0.0),
                               rtol=1e-4, atol=1e-5)
    assert sum("exact_kernel='stream'" in r.message for r in caplog.records) == 1
    assert ffn._stream_state[0].eq(-1).all()


def test_stream_settings_are_checked():
    with pytest.raises(ValueError, match="stream_programs"):
        DispatchConfig(stream_programs=0.0)
    with pytest.raises(ValueError, match="stream_block_j"):
        DispatchConfig(stream_block_j=3)
    assert DispatchConfig(exact_kernel="stream").stream(1, False) == (1.0, 2, 4)
    assert DispatchConfig(exact_kernel="stream").stream(2, False) is None
    assert DispatchConfig(exact_kernel="stream").stream(1, True) is None
