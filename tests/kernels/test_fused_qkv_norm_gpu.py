"""GPU-only checks of the input add + RMSNorm in the fused q/k/v GEMV (fused_qkv_norm.py; skipped on CPU): the op at
the 7B shape (12288 x 4096) in fp16 / bf16 with the FFN's fp32 sum, with and without PDL, eager and replayed in a CUDA
graph on new inputs behind the sparse FFN's kernels; a tiny fp32 model decoded through graphs, eager and compiled
with inductor, with both norms fused gives the dense model's tokens."""
import copy

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from actsparse.kernels import SparseFFN  # noqa: E402
from actsparse.kernels.fused_qkv_norm import qkv_add_norm_op  # noqa: E402
from actsparse.kernels.sparse_ffn import llama_rms_norm  # noqa: E402

from ffn_reference import rel_err, rms_norm64  # noqa: E402

DEVICE = "cuda"
EPS = 1e-5
D, F, N_QKV = 4096, 11008, 12288
ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


def _randn(*shape, g, scale=1.0):
    return scale * torch.randn(*shape, generator=g, device=DEVICE)


def check(h, x, qkv, residual, ffn_out, weight, w, b):
    h_ref = residual + ffn_out.to(residual.dtype)
    assert torch.equal(h, h_ref)
    ulp = ULP[residual.dtype]
    torch.testing.assert_close(x, llama_rms_norm(h_ref, weight, EPS), rtol=1.01 * ulp, atol=0)
    assert rel_err(qkv, rms_norm64(h_ref, weight, EPS) @ w.double().T + b.double()) < ulp


@pytest.mark.parametrize("pdl", [False, True], ids=["plain", "pdl"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_op_at_7b_shape_eager_and_in_a_graph_behind_the_sparse_ffn(dtype, pdl):
    """The op after a sparse FFN's kernels (exact path, fp32 sum) in one CUDA graph, replayed on new residuals and
    FFN inputs: h bit for bit, x within one rounding step, q/k/v within one rounding of float64."""
    g = torch.Generator(device=DEVICE).manual_seed(11)
    w = _randn(N_QKV, D, g=g, scale=D ** -0.5).to(dtype)
    b = _randn(N_QKV, g=g, scale=0.1).to(dtype)
    weight = (1 + _randn(D, g=g, scale=0.2)).to(dtype)
    wg, wu = _randn(F, D, g=g, scale=D ** -0.5).to(dtype), _randn(F, D, g=g, scale=D ** -0.5).to(dtype)
    w_down_t = _randn(F, D, g=g, scale=F ** -0.5).to(dtype)
    ffn = SparseFFN(wg, wu, w_down_t, b_gate=torch.full((F,), -1.28, device=DEVICE).to(dtype))
    x_in, residual = torch.empty(1, D, device=DEVICE, dtype=dtype), torch.empty(1, D, device=DEVICE, dtype=dtype)

    def step():
        ffn_out = ffn(x_in, None, True)
        return ffn_out, qkv_add_norm_op(residual, ffn_out, weight, EPS, w, b, pdl)

    def new_inputs(seed):
        gi = torch.Generator(device=DEVICE).manual_seed(seed)
        x_in.copy_(_randn(1, D, g=gi).to(dtype))
        residual.copy_(_randn(1, D, g=gi).to(dtype))

    new_inputs(1)
    ffn_out, (h, x, qkv) = step()   # eager, autotunes
    assert ffn_out.dtype == torch.float32
    check(h, x, qkv, residual, ffn_out, weight, w, b)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ffn_out, (h, x, qkv) = step()
    for seed in (2, 3):
        new_inputs(seed)
        graph.replay()
        torch.cuda.synchronize()
        check(h, x, qkv, residual, ffn_out, weight, w, b)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "inductor"])
def test_tiny_model_graph_decode_with_both_norms_fused(compiled):
    """fp32 tiny ReLU LLaMA (3 layers) on the GPU, greedy decoding through CUDA graphs: dense with fuse_qkv_norms, and
    sparse with fuse_ffn_norms and fuse_qkv_norms (PDL), give the dense model's tokens."""
    from actsparse.kernels.compiled_decoding import compile_model
    from actsparse.kernels.fused_ffn_norm import fuse_ffn_norms
    from actsparse.kernels.fused_qkv import fuse_qkv
    from actsparse.kernels.fused_qkv_norm import fuse_qkv_norms
    from actsparse.kernels.sparse_decoding import greedy_decode, swap_in_sparse_ffns
    from actsparse.modeling import sparsify
    from tiny_models import random_ids, tiny_llama
    dense = sparsify(tiny_llama(num_hidden_layers=3, hidden_size=64, intermediate_size=200), "relu").to(DEVICE)
    ids = random_ids(batch=1, seq=6).to(DEVICE)
    expected = greedy_decode(dense, ids, 12)
    fuse_qkv(dense)
    dense_fused = copy.deepcopy(dense)
    assert fuse_qkv_norms(dense_fused, pdl=True) == 2
    sparse = copy.deepcopy(dense)
    swap_in_sparse_ffns(sparse, backend="triton")
    fuse_ffn_norms(sparse)
    fuse_qkv_norms(sparse, pdl=True)
    if compiled:
        torch._dynamo.reset()
        compile_model(dense_fused)
        compile_model(sparse)
    for model in (dense_fused, sparse):
        assert torch.equal(greedy_decode(model, ids, 12, cuda_graph=True), expected)
        assert torch.equal(greedy_decode(model, ids, 12), expected)
    torch._dynamo.reset()
