"""GPU-only checks of the predictor's logits and rows in one launch (triton_logits_rows.py; skipped on CPU): the 7B
shape with the stand-in predictor (rank 358, padded to 360: 16-byte rows of up) and an odd shape (rank 101: plain
loads), fp16 and bf16, claimed and strided chunks, against float64 and against the three-kernel path (GEMV, list
kernel, rows kernel) on the same inputs; repeated calls and CUDA-graph replays on changing tokens (the claim counter
and the ticket reset by each call, fp32 atomics from every program into one row).

The float64 reference takes the predictor's h as the GEMV wrote it (in the weights' dtype, as both paths read it) and
the set logit >= cut from it in float64. A logit within 1e-4 (relative) of the cut may fall either way in fp32: the
output must then match the reference with some subset of those neurons (at most 4 of them are allowed).
"""
import itertools

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from actsparse.kernels import SparseFFN  # noqa: E402
from actsparse.kernels.bench_data import (make_inputs, make_weight_sets, neuron_probabilities,  # noqa: E402
                                          set_gate_bias)
from actsparse.kernels.bench_predictor import GateSVDPredictor  # noqa: E402
from actsparse.kernels.triton_logits_rows import launch_logits_rows, logits_rows_state  # noqa: E402
from actsparse.kernels.triton_predictor_list import predictor_hidden  # noqa: E402
from actsparse.modeling.predictors import LowRankLogits  # noqa: E402

D, F, RANK = 4096, 11008, 358


@pytest.fixture(scope="module", params=[torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def seven_b(request):
    """(weights, LowRankLogits): 11% of the neurons truly active, 15% predicted (as probe_predictor_path)."""
    dtype = request.param
    ws = make_weight_sets(D, F, dtype, "cuda", 1)[0]
    set_gate_bias(ws, neuron_probabilities(F, 0.89, torch.Generator().manual_seed(0)))
    pred = GateSVDPredictor(ws.w_gate, None, RANK)
    pred.set_margin(make_inputs(64, D, dtype, "cuda", torch.Generator(device="cuda").manual_seed(1)), 0.15)
    return (ws.w_gate, None, ws.w_up, None, ws.w_down_t, None), pred.low_rank_logits()


def odd_case(dtype, seed=3):
    """1000 x 3001, rank 101 (rows of up not 16-byte aligned), every bias, predictor with relu between its layers."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    d, f, rank = 1000, 3001, 101

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)
    weights = (rand(f, d, scale=d ** -0.5), rand(f, scale=0.3), rand(f, d, scale=d ** -0.5), rand(f, scale=0.3),
               rand(f, d, scale=f ** -0.5), rand(d))
    low_rank = LowRankLogits(rand(rank, d, scale=d ** -0.5), rand(f, rank, scale=rank ** -0.5), rand(f, scale=0.3),
                             True, 0.4)
    return weights, low_rank


def float64_check(y, x, low_rank, weights, activation="relu", threshold=0.0, tol=1e-3):
    """y (fp32 [1, d]) against float64 over the set the GEMV's h gives (near-ties either way, see the module)."""
    wg, bg, wu, bu, wdt, bd = (None if t is None else t.double() for t in weights)
    h = predictor_hidden(x, low_rank.down, low_rank.relu_hidden)[0].double()
    logit = low_rank.up.double() @ h + (0.0 if low_rank.bias is None else low_rank.bias.double())
    near = torch.nonzero((logit - low_rank.cut).abs() <= 1e-4 * logit.abs().max()).flatten().tolist()
    assert len(near) <= 4, f"{len(near)} logits at the cut: pick another token"
    x64 = x[0].double()
    g = wg @ x64 + (0.0 if bg is None else bg)
    a = torch.where(g >= threshold, g, torch.zeros_like(g)) if activation == "fatrelu" else g.clamp(min=0)
    x1 = a * (wu @ x64 + (0.0 if bu is None else bu))
    base = (logit >= low_rank.cut) & ~torch.isin(torch.arange(len(logit), device=y.device),
                                                 torch.tensor(near, device=y.device, dtype=torch.long))
    errs = []
    for r in range(len(near) + 1):
        for subset in itertools.combinations(near, r):
            keep = base.clone()
            keep[list(subset)] = True
            ref = torch.where(keep, x1, torch.zeros_like(x1)) @ wdt + (0.0 if bd is None else bd)
            errs.append(float((y[0].double() - ref).norm() / ref.norm()))
    assert torch.isfinite(y).all()
    assert min(errs) < tol, min(errs)


def ours(x, weights, low_rank, dynamic, state, activation="relu", threshold=0.0):
    out = torch.full((1, x.shape[1]), float("nan"), device="cuda")
    launch_logits_rows(x, low_rank, *weights, activation, threshold, out, state, dynamic=dynamic)
    return out


@pytest.mark.parametrize("dynamic", [True, False])
def test_7b_matches_float64_and_the_three_kernel_path(seven_b, dynamic):
    weights, low_rank = seven_b
    wg, _, wu, _, wdt, _ = weights
    three = SparseFFN(wg, wu, wdt)
    state = logits_rows_state("cuda")
    gen = torch.Generator(device="cuda").manual_seed(7)
    for _ in range(3):
        x = make_inputs(1, D, wg.dtype, "cuda", gen)
        y = ours(x, weights, low_rank, dynamic, state)
        float64_check(y, x, low_rank, weights)
        base = three(x, low_rank, fp32_out=True)
        float64_check(base, x, low_rank, weights)
        print(f"max |ours - three kernels'| {float((y - base).abs().max()):.3e} of max {float(base.abs().max()):.3e}")
        assert not state.any()


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_odd_shape_with_biases(dtype, dynamic):
    weights, low_rank = odd_case(dtype)
    state = logits_rows_state("cuda")
    gen = torch.Generator(device="cuda").manual_seed(9)
    for _ in range(3):
        x = torch.randn(1, 1000, generator=gen, device="cuda").to(dtype)
        float64_check(ours(x, weights, low_rank, dynamic, state, "fatrelu", 0.1), x, low_rank, weights, "fatrelu",
                      0.1, tol=2e-3 if dtype == torch.float16 else 1e-2)
        assert not state.any()


@pytest.mark.parametrize("dynamic", [True, False])
def test_graph_replays_on_changing_tokens(seven_b, dynamic):
    """Four layers' calls (two weight copies, four states) captured in one CUDA graph, replayed on 10 tokens: each
    output against float64 each time, the states left zero (a counter not reset would skip chunks next replay)."""
    weights, low_rank = seven_b
    dtype = weights[0].dtype
    states = [logits_rows_state("cuda") for _ in range(4)]
    outs = [torch.empty(1, D, device="cuda") for _ in range(4)]
    x = torch.empty(1, D, dtype=dtype, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(11)
    x.copy_(make_inputs(1, D, dtype, "cuda", gen))

    def step():
        for out, state in zip(outs, states):
            launch_logits_rows(x, low_rank, *weights, "relu", 0.0, out, state, dynamic=dynamic)
    step()   # autotuning and compilation before the capture
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(10):
        x.copy_(make_inputs(1, D, dtype, "cuda", gen))
        graph.replay()
        torch.cuda.synchronize()
        for out, state in zip(outs, states):
            float64_check(out, x, low_rank, weights)
            assert not state.any()
