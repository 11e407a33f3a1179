"""The predictor's two layers and the list in one launch (triton_predictor_fused.py), under TRITON_INTERPRET=1.

The interpreter runs the kernel's two phases as two launches (a grid barrier never opens when programs run one after
another): the list against the float64 predicted set, the output row it sets, SparseFFN with
DispatchConfig(predictor_fused=True) against float64, the fallbacks said once, and the residency arithmetic that
decides whether the barrier may run (against the limits written out by hand).
"""
import logging
from types import SimpleNamespace

import pytest
import torch
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels import DispatchConfig  # noqa: E402
from actsparse.kernels import triton_predictor_fused as fused  # noqa: E402

from ffn_reference import check, random_ffn  # noqa: E402
from low_rank_cases import CUTS, make_predictor, predictor_with_cut  # noqa: E402

D, F, RANK = 40, 100, 21


@pytest.mark.parametrize("cut_kind", list(CUTS))
@pytest.mark.parametrize("bias,relu_hidden", [(True, True), (False, False)])
@pytest.mark.parametrize("d,f,rank,block_n", [(D, F, RANK, 16), (24, 301, 130, 32), (40, 100, 5, 16),
                                              (1100, 50, 9, 16)])
def test_fused_launch_writes_the_float64_set(d, f, rank, block_n, relu_hidden, bias, cut_kind):
    """Fewer programs than rows of W1 (each loops over several), more (some compute none); ranks and d_model over
    several steps (the interpreter's BLOCK_K 16 / BLOCK_D 1024 when d > 1024); the output row set to b_down; the list
    equals the float64 set, each neuron once."""
    pred = make_predictor(d, f, rank, relu_hidden, bias, seed=f + rank)
    x = torch.randn(1, d, generator=torch.Generator().manual_seed(5))
    low_rank, expected = predictor_with_cut(pred, x, cut_kind)
    counts = torch.zeros(2, dtype=torch.int32)
    idx = torch.full((f,), -7, dtype=torch.int32)
    out, b_down = torch.full((d,), float("nan")), torch.randn(d)
    assert fused.launch_predictor_fused(x, low_rank, counts, idx, init_out=(out, b_down), block_n=block_n)
    n = int(counts[0])
    assert n == int(expected.sum())
    assert idx[:n].unique().numel() == n
    assert torch.equal(idx[:n].sort().values.long(), torch.nonzero(expected[0]).flatten())
    assert torch.equal(out, b_down)


@pytest.mark.parametrize("fp32_out", [False, True])
@pytest.mark.parametrize("cut_kind", ["some", "all"])
def test_sparse_ffn_with_the_fused_predictor_matches_float64(cut_kind, fp32_out, monkeypatch):
    """DispatchConfig(predictor_fused=True): the fused launch builds the list (the two-kernel path does not run), the
    rows kernel reads it; against float64 with poisoned workspaces, three calls (the list length left at zero)."""
    from actsparse.kernels import triton_predictor_list
    monkeypatch.setattr(triton_predictor_list, "launch_predictor_list",
                        lambda *a, **k: pytest.fail("the two-kernel path ran"))
    launched = []
    launch = fused.launch_predictor_fused
    monkeypatch.setattr(fused, "launch_predictor_fused", lambda *a, **k: launched.append(1) or launch(*a, **k))
    ffn, ref = random_ffn(D, F, "relu", 0.0, DispatchConfig(batch_mode="union", predictor_fused=True), 0.0, seed=31,
                          biases=True)
    pred = make_predictor(D, F, RANK, True, True, seed=32)
    g = torch.Generator().manual_seed(33)
    for _ in range(3):
        x = torch.randn(1, D, generator=g)
        low_rank, mask = predictor_with_cut(pred, x, cut_kind)
        check(ffn(x, low_rank, fp32_out=fp32_out), ref(x, mask))
        assert not ffn._list_state.any()
    assert launched == [1, 1, 1]


def test_unusable_call_falls_back_said_once(caplog):
    """Two tokens: nothing launched, False, the reason logged once over two calls."""
    from actsparse.kernels import dispatch
    dispatch._warned.clear()
    pred = make_predictor(D, F, RANK, True, True, seed=41)
    x = torch.randn(2, D, generator=torch.Generator().manual_seed(42))
    low_rank, _ = predictor_with_cut(pred, x[:1], "some")
    counts = torch.zeros(2, dtype=torch.int32)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert not fused.launch_predictor_fused(x, low_rank, counts, torch.empty(F, dtype=torch.int32))
    assert int(counts[0]) == 0
    said = [r.message for r in caplog.records if "one-launch predictor" in r.message]
    assert said == ["predictor list: the one-launch predictor kernel is unavailable (2 tokens (one token only)); "
                    "GEMV + list kernel"]


def _props(**kw):
    base = dict(multi_processor_count=132, max_threads_per_multi_processor=2048, regs_per_multiprocessor=65536,
                shared_memory_per_multiprocessor=233472)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("warps,regs,shared,per_sm", [
    (4, 80, 2048, 6),      # registers: 80 x 32 = 2560 per warp, 10240 per block, 65536 // 10240 = 6
    (4, 24, 2048, 16),     # threads: 2048 // 128 = 16 (registers would allow 65536 // (768 x 4) = 21)
    (8, 32, 100_000, 2),   # shared memory: 233472 // (100000 + 1024) = 2
    (1, 16, 0, 32),        # the 32-blocks-per-SM limit
    (4, 81, 0, 5),         # 81 x 32 = 2592 -> 2816 (units of 256) per warp: 65536 // 11264 = 5
])
def test_resident_programs_against_the_sm_limits(warps, regs, shared, per_sm, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: _props())
    compiled = SimpleNamespace(n_regs=regs, metadata=SimpleNamespace(num_warps=warps, shared=shared))
    assert fused.resident_programs(compiled, torch.device("cuda")) == per_sm * 132
