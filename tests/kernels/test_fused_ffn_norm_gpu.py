"""GPU-only checks of the add + RMSNorm fused into the sparse FFN's first kernel (fused_ffn_norm.py; skipped on CPU):
fp16 / bf16 at the 7B shape, compiled kernels, autotuned configs. The TMA gate kernel's and the predictor GEMV's h and
x against torch's add + LlamaRMSNorm (h bit for bit, x within one rounding step) and their outputs against float64 on
the unrounded norm (the kernels scale their sums by rstd at the end); SparseFFN.forward_add_norm against add + RMSNorm + forward (exact path, a low-rank predictor), eager and
replayed in a CUDA graph on new inputs; a tiny fp32 model decoded through graphs, eager and compiled with inductor,
gives the unfused sparse model's and the dense model's tokens."""
import copy

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from actsparse.kernels import DispatchConfig, SparseFFN, triton_gemv, triton_gemv_prefetch  # noqa: E402
from actsparse.kernels.sparse_ffn import llama_rms_norm  # noqa: E402
from actsparse.kernels.triton_gate import launch_gate  # noqa: E402
from actsparse.modeling.predictors import LowRankLogits  # noqa: E402

from ffn_reference import rel_err, rms_norm64  # noqa: E402

DEVICE = "cuda"
EPS = 1e-5
D, F, RANK = 4096, 11008, 360
ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
DTYPES = [torch.float16, torch.bfloat16]


def _randn(*shape, g, scale=1.0):
    return scale * torch.randn(*shape, generator=g, device=DEVICE)


