"""GPU-only checks (skipped on CPU): fp16 / bf16 at real and odd shapes against float64, poisoned outputs,
repeated calls (a changing result would be a race in the split reduction), CUDA-graph capture."""
import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from actsparse.kernels import DispatchConfig, SparseFFN  # noqa: E402
from actsparse.kernels.bench_data import (make_inputs, make_weight_sets, neuron_probabilities,  # noqa: E402
                                          set_gate_bias, true_active)


def _reference(ws, x, mask=None):
    x = x.double()
    x1 = torch.relu(x @ ws.w_gate.double().T) * (x @ ws.w_up.double().T)
    if mask is not None:
        x1 = x1 * mask
    return x1 @ ws.w_down.double().T


def _poisoned(*shape, dtype=None, device=None):
    t = torch.empty(*shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if t.is_floating_point() else t


def _case(dtype, d, f, tokens, dispatch):
    """90%-sparse weights, `tokens` inputs, a SparseFFN with poisoned workspaces, and a predicted set: the true
    active neurons, each kept with probability 0.7."""
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    ws = make_weight_sets(d, f, dtype, "cuda", 1)[0]
    set_gate_bias(ws, neuron_probabilities(f, 0.9, torch.Generator().manual_seed(0)))
    x = make_inputs(tokens, d, dtype, "cuda", gen)
    ffn = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=dispatch)
    ffn.workspace_alloc = _poisoned
    mask = true_active(ws, x) & (torch.rand(tokens, f, device="cuda", generator=gen) < 0.7)
    return ws, x, ffn, mask


