"""GPU-only checks of the one-token decode attention (triton_decode_attention.py; skipped on CPU): fp16 / bf16 at the
LLaMA-2-7B shape (32 heads of 128, cache of 168) and a GQA one against float64, the positions whole or split
(triton_decode_attention_split.py: the host rule's pick with a module's state, and given split counts), eager and
replayed in a CUDA graph with the write position advanced by the kernel between replays (the split state left reset
for each replay); a tiny model decoded through graphs, eager and compiled, gives the original model's tokens."""
import copy

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from decode_attention_reference import case, poisoned_split_state, reference, tickets_zero  # noqa: E402

from actsparse.kernels import triton_decode_attention as tda  # noqa: E402
from actsparse.kernels import triton_decode_attention_split as tdas  # noqa: E402

TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}
SHAPES = {"7b": dict(n_kv=32, groups=1, head_dim=128, max_len=168), "gqa": dict(n_kv=8, groups=4, head_dim=128,
                                                                               max_len=168)}


def _rel_err(out, ref):
    return float((out.double() - ref).norm() / ref.norm())


def _sdpa_mask(max_len):
    """The static-cache decode mask of HF's sdpa path: bool [1, 1, 1, max_len], all kept up to pos (padding none)."""
    return torch.ones(1, 1, 1, max_len, dtype=torch.bool, device="cuda")


def _state(kind: str, groups: int, head_dim: int) -> torch.Tensor:
    """The op's state: "whole", one ticket (SPLITS 1); "split", a module's (the host rule), its partials NaN."""
    if kind == "whole":
        return torch.zeros(1, dtype=torch.int32, device="cuda")
    return poisoned_split_state(groups, head_dim, "cuda")


def _check_write(k_cache, v_cache, k_ref, v_ref, pos, dtype):
    eps = torch.finfo(dtype).eps        # the rotated k: one rounding to the cache's dtype off the float64 one
    torch.testing.assert_close(k_cache[:, :, pos].double(), k_ref[:, :, pos], rtol=eps, atol=eps)
    assert torch.equal(v_cache[:, :, pos].double(), v_ref[:, :, pos])
    assert torch.isnan(k_cache[:, :, pos + 1:]).all() and torch.isnan(v_cache[:, :, pos + 1:]).all()


@pytest.mark.parametrize("kind", ["whole", "split"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pos", [40, 167])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("masked", [False, True])
def test_matches_float64(dtype, pos, shape, masked, kind):
    q, k, v, cos, sin, k_cache, v_cache, p = case(batch=1, pos=pos, dtype=dtype, device="cuda", **SHAPES[shape])
    mask = _sdpa_mask(k_cache.shape[2]) if masked else None
    ref, k_ref, v_ref = reference(q, k, v, cos, sin, k_cache, v_cache, pos, mask)
    state = _state(kind, SHAPES[shape]["groups"], q.shape[-1])
    if kind == "split":     # the rule splits both shapes on a GPU of >= 64 SMs (132 on an H100: 4 and 5 splits)
        assert tdas.pick_splits(state, 1, k_cache.shape[1], SHAPES[shape]["groups"], q.shape[-1], k_cache.shape[2],
                                q.device, None)[0] > 1
    out = tda.decode_attention_op(q, k, v, cos, sin, k_cache, v_cache, p, mask, q.shape[-1] ** -0.5, state)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert _rel_err(out, ref) < TOL[dtype]
    _check_write(k_cache, v_cache, k_ref, v_ref, pos, dtype)
    assert int(p) == pos + 1 and tickets_zero(state)


@pytest.mark.parametrize("splits", [2, 3, 8])
@pytest.mark.parametrize("pos", [0, 5, 40, 167])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_given_splits_match_float64(splits, pos, shape):
    """fp16, the positions split as given: empty splits (pos 0, 5 at 8 splits), uneven ones (168 / 3 + 1)."""
    q, k, v, cos, sin, k_cache, v_cache, p = case(batch=1, pos=pos, dtype=torch.float16, device="cuda",
                                                  **SHAPES[shape])
    mask = _sdpa_mask(k_cache.shape[2])
    ref, k_ref, v_ref = reference(q, k, v, cos, sin, k_cache, v_cache, pos, mask)
    state = _state("split", SHAPES[shape]["groups"], q.shape[-1])
    out = tda.decode_attention(q, k, v, cos, sin, k_cache, v_cache, p, mask, q.shape[-1] ** -0.5, state,
                               splits=splits)
    assert torch.isfinite(out).all() and _rel_err(out, ref) < TOL[torch.float16]
    _check_write(k_cache, v_cache, k_ref, v_ref, pos, torch.float16)
    assert int(p) == pos + 1 and tickets_zero(state)


@pytest.mark.parametrize("splits", [None, 8])
def test_split_calls_back_to_back_stay_exact(splits):
    """64 calls in a row on one state (the rule's split, or 8), new q / k / v each, checked after each: a partial
    read before its writer's fence (an old call's value at the same address) or a ticket left off 0 would show."""
    q, k, v, cos, sin, k_cache, v_cache, p = case(batch=1, pos=64, dtype=torch.float16, device="cuda", **SHAPES["7b"])
    state = _state("split", 1, 128)
    g = torch.Generator(device="cuda").manual_seed(2)
    for pos in range(64, 128):
        for t in (q, k, v):
            t.copy_(torch.randn(t.shape, device="cuda", generator=g))
        ref, _, _ = reference(q, k, v, cos, sin, k_cache, v_cache, pos)
        out = tda.decode_attention(q, k, v, cos, sin, k_cache, v_cache, p, None, 128 ** -0.5, state, splits=splits)
        assert _rel_err(out, ref) < TOL[torch.float16], pos
        assert int(p) == pos + 1 and tickets_zero(state)


@pytest.mark.parametrize("kind", ["whole", "split"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_graph_replays_advance_the_position(dtype, kind):
    """Captured once at pos 40; each replay takes new q / k / v, writes at the position the last replay left and
    attends over it (the cache beyond it poisoned again before each replay); split: the tickets the last replay left
    at 0 serve the next."""
    start = 40
    q, k, v, cos, sin, k_cache, v_cache, p = case(batch=1, pos=start, dtype=dtype, device="cuda", **SHAPES["7b"])
    state = _state(kind, 1, 128)

    def call():
        return tda.decode_attention_op(q, k, v, cos, sin, k_cache, v_cache, p, None, 128 ** -0.5, state)
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
        assert int(p) == pos + 1 and tickets_zero(state)
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
