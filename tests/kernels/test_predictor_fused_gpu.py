"""GPU-only: the one-launch predictor kernel with its grid barrier (triton_predictor_fused.py), against the two-kernel
list path and float64, eagerly and replayed in CUDA graphs on new tokens (a program reading h before the barrier
opened would read the last call's h)."""
import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from actsparse.kernels import DispatchConfig, SparseFFN  # noqa: E402
from actsparse.kernels import triton_predictor_fused as fused  # noqa: E402
from actsparse.kernels.bench_data import make_weight_sets, neuron_probabilities, set_gate_bias  # noqa: E402
from actsparse.modeling.predictors import LowRankLogits  # noqa: E402


def _predictor(dtype, d, f, rank, relu_hidden, x):
    gen = torch.Generator(device="cuda").manual_seed(rank)
    down = (torch.randn(rank, d, device="cuda", generator=gen) / d ** 0.5).to(dtype)
    up = (torch.randn(f, rank, device="cuda", generator=gen) / rank ** 0.5).to(dtype)
    bias = (torch.randn(f, device="cuda", generator=gen) * 0.5).to(dtype)
    logits = _logits64(down, up, bias, relu_hidden, x)
    return LowRankLogits(down, up, bias, relu_hidden, float(logits.flatten().quantile(0.85)))


def _logits64(down, up, bias, relu_hidden, x):
    h = (x.double() @ down.double().T).to(down.dtype).double()
    return (h.clamp(min=0) if relu_hidden else h) @ up.double().T + bias.double()


def _listed(counts, idx, f):
    listed = torch.zeros(f, dtype=torch.bool, device="cuda")
    listed[idx[:int(counts[0])].long()] = True
    assert int(listed.sum()) == int(counts[0])   # each neuron once
    return listed


@pytest.mark.parametrize("block_n", [16, 32, 64])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,f,rank,relu_hidden", [(4096, 11008, 358, False), (4096, 11008, 384, True),
                                                  (1000, 3001, 100, True)])
def test_fused_list_matches_float64_in_graph_replays(d, f, rank, relu_hidden, dtype, block_n):
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(1, d, device="cuda", generator=gen).to(dtype)
    low_rank = _predictor(dtype, d, f, rank, relu_hidden, x)
    counts = torch.zeros(2, dtype=torch.int32, device="cuda")
    idx = torch.empty(f, dtype=torch.int32, device="cuda")
    out, b_down = torch.full((d,), float("nan"), device="cuda"), torch.randn(d, device="cuda").to(dtype)

    def call():
        counts.zero_()   # the rows kernel resets it in the FFN
        assert fused.launch_predictor_fused(x, low_rank, counts, idx, init_out=(out, b_down), block_n=block_n)

    def check(token):
        logits = _logits64(low_rank.down, low_rank.up, low_rank.bias, relu_hidden, token)[0]
        listed = _listed(counts, idx, f)
        clear = (logits - low_rank.cut).abs() > 2e-2
        assert torch.equal(listed[clear], (logits >= low_rank.cut)[clear])
        assert float(clear.float().mean()) > 0.95
        torch.testing.assert_close(out, b_down.float(), rtol=0, atol=0)
        state = fused.fused_state(rank, x.device)[1]
        assert not state.any(), state   # the barrier's counters reset for the next call

    call()
    torch.cuda.synchronize()
    check(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    for seed in range(4):
        x.copy_(torch.randn(1, d, device="cuda", generator=torch.Generator(device="cuda").manual_seed(10 + seed)))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        check(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sparse_ffn_fused_predictor_equals_two_kernels(dtype):
    """7B shape, 90%-sparse weights: DispatchConfig(predictor_fused=True) against the GEMV + list kernels, fp32_out,
    eagerly and in a CUDA graph replayed on new tokens."""
    d, f = 4096, 11008
    ws = make_weight_sets(d, f, dtype, "cuda", 1)[0]
    set_gate_bias(ws, neuron_probabilities(f, 0.9, torch.Generator().manual_seed(0)))
    gen = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(1, d, device="cuda", generator=gen).to(dtype)
    low_rank = _predictor(dtype, d, f, 360, False, x)
    one = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=DispatchConfig(predictor_fused=True))
    two = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=DispatchConfig())
    tokens = [torch.randn(1, d, device="cuda", generator=gen).to(dtype) for _ in range(3)]
    expected = []
    for token in tokens:
        x.copy_(token)
        expected.append(two(x, low_rank, fp32_out=True).clone())
        torch.testing.assert_close(one(x, low_rank, fp32_out=True), expected[-1], rtol=1e-3, atol=1e-3)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        one(x, low_rank, fp32_out=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = one(x, low_rank, fp32_out=True)
    for _ in range(2):
        for token, want in zip(tokens, expected):
            x.copy_(token)
            graph.replay()
            torch.testing.assert_close(out, want, rtol=1e-3, atol=1e-3)
    assert not one._list_state.any()