MODES = {"union": DispatchConfig(batch_mode="union"), "per_token": DispatchConfig(batch_mode="per_token"),
         "union_gate_up": DispatchConfig(batch_mode="union", exact_kernel="gate_up"),
         "union_pdl": DispatchConfig(batch_mode="union", pdl=True)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,f", [(4096, 11008), (1000, 3001)])
@pytest.mark.parametrize("tokens", [1, 5, 32, 64])
@pytest.mark.parametrize("mode", list(MODES))
def test_matches_float64(dtype, d, f, tokens, mode):
    ws, x, ffn, mask = _case(dtype, d, f, tokens, MODES[mode])
    tol = 2e-3 if dtype == torch.float16 else 1e-2
    for active, ref in ((None, _reference(ws, x)), (mask, _reference(ws, x, mask))):
        first = ffn(x, active)
        assert torch.isfinite(first).all()
        assert float((first.double() - ref).norm() / ref.norm()) < tol
        # A race would move the result between identical calls. The compacted neuron lists are built with
        # atomics, so their order (hence the fp32 summation order) can differ between calls: allow one
        # rounding step of the output dtype (seen on an H100: one bf16 element of 20480 off by 1 ulp).
        ulp = torch.finfo(dtype).eps
        for _ in range(5):
            torch.testing.assert_close(ffn(x, active), first, rtol=ulp, atol=ulp)


def _check_exact_and_repeatable(ffn, x, active, ref, dtype):
    """Against the float64 reference, and identical bits in five more calls (fixed list and split order)."""
    first = ffn(x, active)
    assert torch.isfinite(first).all()
    assert float((first.double() - ref).norm() / ref.norm()) < (2e-3 if dtype == torch.float16 else 1e-2)
    for _ in range(5):
        assert torch.equal(ffn(x, active), first)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,f", [(4096, 11008), (1000, 3001)])
@pytest.mark.parametrize("tokens", [1, 5, 8])
@pytest.mark.parametrize("kind", ["mask", "index"])
def test_fused_predicted_matches_float64(dtype, d, f, tokens, kind):
    """Version 2 predicted path: against float64, and identical bits between calls (fixed split order)."""
    ws, x, ffn, mask = _case(dtype, d, f, tokens, DispatchConfig(predicted_kernel="fused"))
    if kind == "index":
        mask = mask.any(0, keepdim=True)
        active = torch.nonzero(mask[0]).flatten()
    else:
        active = mask
    _check_exact_and_repeatable(ffn, x, active, _reference(ws, x, mask), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,f", [(4096, 11008), (1000, 3001)])
@pytest.mark.parametrize("tokens", [1, 5])
def test_index_list_matches_float64(dtype, d, f, tokens):
    """The "lists" kernels given an int32 index list (no compaction): against float64, and identical bits between
    calls (the list order is the caller's, the split order fixed). At one token the default ("auto") runs the rows
    kernel instead, whose atomics may move the last bits: test_rows_kernel_matches_float64."""
    ws, x, ffn, mask = _case(dtype, d, f, tokens, DispatchConfig(predicted_kernel="lists"))
    mask = mask.any(0, keepdim=True)
    ids = torch.nonzero(mask[0]).flatten()
    active = ids[torch.randperm(ids.numel(), device="cuda")].to(torch.int32)
    _check_exact_and_repeatable(ffn, x, active, _reference(ws, x, mask), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,f", [(4096, 11008), (1000, 3001)])
def test_inline_compaction_matches_float64(dtype, d, f):
    """predicted_kernel="lists_inline" at batch 1: against float64; repeated calls within one output ulp."""
    ws, x, ffn, mask = _case(dtype, d, f, 1, DispatchConfig(predicted_kernel="lists_inline"))
    _check_within_ulp(ffn, x, mask, _reference(ws, x, mask), dtype)


def _check_within_ulp(ffn, x, active, ref, dtype):
    """Against the float64 reference; five more calls within one output ulp of the first (list order or atomics
    may change the fp32 summation order). Returns the first output."""
    first = ffn(x, active)
    assert torch.isfinite(first).all()
    assert float((first.double() - ref).norm() / ref.norm()) < (2e-3 if dtype == torch.float16 else 1e-2)
    ulp = torch.finfo(dtype).eps
    for _ in range(5):
        torch.testing.assert_close(ffn(x, active), first, rtol=ulp, atol=ulp)
    return first


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,f", [(4096, 11008), (1000, 3001), (5120, 13824)])
@pytest.mark.parametrize("kind", ["exact", "mask", "index"])
@pytest.mark.parametrize("dispatch", ["rows", "atomic_down", "gate_rows", "prefetch", "stream"])
def test_rows_kernel_matches_float64(dtype, d, f, kind, dispatch):
    """One token through the rows kernel (triton_rows_ffn.py) after the gate kernel, after the compaction, or
    alone: against float64; repeated calls (also replayed in a CUDA graph) within one output ulp, since its fp32
    atomics add in the order programs finish. 5120 (13B) is no power of two: its whole-row tiles are masked.
    "atomic_down": the up kernel, then the rows kernel given x1 (DispatchConfig.down_kernel="atomic"). "gate_rows":
    the exact path in one kernel (triton_gate_rows.py; a predicted set takes the rows kernel). "prefetch": the TMA gate
    kernel sends the active rows towards L2 first (DispatchConfig.gate_prefetch). "stream": gate and rows kernels
    concurrently (triton_stream_rows.py; a predicted set takes the rows kernel)."""
    config = {"stream": DispatchConfig(exact_kernel="stream"),
              "rows": DispatchConfig(exact_kernel="rows", predicted_kernel="rows"),
              "atomic_down": DispatchConfig(down_kernel="atomic"),
              "gate_rows": DispatchConfig(exact_kernel="gate_rows"),
              "prefetch": DispatchConfig(exact_kernel="rows", predicted_kernel="rows", gate_prefetch=True)}[dispatch]
    ws, x, ffn, mask = _case(dtype, d, f, 1, config)
    active = {"exact": None, "mask": mask, "index": torch.nonzero(mask[0]).flatten().to(torch.int32)}[kind]
    first = _check_within_ulp(ffn, x, active, _reference(ws, x, None if kind == "exact" else mask), dtype)
    ulp = torch.finfo(dtype).eps
    graph, out = _captured(lambda: ffn(x, active))
    for _ in range(3):
        graph.replay()
        torch.testing.assert_close(out, first, rtol=ulp, atol=ulp)
    assert not ffn._rows_acc.any() and not ffn._list_state.any() and not ffn._tickets.any()
    if ffn._stream_state is not None:  # left empty / zero for the next call
        assert (ffn._stream_state[0] == -1).all() and not ffn._stream_state[1].any()


def test_stream_path_chained_and_replayed_matches_rows_path():
    """Four FFNs one after another (as layers), at 0%, 50%, 90% and 100% active, on the stream path
    (triton_stream_rows.py: gate and rows kernels on two streams), captured in one CUDA graph and replayed 30 times
    back to back: the same outputs as the rows path (within the fp32 atomics' last bits), and every FFN's entries
    and counters left empty for the next call."""
    d, f = 4096, 11008
    layers = []
    for i, bias in enumerate((-50.0, None, None, 50.0)):  # gate bias: none active, all active
        ws = make_weight_sets(d, f, torch.float16, "cuda", 1)[0]
        if bias is None:
            set_gate_bias(ws, neuron_probabilities(f, 0.5 if i == 1 else 0.9, torch.Generator().manual_seed(i)))
            b = None
        else:
            b = torch.full((f,), bias, dtype=torch.float16, device="cuda")
        layers.append([SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, b_gate=b, dispatch=DispatchConfig(exact_kernel=kernel)) for kernel in ("stream", "rows")])
    x = make_inputs(1, d, torch.float16, "cuda", torch.Generator(device="cuda").manual_seed(0))

    def chain(which):
        return torch.cat([pair[which](x) for pair in layers])

    expected = chain(1).clone()
    torch.testing.assert_close(chain(0), expected, rtol=2e-2, atol=1e-3)
    graph, out = _captured(lambda: chain(0))
    for _ in range(30):
        graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=1e-3)
    for stream_ffn, _ in layers:
        assert (stream_ffn._stream_state[0] == -1).all() and not stream_ffn._stream_state[1].any()
        assert not stream_ffn._list_state.any() and not stream_ffn._rows_acc.any()


def _captured(call):
    """(graph, output) of `call` captured in a CUDA graph; each replay rewrites the output in place."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    return graph, out


def test_cuda_graph_capture_and_replay():
    ws = make_weight_sets(512, 1536, torch.float16, "cuda", 1)[0]
    set_gate_bias(ws, neuron_probabilities(1536, 0.9, torch.Generator().manual_seed(0)))
    x = make_inputs(1, 512, torch.float16, "cuda", torch.Generator(device="cuda").manual_seed(0))
    ffn = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t)
    expected = ffn(x).clone()
    graph, out = _captured(lambda: ffn(x))
    for _ in range(3):
        graph.replay()
        torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)
    mask = torch.rand(1536, device="cuda") < 0.1
    fused = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=DispatchConfig(predicted_kernel="fused"))
    expected = fused(x, mask).clone()
    graph, out = _captured(lambda: fused(x, mask))
    for _ in range(3):
        graph.replay()
        assert torch.equal(out, expected)


def test_pdl_chain_in_a_cuda_graph_matches_plain_launches():
    """DispatchConfig(pdl=True): the gate -> up -> down (and compaction) launches overlap; captured in a graph and
    replayed back to back (each replay's gate kernel overlapping the last down kernel, which resets the list
    lengths), the output stays that of plain launches."""
    from actsparse.kernels.pdl import pdl_usable
    if not pdl_usable(torch.device("cuda")):
        pytest.skip("PDL unusable on this GPU / Triton")
    ws = make_weight_sets(4096, 11008, torch.float16, "cuda", 1)[0]
    set_gate_bias(ws, neuron_probabilities(11008, 0.9, torch.Generator().manual_seed(0)))
    x = make_inputs(1, 4096, torch.float16, "cuda", torch.Generator(device="cuda").manual_seed(0))
    mask = torch.rand(11008, device="cuda") < 0.1
    plain = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t)
    pdl = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=DispatchConfig(pdl=True))
    index = torch.nonzero(mask).flatten().to(torch.int32)   # the down kernel prefetches rows before its wait
    for active in (None, mask, index):
        expected = plain(x, active).clone()
        pdl(x, active)  # tuned outside the capture (the prefetching down kernel has its own autotune key)
        graph, out = _captured(lambda: pdl(x, active))
        for _ in range(20):
            graph.replay()
        torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)


def test_sparse_decoding_with_cuda_graph_matches_dense():
    """Tiny fp32 ReLU LLaMA on the GPU: HF generate and the graph-captured static-cache loop, dense vs sparse."""
    from actsparse.kernels.sparse_decoding import calibrate, greedy_decode, swap_in_sparse_ffns
    from actsparse.modeling import sparsify
    from tiny_models import random_ids, tiny_llama
    model = sparsify(tiny_llama(num_hidden_layers=2), "relu").cuda()
    ids = random_ids(batch=2, seq=6).cuda()
    with torch.no_grad():
        dense = model.generate(ids, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids))
    dense_graph = greedy_decode(model, ids, 8, cuda_graph=True)
    assert torch.equal(dense_graph, dense)
    swap_in_sparse_ffns(model, backend="triton")
    calibrate(model, ids)
    with torch.no_grad():
        sparse = model.generate(ids, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids))
    assert torch.equal(sparse, dense)
    assert torch.equal(greedy_decode(model, ids, 8, cuda_graph=True), dense)


def test_autotune_timer_measures_device_time():
    """tune_timing.graph_do_bench: quantiles in order, and a 2-pass copy of 256 MB timed near 2 x 256 MB at the copy
    bandwidth (an upper bound of 3.5 TB/s on an H100 / 4.8 on an H200 keeps it honest), host time not included."""
    from actsparse.kernels.tune_timing import graph_do_bench
    a = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    b = torch.empty_like(a)
    med, p20, p80 = graph_do_bench(lambda: b.copy_(a))
    assert p20 <= med <= p80
    tbs = 2 * a.numel() / (med * 1e-3) / 1e12
    assert 0.5 < tbs < 5.0, tbs
    tiny = torch.zeros(16, device="cuda")
    med_tiny = graph_do_bench(lambda: tiny.add_(1))[0]
    assert med_tiny < 0.02  # ms: one tiny kernel's device time, not a Python round trip


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,f", [(4096, 11008), (1000, 3001), (5120, 13824), (1001, 3001)])
def test_tma_gate_matches_float64_and_the_plain_gate(dtype, d, f):
    """The one-token gate kernel with TMA loads (triton_gate_tma.py; d 1001 has unaligned rows: the plain kernel
    runs) against float64 and the plain-load kernel: act(gate) within the fp32 summation tolerance, the same active
    neurons apart from near-zero gates, and the list length zeroed by nobody here (checked, then reset)."""
    from actsparse.kernels.triton_gate import launch_gate
    ws, x, _ffn, _mask = _case(dtype, d, f, 1, DispatchConfig())
    ref = torch.relu(x.double() @ ws.w_gate.double().T)
    results = []
    for tma in (True, False):
        gact = torch.full((1, f), float("nan"), device="cuda")
        counts = torch.zeros(65, dtype=torch.int32, device="cuda")
        idx = torch.full((1, f), -1, dtype=torch.int32, device="cuda")
        launch_gate(x, ws.w_gate, None, "relu", 0.0, False, gact, counts, idx, tma=tma)
        n = int(counts[0])
        listed = idx[0, :n].long()
        assert torch.isfinite(gact).all() and n == int((gact[0] != 0).sum())
        assert torch.equal(torch.sort(listed).values, torch.nonzero(gact[0] != 0).flatten())
        assert float((gact.double() - ref).norm() / ref.norm()) < 1e-3
        results.append(gact)
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,f", [(4096, 11008), (5120, 13824), (1001, 3001)])
def test_fp32_out_rows_path_matches_float64_and_the_default(dtype, d, f):
    """fp32_out at one token (the gate kernel sets the fp32 output row, the rows kernel sums into it with no epilogue;
    d 1001: the plain gate kernel, the row set by one more launch): against float64, within one output ulp of the
    default call, replayed in a CUDA graph; the list length and ticket left at zero."""
    ws, x, ffn, _mask = _case(dtype, d, f, 1, DispatchConfig())
    ref = _reference(ws, x)
    first = ffn(x, fp32_out=True)
    assert first.dtype == torch.float32 and torch.isfinite(first).all()
    assert float((first.double() - ref).norm() / ref.norm()) < (2e-3 if dtype == torch.float16 else 1e-2)
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(first.to(dtype).float(), ffn(x).float(), rtol=ulp, atol=ulp)
    graph, out = _captured(lambda: ffn(x, fp32_out=True))
    for _ in range(3):
        graph.replay()
        torch.testing.assert_close(out, first, rtol=1e-5, atol=1e-5)
    assert not ffn._list_state.any() and not ffn._tickets.any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_out,d_in", [(4096, 4096), (12288, 4096), (5120, 5120), (1001, 1001)])
def test_gemv_matches_float64(dtype, n_out, d_in):
    """The one-token TMA GEMV (triton_gemv.py; 1001 columns are unaligned rows: F.linear) against float64 and
    cuBLAS, with a bias, replayed in a CUDA graph."""
    from actsparse.kernels.triton_gemv import gemv_op
    gen = torch.Generator(device="cuda").manual_seed(n_out)
    w = (torch.randn(n_out, d_in, device="cuda", generator=gen) / d_in ** 0.5).to(dtype)
    b = torch.randn(n_out, device="cuda", generator=gen).to(dtype)
    x = torch.randn(1, 1, d_in, device="cuda", generator=gen).to(dtype)
    y = gemv_op(x, w, b)
    ref = x.double() @ w.double().T + b.double()
    tol = 2e-3 if dtype == torch.float16 else 1e-2
    assert y.shape == (1, 1, n_out) and y.dtype == dtype
    assert float((y.double() - ref).norm() / ref.norm()) < tol / 2
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b), rtol=tol, atol=tol)
    graph, out = _captured(lambda: gemv_op(x, w, b))
    graph.replay()
    torch.testing.assert_close(out, y, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rank,relu_hidden", [(358, False), (384, True)])
@pytest.mark.parametrize("d,f", [(4096, 11008), (1000, 3001)])
@pytest.mark.parametrize("pdl", [False, True])
def test_predictor_list_matches_float64(dtype, d, f, rank, relu_hidden, pdl):
    """A low-rank predictor handed to the kernels (triton_predictor_list.py: its first layer through the TMA GEMV or
    F.linear, its second layer writing the list; rank 358: rows of 716 bytes): the list equals the float64 predicted
    set away from the cut (h rounded to the weights' dtype, as the kernels round it); the FFN given the predictor
    equals float64 restricted to that list, replayed in a CUDA graph, also with fp32_out; the list length left at
    zero. With `pdl` (the list kernel loads its first tile of `up` before waiting for the GEMV that writes h), the
    graph is also replayed on a new token: a list kernel reading h before the GEMV wrote it would read the last
    replay's h."""
    from actsparse.kernels.triton_predictor_list import launch_predictor_list
    from actsparse.modeling.predictors import LowRankLogits
    ws, x, ffn, _mask = _case(dtype, d, f, 1, DispatchConfig(pdl=pdl))
    gen = torch.Generator(device="cuda").manual_seed(rank)
    down = (torch.randn(rank, d, device="cuda", generator=gen) / d ** 0.5).to(dtype)
    up = (torch.randn(f, rank, device="cuda", generator=gen) / rank ** 0.5).to(dtype)
    bias = (torch.randn(f, device="cuda", generator=gen) * 0.5).to(dtype)
    h = (x.double() @ down.double().T).to(dtype).double()
    logits = (h.clamp(min=0) if relu_hidden else h) @ up.double().T + bias.double()
    cut = float(logits.flatten().quantile(0.85))
    low_rank = LowRankLogits(down, up, bias, relu_hidden, cut)
    counts = torch.zeros(2, dtype=torch.int32, device="cuda")
    idx = torch.empty(f, dtype=torch.int32, device="cuda")
    launch_predictor_list(x, low_rank, counts, idx, pdl=pdl)
    listed = torch.zeros(f, dtype=torch.bool, device="cuda")
    listed[idx[:int(counts[0])].long()] = True
    assert int(listed.sum()) == int(counts[0])                        # each neuron once
    clear = (logits[0] - cut).abs() > 2e-2
    assert torch.equal(listed[clear], (logits[0] >= cut)[clear])
    assert 0.1 < float(listed.float().mean()) < 0.2
    ref = _reference(ws, x, listed.double())
    first = ffn(x, low_rank)
    assert torch.isfinite(first).all()
    assert float((first.double() - ref).norm() / ref.norm()) < (2e-3 if dtype == torch.float16 else 1e-2)
    graph, out = _captured(lambda: ffn(x, low_rank))
    for _ in range(3):
        graph.replay()
        torch.testing.assert_close(out, first, rtol=1e-3, atol=1e-3)
    assert not ffn._list_state.any()
    # fp32_out: the list kernel sets the fp32 output row, the rows kernel sums into it (no epilogue), in a graph too.
    first32 = ffn(x, low_rank, fp32_out=True)
    assert first32.dtype == torch.float32
    assert float((first32.double() - ref).norm() / ref.norm()) < (2e-3 if dtype == torch.float16 else 1e-2)
    graph, out = _captured(lambda: ffn(x, low_rank, fp32_out=True))
    for _ in range(3):
        graph.replay()
        torch.testing.assert_close(out, first32, rtol=1e-4, atol=1e-4)
    # The default reads the false positives' gate rows only (gate_first, triton_rows_ffn.py GATE_FIRST); without it
    # every listed neuron's three rows are read: the same sum.
    reading_all = SparseFFN(ws.w_gate, ws.w_up, ws.w_down_t, dispatch=DispatchConfig(pdl=pdl, gate_first=False))
    torch.testing.assert_close(reading_all(x, low_rank, fp32_out=True), first32, rtol=1e-4, atol=1e-4)
    x_first, x_next = x.clone(), torch.randn_like(x)
    next32 = ffn(x_next, low_rank, fp32_out=True)
    for token, expected in [(x_next, next32), (x_first, first32), (x_next, next32)]:
        x.copy_(token)
        graph.replay()
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert not ffn._list_state.any() and not ffn._tickets.any()