def layer_inputs(dtype, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return _randn(1, D, g=g).to(dtype), _randn(1, D, g=g, scale=0.5).to(dtype), (1 + _randn(D, g=g, scale=0.2)).to(dtype)


def check_h_and_x(h, x, residual, attn_out, weight):
    """h: torch's sum, bit for bit; x: LlamaRMSNorm's within one rounding step (rstd from another summation order
    than torch's, and the GPU's approximate rsqrt, can flip an element's rounding), rarely."""
    assert torch.isfinite(h).all() and torch.isfinite(x).all(), "h or x was not written (NaN poison survived)"
    assert torch.equal(h, residual + attn_out)
    ref = llama_rms_norm(h, weight, EPS)
    torch.testing.assert_close(x, ref, rtol=1.01 * ULP[x.dtype], atol=0)
    assert float((x != ref).float().mean()) < 0.01



@pytest.mark.parametrize("dtype", DTYPES)
def test_gate_kernel_computes_h_and_x(dtype):
    residual, attn_out, weight = layer_inputs(dtype, seed=1)
    g = torch.Generator(device=DEVICE).manual_seed(2)
    w, b = _randn(F, D, g=g, scale=D ** -0.5).to(dtype), _randn(F, g=g, scale=0.5).to(dtype)
    x, h = torch.full_like(residual, float("nan")), torch.full_like(residual, float("nan"))
    gact = torch.full((1, F), float("nan"), device=DEVICE)
    counts = torch.zeros(65, dtype=torch.int32, device=DEVICE)
    idx = torch.zeros(1, F, dtype=torch.int32, device=DEVICE)
    launch_gate(x, w, b, "relu", 0.0, False, gact, counts, idx, tma=True, norm=(residual, attn_out, weight, EPS, h))
    check_h_and_x(h, x, residual, attn_out, weight)
    ref = torch.relu(rms_norm64(h, weight, EPS) @ w.double().T + b.double())
    assert torch.isfinite(gact).all() and rel_err(gact, ref) < 1e-5     # fp32 sums, x not rounded in them
    listed = idx[0, :int(counts[0])].long()
    assert listed.unique().numel() == listed.numel() and torch.equal(listed.sort().values,
                                                                     torch.nonzero(gact[0] > 0).flatten())


@pytest.mark.parametrize("kernel", ["gemv", "gemv_prefetch"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_computes_h_and_x(dtype, kernel):
    gemv = triton_gemv.gemv if kernel == "gemv" else triton_gemv_prefetch.gemv_prefetch
    residual, attn_out, weight = layer_inputs(dtype, seed=3)
    w = _randn(RANK, D, g=torch.Generator(device=DEVICE).manual_seed(4), scale=D ** -0.5).to(dtype)
    x, h = torch.full_like(residual, float("nan")), torch.full_like(residual, float("nan"))
    y = gemv(x, w, relu=True, norm=(residual, attn_out, weight, EPS, h))
    check_h_and_x(h, x, residual, attn_out, weight)
    assert rel_err(y, torch.relu(rms_norm64(h, weight, EPS) @ w.double().T)) < ULP[dtype]     # y's own rounding


def _ffn_and_predictor(dtype):
    """A 7B-shaped ReLU SparseFFN with ~10% of the neurons active on unit-RMS inputs, its float64 reference, and a
    rank-360 LowRankLogits whose logits are bias +-10 plus terms of ~0.1 (a cut at 0 far from every logit: the
    predicted set does not depend on x's last bits)."""
    g = torch.Generator(device=DEVICE).manual_seed(5)
    w_gate, w_up = (_randn(F, D, g=g, scale=D ** -0.5).to(dtype) for _ in range(2))
    w_down = _randn(D, F, g=g, scale=F ** -0.5).to(dtype)
    b_gate = torch.full((F,), -1.28, device=DEVICE).to(dtype)
    ffn = SparseFFN(w_gate, w_up, w_down.T.contiguous(), b_gate=b_gate)

    def ref(x, mask=None):
        x1 = torch.relu(x.double() @ w_gate.double().T + b_gate.double()) * (x.double() @ w_up.double().T)
        return (x1 if mask is None else x1 * mask) @ w_down.double().T
    bias = torch.where(torch.rand(F, generator=g, device=DEVICE) < 0.15, 10.0, -10.0)
    low_rank = LowRankLogits(_randn(RANK, D, g=g, scale=D ** -0.5).to(dtype),
                             _randn(F, RANK, g=g, scale=0.1 * RANK ** -0.5).to(dtype), bias.to(dtype), True, 0.0)
    return ffn, ref, low_rank, bias > 0


@pytest.mark.parametrize("predicted", [False, True], ids=["exact", "low_rank"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_add_norm_eager_and_in_a_graph(dtype, predicted):
    """forward_add_norm with fp32_out (the decode's call) against float64 on torch's x, then captured in a CUDA graph
    and replayed on new residual / attention outputs copied into its inputs."""
    ffn, ref, low_rank, mask = _ffn_and_predictor(dtype)
    active = low_rank if predicted else None
    residual, attn_out, weight = layer_inputs(dtype, seed=6)

    def expected(r, a):
        return ref(llama_rms_norm(r + a, weight, EPS), mask if predicted else None)
    h, y = ffn.forward_add_norm(residual, attn_out, weight, EPS, active, fp32_out=True)
    assert torch.equal(h, residual + attn_out) and y.dtype == torch.float32
    assert rel_err(y, expected(residual, attn_out)) < 4 * ULP[dtype]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ffn.forward_add_norm(residual, attn_out, weight, EPS, active, fp32_out=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h, y = ffn.forward_add_norm(residual, attn_out, weight, EPS, active, fp32_out=True)
    for seed in (7, 8, 9):
        new_r, new_a, _ = layer_inputs(dtype, seed)
        residual.copy_(new_r)
        attn_out.copy_(new_a)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(h, new_r + new_a)
        assert rel_err(y, expected(new_r, new_a)) < 4 * ULP[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_pdl_chain_from_the_attention_in_a_graph(dtype):
    """The predictor path as a decode step runs it with PDL: the decode attention kernel (it lets the next kernel
    launch as it starts), the o projection (GemvLinear's op with PDL: its rows loaded before it waits for the
    attention's output), the predictor's first layer loading its rows before it waits (NORM), the list and rows kernels;
    captured in a CUDA graph and replayed at the next positions on new tokens and residuals: the attention output
    against torch's attention, the o projection against float64 on it, h bit for bit and the FFN's output against
    float64."""
    from actsparse.kernels import triton_decode_attention as tda
    from actsparse.kernels.pdl import pdl_usable
    if not pdl_usable(torch.device(DEVICE)):
        pytest.skip("PDL needs compute capability 9.0+")
    ffn, ref, low_rank, mask = _ffn_and_predictor(dtype)
    ffn.dispatch = DispatchConfig(pdl=True)
    heads, head_dim, max_len = 32, 128, 64
    g = torch.Generator(device=DEVICE).manual_seed(10)
    w_o = _randn(D, D, g=g, scale=D ** -0.5).to(dtype)
    weight = (1 + _randn(D, g=g, scale=0.2)).to(dtype)
    caches = [_randn(1, heads, max_len, head_dim, g=g).to(dtype) for _ in range(2)]
    angles = _randn(1, head_dim, g=g)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    pos = torch.tensor([5], dtype=torch.int32, device=DEVICE)
    state = tda.split_state(1, head_dim, DEVICE)
    q, k, v = (_randn(1, heads, head_dim, g=g).to(dtype) for _ in range(3))
    residual = _randn(1, D, g=g).to(dtype)

    def step():
        pre_o = tda.decode_attention(q, k, v, cos, sin, *caches, pos, None, head_dim ** -0.5, state)
        attn_out = triton_gemv.gemv_op(pre_o, w_o, None, True)
        return (pre_o, attn_out, *ffn.forward_add_norm(residual, attn_out, weight, EPS, low_rank, fp32_out=True))
    step()   # autotuned outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pre_o, attn_out, h, y = step()
    for seed in (11, 12, 13):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        for t in (q, k, v):
            t.copy_(_randn(*t.shape, g=g).to(dtype))
        residual.copy_(_randn(1, D, g=g).to(dtype))
        ref_caches, ref_pos = [c.clone() for c in caches], pos.clone()
        expected = tda.decode_attention_torch(q, k, v, cos, sin, *ref_caches, ref_pos, None, head_dim ** -0.5)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(pos, ref_pos) and rel_err(pre_o, expected) < 4 * ULP[dtype]
        assert rel_err(attn_out, pre_o.double() @ w_o.double().T) < ULP[dtype]
        assert torch.equal(h, residual + attn_out)
        assert rel_err(y, ref(llama_rms_norm(h, weight, EPS), mask)) < 4 * ULP[dtype]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "inductor"])
def test_tiny_model_graph_decode_with_fused_norms(compiled):
    """fp32 tiny ReLU LLaMA on the GPU, greedy decoding through CUDA graphs: with fuse_ffn_norms, the tokens of the
    sparse model without it and of the dense model."""
    from actsparse.kernels.compiled_decoding import compile_model
    from actsparse.kernels.fused_ffn_norm import fuse_ffn_norms
    from actsparse.kernels.sparse_decoding import greedy_decode, swap_in_sparse_ffns
    from actsparse.modeling import sparsify
    from tiny_models import random_ids, tiny_llama
    dense = sparsify(tiny_llama(num_hidden_layers=2, hidden_size=64, intermediate_size=200), "relu").to(DEVICE)
    ids = random_ids(batch=1, seq=6).to(DEVICE)
    expected = greedy_decode(dense, ids, 12)
    sparse = copy.deepcopy(dense)
    swap_in_sparse_ffns(sparse, backend="triton")
    fused = copy.deepcopy(sparse)
    assert fuse_ffn_norms(fused) == 2
    if compiled:
        torch._dynamo.reset()
        compile_model(sparse)
        compile_model(fused)
    assert torch.equal(greedy_decode(sparse, ids, 12, cuda_graph=True), expected)
    assert torch.equal(greedy_decode(fused, ids, 12, cuda_graph=True), expected)
    assert torch.equal(greedy_decode(fused, ids, 12), expected)
    torch._dynamo.reset()
