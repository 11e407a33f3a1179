"""A low-rank predictor handed to the kernels as a LowRankLogits (triton_predictor_list.py), under TRITON_INTERPRET=1.

The list kernel's set against the predicted set computed in float64; SparseFFN given the predictor against the
float64 FFN restricted to that set (outputs poisoned with NaN); the decoding module and the trained predictors'
module hand the predictor over at one token, and their outputs equal the mask path's.
"""
import copy
import importlib.util

import pytest
import torch
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels import DispatchConfig, SparseFFN  # noqa: E402
from actsparse.modeling.predictors import LowRankLogits  # noqa: E402

from ffn_reference import check, poisoned_empty, random_ffn, reference_ffn  # noqa: E402
from low_rank_cases import CUTS, make_predictor, predictor_with_cut  # noqa: E402

D, F, RANK = 40, 100, 21          # odd sizes; the (24, 301, 130) shape takes three of the interpreter's BLOCK_K 64 steps
UNION = DispatchConfig(batch_mode="union")
@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize("cut_kind", list(CUTS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("relu_hidden", [True, False])
@pytest.mark.parametrize("d,f,rank", [(D, F, RANK), (24, 301, 130), (40, 100, 44)])   # 44: 176-byte rows, TMA
def test_list_kernel_writes_the_float64_set(d, f, rank, relu_hidden, bias, cut_kind, prefetch, monkeypatch):
    """Plain loads (rows not 16-byte aligned) or TMA tiles (rank 44 in fp32), against the float64 set; with
    `prefetch` (what PDL takes) the GEMV that loads its programs' whole rows first."""
    from actsparse.kernels import triton_predictor_list
    from actsparse.kernels.triton_predictor_list import launch_predictor_list
    pred = make_predictor(d, f, rank, relu_hidden, bias, seed=f + rank)
    x = torch.randn(1, d, generator=torch.Generator().manual_seed(5))
    low_rank, expected = predictor_with_cut(pred, x, cut_kind)
    counts = torch.zeros(2, dtype=torch.int32)
    idx = torch.full((f,), -7, dtype=torch.int32)
    launched = []
    for name in ("predictor_list_kernel", "predictor_list_tma_kernel"):
        kernel = getattr(triton_predictor_list, name)
        monkeypatch.setattr(kernel, "run", lambda *a, _k=kernel.run, _n=name, **kw: launched.append(_n) or _k(*a, **kw))
    from actsparse.kernels.triton_gemv_prefetch import gemv_prefetch_kernel
    monkeypatch.setattr(gemv_prefetch_kernel, "run",
                        lambda *a, _k=gemv_prefetch_kernel.run, **kw: launched.append("gemv_prefetch") or _k(*a, **kw))
    launch_predictor_list(x, low_rank, counts, idx, prefetch=prefetch)
    list_kernel = "predictor_list_tma_kernel" if rank * 4 % 16 == 0 else "predictor_list_kernel"
    assert launched == (["gemv_prefetch"] if prefetch else []) + [list_kernel]   # down's rows: 96 / 160 bytes
    n = int(counts[0])
    assert n == int(expected.sum())
    assert idx[:n].unique().numel() == n   # each neuron once
    assert torch.equal(idx[:n].sort().values.long(), torch.nonzero(expected[0]).flatten())


@pytest.mark.parametrize("predicted_kernel", ["auto", "lists"])
@pytest.mark.parametrize("cut_kind", list(CUTS))
@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("activation,threshold", [("relu", 0.0), ("fatrelu", 0.25), ("relu2", 0.0)])
def test_sparse_ffn_given_the_predictor_matches_float64(activation, threshold, tokens, cut_kind, predicted_kernel):
    """One token on the rows path: the list kernel + rows kernel; several tokens or the lists kernels: the mask."""
    ffn, ref = random_ffn(D, F, activation, threshold, DispatchConfig(batch_mode="union",
                          predicted_kernel=predicted_kernel), 0.0, seed=7, biases=True)
    pred = make_predictor(D, F, RANK, True, True, seed=9)
    x = torch.randn(tokens, D, generator=torch.Generator().manual_seed(tokens))
    low_rank, mask = predictor_with_cut(pred, x, cut_kind)
    check(ffn(x, low_rank), ref(x, mask))
    assert not ffn._list_state.any(), ffn._list_state   # the rows kernel left the list length at zero
    check(ffn(x, low_rank), ref(x, mask))                # and a second call sees an empty list


@pytest.mark.parametrize("cut_kind", list(CUTS))
@pytest.mark.parametrize("biases", [False, True])
def test_fp32_out_the_list_kernel_sets_the_sum_row(biases, cut_kind, monkeypatch):
    """fp32_out at one token: the list kernel sets the fp32 output row to b_down (or 0) and the rows kernel adds into it
    with no epilogue (sum_is_out); against float64 with the output poisoned, three calls on one SparseFFN (list length,
    ticket left at zero); sums_in_fp32 says so for a LowRankLogits only; the rows kernel reads gate rows first
    (DispatchConfig.gate_first None: on for the predictor's own list)."""
    from actsparse.kernels import triton_rows_ffn
    seen = []
    launch = triton_rows_ffn.launch_rows
    monkeypatch.setattr(triton_rows_ffn, "launch_rows",
                        lambda *a, **k: seen.append((k.get("sum_is_out"), k.get("gate_first"))) or launch(*a, **k))
    ffn, ref = random_ffn(D, F, "relu", 0.0, UNION, 0.0, seed=15, biases=biases)
    assert ffn.sums_in_fp32(1, True, low_rank=True) and not ffn.sums_in_fp32(1, True)
    assert not ffn.sums_in_fp32(3, True, low_rank=True)
    pred = make_predictor(D, F, RANK, True, True, seed=16)
    g = torch.Generator().manual_seed(17)
    for _ in range(3):
        x = torch.randn(1, D, generator=g)
        low_rank, mask = predictor_with_cut(pred, x, cut_kind)
        y = ffn(x, low_rank, fp32_out=True)
        assert y.dtype == torch.float32
        check(y, ref(x, mask))
        assert not ffn._list_state.any() and not ffn._tickets.any()
    assert seen == [(True, True)] * 3   # and the predictor's false positives cost their gate rows only


def test_sparse_ffn_takes_the_predictor_source(monkeypatch):
    """A pre_norm predictor reads `source`, not the FFN input; and the list kernel is what ran."""
    from actsparse.kernels import triton_predictor_list
    launches = []
    launch = triton_predictor_list.launch_predictor_list
    monkeypatch.setattr(triton_predictor_list, "launch_predictor_list",
                        lambda *a, **k: launches.append(1) or launch(*a, **k))
    ffn, ref = random_ffn(D, F, "relu", 0.0, UNION, 0.0, seed=3, biases=False)
    pred = make_predictor(D, F, RANK, True, False, seed=4)
    g = torch.Generator().manual_seed(6)
    x, source = torch.randn(1, D, generator=g), torch.randn(1, D, generator=g)
    low_rank, mask = predictor_with_cut(pred, source, "some")
    check(ffn(x, low_rank._replace(source=source)), ref(x, mask))
    assert launches == [1]


def test_dense_plan_and_torch_backend_take_the_mask():
    """Where the dispatcher picks dense (every neuron active in calibration) or the torch backend runs, the
    predictor's PyTorch mask restricts x1 instead: same result."""
    byte_ratio_only = DispatchConfig(batch_mode="union", cost_model=None, max_byte_ratio=0.5)
    ffn, ref = random_ffn(D, F, "relu", 0.0, byte_ratio_only, 50.0, seed=8, biases=True)
    x = torch.randn(1, D, generator=torch.Generator().manual_seed(2))
    ffn.calibrate(torch.randn(8, D))
    assert ffn._plan(1, True).path == "dense"
    low_rank, mask = predictor_with_cut(make_predictor(D, F, RANK, False, True, seed=1), x, "some")
    check(ffn(x, low_rank), ref(x, mask))
    torch_ffn = copy.copy(ffn)
    torch_ffn.backend, torch_ffn._plans = "torch", {}
    check(torch_ffn(x, low_rank), ref(x, mask))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_through_the_gemv(dtype):
    """fp16 / bf16 with d_model a multiple of 8: the predictor's first layer runs through the TMA GEMV (emulated
    here), the rest as above; against float64 on the same half-precision weights, with a wide gap at the cut."""
    d, f, rank = 64, 200, 48
    g = torch.Generator().manual_seed(21)
    w_gate, w_up = (torch.randn(f, d, generator=g) / d ** 0.5 for _ in range(2))
    w_down = torch.randn(d, f, generator=g) / f ** 0.5
    w_gate, w_up, w_down = (w.to(dtype) for w in (w_gate, w_up, w_down))
    ffn = SparseFFN(w_gate, w_up, w_down.T.contiguous(), activation="relu", dispatch=DispatchConfig())
    ffn.workspace_alloc = poisoned_empty
    pred = make_predictor(d, f, rank, True, True, seed=22, dtype=dtype)
    x = torch.randn(1, d, generator=g).to(dtype)
    low_rank, mask = predictor_with_cut(pred, x, "some", gap=2e-2)
    y = ffn(x, low_rank)
    ref = reference_ffn(x, w_gate, w_up, w_down, "relu", mask=mask)
    assert torch.isfinite(y).all()
    assert float((y.double() - ref).norm() / ref.norm()) < 2e-2


class _SVDLike(torch.nn.Module):
    """A predictor that describes itself (bench_predictor.GateSVDPredictor's protocol) and counts its own calls."""

    def __init__(self, pred, cut):
        super().__init__()
        self.low_rank = LowRankLogits(*pred, cut)
        self.calls = 0

    def low_rank_logits(self):
        return self.low_rank

    def forward(self, x):
        self.calls += 1
        return self.low_rank.mask(x)


def test_decoding_module_hands_the_predictor_over_at_one_token():
    from actsparse.kernels.sparse_decoding import SparseDecodingMLP
    ffn, _ = random_ffn(D, F, "relu", 0.0, UNION, 0.0, seed=12, biases=True)
    pred = make_predictor(D, F, RANK, False, True, seed=13)
    g = torch.Generator().manual_seed(14)
    one, three = torch.randn(1, 1, D, generator=g), torch.randn(1, 3, D, generator=g)
    low_rank, _ = predictor_with_cut(pred, torch.cat([one, three], 1)[0], "some")
    fused, plain = SparseDecodingMLP(ffn), SparseDecodingMLP(ffn, fuse_predictor=False)
    fused.predictor = _SVDLike(pred, low_rank.cut)
    plain.predictor = _SVDLike(pred, low_rank.cut)
    # One token: the fused path's fp32 sum starts from b_down (set by the list kernel), the mask path's rows kernel adds
    # b_down to its sum at the end: the same terms in another order.
    torch.testing.assert_close(fused(one), plain(one), rtol=1e-6, atol=1e-6)
    assert fused.predictor.calls == 0 and plain.predictor.calls == 1   # one token: described, not called
    assert torch.equal(fused(three), plain(three))
    assert fused.predictor.calls == 1                                  # several tokens: its mask


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_compiled_decode_passes_the_predictor_to_the_op(monkeypatch):
    """Under torch.compile the predictor's weights reach the custom op (which rebuilds the LowRankLogits), and the
    greedy tokens equal those of the uncompiled model with the same predictor."""
    from actsparse.kernels.compiled_decoding import compile_model
    from actsparse.kernels.sparse_decoding import greedy_decode, swap_in_sparse_ffns
    from actsparse.modeling import sparsify
    from tiny_models import random_ids, tiny_llama
    model = sparsify(tiny_llama(num_hidden_layers=1), "relu")
    ids = random_ids(batch=1, seq=5)
    (mlp,) = swap_in_sparse_ffns(model, backend="triton")
    d, f = mlp.ffn.w_gate.shape[1], mlp.ffn.d_ff
    mlp.predictor = _SVDLike(make_predictor(d, f, 8, True, True, seed=30), 0.0)
    eager_out = greedy_decode(model, ids, 4)
    seen = []
    forward = SparseFFN.forward

    def recording(self, x, active=None, fp32_out=False):
        seen.append((x.shape[0], type(active).__name__))
        return forward(self, x, active, fp32_out)
    monkeypatch.setattr(SparseFFN, "forward", recording)
    torch._dynamo.reset()
    compile_model(model, backend="aot_eager")
    assert torch.equal(greedy_decode(model, ids, 4), eager_out)
    assert (1, "LowRankLogits") in seen and all(kind == "Tensor" for n, kind in seen if n > 1)
    torch._dynamo.reset()


def test_trained_predictor_module_hands_its_predictor_over():
    """PredictedSparseMLP (trained predictors, threshold rule) with the kernels' SparseFFN: one token goes as a
    LowRankLogits, several as the mask; both equal the module's own PyTorch mask path."""
    from actsparse.modeling.predictors import ActiveRule, LowRankPredictor, PredictedSparseMLP
    from actsparse.modeling.sparse_mlp import SparseGatedMLP
    from torch import nn
    torch.manual_seed(40)
    gate, up, down = nn.Linear(D, F, bias=False), nn.Linear(D, F, bias=False), nn.Linear(F, D, bias=False)
    mlp = SparseGatedMLP(gate, up, down, nn.ReLU(), "relu", 0.0, 0)
    predictor = LowRankPredictor(D, F, RANK)
    module = PredictedSparseMLP(mlp, predictor, "mlp_input", ActiveRule("threshold", 0.4))
    with torch.no_grad():
        for tokens in (1, 3):
            x = torch.randn(1, tokens, D)
            reference = module(x)
            seen = []
            ffn = SparseFFN.from_mlp(mlp, "relu")
            ffn.workspace_alloc = poisoned_empty
            module.sparse_ffn = lambda flat, active: seen.append(type(active).__name__) or ffn(flat, active)
            out = module(x)
            module.sparse_ffn = None
            assert seen == ["LowRankLogits" if tokens == 1 else "Tensor"]
            assert torch.allclose(out, reference, rtol=1e-5, atol=1e-6)
