"""GPU-only checks of the one-token decode attention (triton_decode_attention.py; skipped on CPU): fp16 / bf16 at the
LLaMA-2-7B shape (32 heads of 128, cache of 168) and a GQA one against float64, eager and replayed in a CUDA graph
with the write position advanced by the kernel between replays; a tiny model decoded through graphs, eager and
compiled, gives the original model's tokens."""
import copy

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from decode_attention_reference import case, reference  # noqa: E402

from actsparse.kernels import triton_decode_attention as tda  # noqa: E402

TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
SHAPES = {"7b": dict(n_kv=32, groups=1, head_dim=128, max_len=168), "gqa": dict(n_kv=8, groups=4, head_dim=128,
                                                                               max_len=168)}


def _rel_err(out, ref):
    return float((out.double() - ref).norm() / ref.norm())


def _sdpa_mask(max_len):
    """The static-cache decode mask of HF's sdpa path: bool [1, 1, 1, max_len], all kept up to pos (padding none)."""
    return torch.ones(1, 1, 1, max_len, dtype=torch.bool, device="cuda")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pos", [40, 167])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("masked", [False, True])
def test_matches_float64(dtype, pos, shape, masked):
    q, k, v, cos, sin, k_cache, v_cache, p = case(batch=1, pos=pos, dtype=dtype, device="cuda", **SHAPES[shape])
    mask = _sdpa_mask(k_cache.shape[2]) if masked else None
    ref, k_ref, v_ref = reference(q, k, v, cos, sin, k_cache, v_cache, pos, mask)
    tickets = torch.zeros(1, dtype=torch.int32, device="cuda")
    out = tda.decode_attention_op(q, k, v, cos, sin, k_cache, v_cache, p, mask, q.shape[-1] ** -0.5, tickets)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert _rel_err(out, ref) < TOL[dtype]
    eps = torch.finfo(dtype).eps        # the rotated k: one rounding to the cache's dtype off the float64 one
    torch.testing.assert_close(k_cache[:, :, pos].double(), k_ref[:, :, pos], rtol=eps, atol=eps)
    assert torch.equal(v_cache[:, :, pos].double(), v_ref[:, :, pos])
    assert torch.isnan(k_cache[:, :, pos + 1:]).all() and torch.isnan(v_cache[:, :, pos + 1:]).all()
    assert int(p) == pos + 1 and int(tickets) == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_graph_replays_advance_the_position(dtype):
    """Captured once at pos 40; each replay takes new q / k / v, writes at the position the last replay left and
    attends over it (the cache beyond it poisoned again before each replay)."""
    start = 40
    q, k, v, cos, sin, k_cache, v_cache, p = case(batch=1, pos=start, dtype=dtype, device="cuda", **SHAPES["7b"])
    tickets = torch.zeros(1, dtype=torch.int32, device="cuda")

    def call():
        return tda.decode_attention_op(q, k, v, cos, sin, k_cache, v_cache, p, None, 128 ** -0.5, tickets)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()                                   # autotune and compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    p.fill_(start)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    p.fill_(start)
    g = torch.Generator(device="cuda").manual_seed(1)
    for pos in range(start, start + 5):
        for t in (q, k, v):
            t.copy_(torch.randn(t.shape, device="cuda", generator=g))
        k_cache[:, :, pos:], v_cache[:, :, pos:] = float("nan"), float("nan")
        ref, _, _ = reference(q, k, v, cos, sin, k_cache, v_cache, pos)
        graph.replay()
        torch.cuda.synchronize()
        assert int(p) == pos + 1 and int(tickets) == 0
        assert _rel_err(out, ref) < TOL[dtype]
        assert torch.isnan(k_cache[:, :, pos + 1:]).all()


@pytest.mark.parametrize("compiled", [False, True])
def test_tiny_model_graph_decode_matches_the_original(compiled):
    """fp32 tiny LLaMA (GQA) on the GPU: greedy decoding through a CUDA graph (the write counters reset after the
    warm-up steps), eager or compiled with inductor, gives the original model's tokens."""
    from actsparse.kernels.compiled_decoding import compile_model
    from actsparse.kernels.sparse_decoding import greedy_decode
    from tiny_models import random_ids, tiny_llama
    ref = tiny_llama(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, head_dim=32).cuda()
    model = copy.deepcopy(ref)
    tda.use_decode_attention(model)
    if compiled:
        compile_model(model)
    ids = random_ids(batch=1, seq=6).cuda()
    expected = greedy_decode(ref, ids, 12)
    assert torch.equal(greedy_decode(model, ids, 12, cuda_graph=True), expected)
    assert torch.equal(greedy_decode(model, ids, 12), expected)
