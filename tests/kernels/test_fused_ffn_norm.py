"""A decoder layer's post-attention add + RMSNorm fused into the sparse FFN's first kernel (fused_ffn_norm.py; NORM in
triton_gate_tma.py), under TRITON_INTERPRET=1.

The TMA gate kernel's and the GEMV's h and x buffers (poisoned with NaN) against torch's add + LlamaRMSNorm and
float64, and their outputs against float64 on the unrounded norm (the kernels scale their sums by rstd at the end); SparseFFN.forward_add_norm against add + RMSNorm +
forward (exact path, a LowRankLogits predictor, fp32_out) and its fallbacks; a tiny ReLU LLaMA's greedy tokens and
logits with fuse_ffn_norms against the same sparse model without it and the dense model, eager and compiled.
"""
import copy
import logging

import pytest
import torch
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels import (DispatchConfig, SparseFFN, dispatch, triton_gate_tma, triton_gemv,  # noqa: E402
                               triton_gemv_prefetch)
from actsparse.kernels.fused_ffn_norm import fuse_ffn_norms, is_fused  # noqa: E402
from actsparse.kernels.sparse_decoding import greedy_decode, swap_in_sparse_ffns, teacher_forced_logits  # noqa: E402
from actsparse.kernels.sparse_ffn import llama_rms_norm  # noqa: E402
from actsparse.kernels.triton_gate import launch_gate  # noqa: E402
from actsparse.modeling import sparsify  # noqa: E402

from ffn_reference import check, poisoned_empty, random_ffn, reference_ffn, rms_norm64  # noqa: E402
from low_rank_cases import make_predictor, predictor_with_cut  # noqa: E402
from tiny_models import compiled_greedy, random_ids, tiny_llama, tiny_minicpm_like  # noqa: E402

EPS = 1e-5
D, F = 40, 100   # the interpreter's BLOCK_K 32: two K steps, the second partly masked
ULP = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10}
# No bf16 here: the interpreter (triton 3.9) rounds fp32 -> bf16 by truncation (the GPU's cvt rounds to nearest even),
# so h and x cannot match torch's bits; the GPU tests cover bf16.


def layer_inputs(d, dtype, seed, tokens=1):
    """(residual, attn_out, norm weight) of a decoder layer, in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    residual, attn_out = torch.randn(tokens, d, generator=g), 0.5 * torch.randn(tokens, d, generator=g)
    weight = 1.0 + 0.2 * torch.randn(d, generator=g)
    return residual.to(dtype), attn_out.to(dtype), weight.to(dtype)


def check_h_and_x(h, x, residual, attn_out, weight):
    """h is torch's sum bit for bit; x is LlamaRMSNorm's, up to one rounding step where the fp32 sums of squares (taken
    in another order than torch's) move rstd by an ulp, and within two roundings of the float64 norm."""
    assert torch.isfinite(h).all() and torch.isfinite(x).all(), "h or x was not written (NaN poison survived)"
    assert torch.equal(h, residual + attn_out)
    ulp = ULP[x.dtype]
    torch.testing.assert_close(x, llama_rms_norm(h, weight, EPS), rtol=1.01 * ulp, atol=0)
    torch.testing.assert_close(x.double(), rms_norm64(h, weight, EPS), rtol=2.01 * ulp, atol=0)


def check_sums(y, ref64):
    """A NORM kernel's fp32 sums (rounded to y's dtype) against float64: only fp32 rounding in the products and the
    sums, and the output's rounding, part them (x's rounding to the input dtype is not in them)."""
    rtol = max(ULP[y.dtype], 1e-5) if y.dtype != torch.float32 else 1e-5
    torch.testing.assert_close(y.double(), ref64, rtol=rtol, atol=1e-6)


def nan_like(t):
    return torch.full_like(t, float("nan"))


@pytest.mark.parametrize("norm_block", [None, 16], ids=["one-step", "16-column-steps"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d,f", [(D, F), (72, 37)])
def test_gate_kernel_computes_h_and_x(d, f, dtype, norm_block, monkeypatch):
    """NORM in the TMA gate kernel: h and x written by program 0, act(gate) against float64 on the unrounded norm,
    and the list holding exactly the neurons with act(gate) > 0."""
    if norm_block is not None:
        monkeypatch.setattr(triton_gate_tma, "MAX_NORM_BLOCK", norm_block)
    residual, attn_out, weight = layer_inputs(d, dtype, seed=d + f)
    g = torch.Generator().manual_seed(f)
    w, b = (torch.randn(f, d, generator=g) / d ** 0.5).to(dtype), (0.1 * torch.randn(f, generator=g)).to(dtype)

    def gate(x, norm=None):
        gact, counts = torch.full((1, f), float("nan")), torch.zeros(65, dtype=torch.int32)
        idx = torch.zeros(1, f, dtype=torch.int32)
        launch_gate(x, w, b, "relu", 0.0, False, gact, counts, idx, tma=True, norm=norm)
        return gact, sorted(idx[0, :int(counts[0])].tolist())
    x, h = nan_like(residual), nan_like(residual)
    fused = gate(x, (residual, attn_out, weight, EPS, h))
    check_h_and_x(h, x, residual, attn_out, weight)
    check_sums(fused[0], torch.relu(rms_norm64(h, weight, EPS) @ w.double().T + b.double()))
    assert fused[1] == torch.nonzero(fused[0][0] > 0).flatten().tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("kernel", ["gemv", "gemv_prefetch"])
def test_gemv_computes_h_and_x(kernel, relu, dtype):
    """NORM in the TMA GEMV and in the GEMV that loads its whole rows first (the predictor's first layer with PDL;
    d 72 is not a power of two: masked columns); 26 rows: a partial last block of rows."""
    gemv = triton_gemv.gemv if kernel == "gemv" else triton_gemv_prefetch.gemv_prefetch
    residual, attn_out, weight = layer_inputs(72, dtype, seed=5)
    w = (torch.randn(26, 72, generator=torch.Generator().manual_seed(6)) / 8).to(dtype)
    x, h = nan_like(residual), nan_like(residual)
    y = gemv(x, w, relu=relu, norm=(residual, attn_out, weight, EPS, h))
    check_h_and_x(h, x, residual, attn_out, weight)
    ref = rms_norm64(h, weight, EPS) @ w.double().T
    check_sums(y, torch.relu(ref) if relu else ref)


def _record(monkeypatch, module, name, seen):
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: seen.append((name, k.get("norm") is not None)) or real(*a, **k))


@pytest.mark.parametrize("fp32_out", [False, True])
@pytest.mark.parametrize("activation,threshold", [("relu", 0.0), ("fatrelu", 0.25), ("relu2", 0.0)])
def test_forward_add_norm_exact_path(activation, threshold, fp32_out, monkeypatch):
    """No predictor: the TMA gate kernel computes h and x, the rows kernel reads that x; against add + RMSNorm +
    forward and float64, twice on one SparseFFN (list length and tickets left at zero)."""
    seen = []
    _record(monkeypatch, triton_gate_tma, "launch_gate_tma", seen)
    ffn, ref = random_ffn(D, F, activation, threshold, DispatchConfig(), 0.0, seed=3, biases=True)
    for seed in (1, 2):
        residual, attn_out, weight = layer_inputs(D, torch.float32, seed)
        h, y = ffn.forward_add_norm(residual, attn_out, weight, EPS, fp32_out=fp32_out)
        x = llama_rms_norm(residual + attn_out, weight, EPS)
        assert torch.equal(h, residual + attn_out) and y.dtype == torch.float32
        check(y, ref(x))
        torch.testing.assert_close(y, ffn(x, fp32_out=fp32_out), rtol=1e-6, atol=1e-6)
        assert not ffn._list_state.any() and not ffn._tickets.any()
    assert seen == [("launch_gate_tma", True), ("launch_gate_tma", False)] * 2   # fused, then the reference call


@pytest.mark.parametrize("cut_kind", ["none", "some", "all"])
def test_forward_add_norm_low_rank_predictor(cut_kind, monkeypatch):
    """A LowRankLogits: the predictor's GEMV computes h and x, its list kernel and the rows kernel follow; against
    float64 restricted to the set the predictor picks on torch's x (no logit near the cut), fp32_out as the decode
    asks for it."""
    seen = []
    _record(monkeypatch, triton_gemv, "gemv", seen)
    ffn, ref = random_ffn(D, F, "relu", 0.0, DispatchConfig(), 0.0, seed=7, biases=True)
    residual, attn_out, weight = layer_inputs(D, torch.float32, seed=8)
    x = llama_rms_norm(residual + attn_out, weight, EPS)
    low_rank, mask = predictor_with_cut(make_predictor(D, F, 12, True, True, seed=9), x, cut_kind)
    h, y = ffn.forward_add_norm(residual, attn_out, weight, EPS, low_rank, fp32_out=True)
    assert torch.equal(h, residual + attn_out)
    check(y, ref(x, mask))
    torch.testing.assert_close(y, ffn(x, low_rank, fp32_out=True), rtol=1e-6, atol=1e-6)
    assert seen == [("gemv", True), ("gemv", False)]


def test_forward_add_norm_half_precision():
    d, f = 64, 120
    g = torch.Generator().manual_seed(11)
    w_gate, w_up = (torch.randn(f, d, generator=g) / d ** 0.5 for _ in range(2))
    w_down = torch.randn(d, f, generator=g) / f ** 0.5
    w_gate, w_up, w_down = (w.half() for w in (w_gate, w_up, w_down))
    ffn = SparseFFN(w_gate, w_up, w_down.T.contiguous(), activation="relu")
    ffn.workspace_alloc = poisoned_empty
    residual, attn_out, weight = layer_inputs(d, torch.float16, seed=12)
    h, y = ffn.forward_add_norm(residual, attn_out, weight, EPS)
    x = llama_rms_norm(residual + attn_out, weight, EPS)
    assert torch.equal(h, residual + attn_out) and y.dtype == torch.float16
    ref = reference_ffn(x, w_gate, w_up, w_down, "relu")
    assert float((y.double() - ref).norm() / ref.norm()) < 2e-3


def test_fallbacks_compute_add_norm_in_torch_and_say_why(caplog):
    """Wherever the first kernel cannot take the norm, torch's add + RMSNorm then forward: the same tensors as those
    ops, each reason said once."""
    ffn, _ = random_ffn(D, F, "relu", 0.0, DispatchConfig(), 0.0, seed=13)
    residual, attn_out, weight = layer_inputs(D, torch.float32, seed=14, tokens=3)
    one = (residual[:1], attn_out[:1], weight)
    x_one = llama_rms_norm(one[0] + one[1], weight, EPS)
    low_rank, _ = predictor_with_cut(make_predictor(D, F, 12, True, False, seed=15), x_one, "some")
    cases = [("more than one token", ffn, (residual, attn_out, weight), None),
             ("a predicted mask or index list", ffn, one, torch.arange(0, F, 3)),
             ("its own input", ffn, one, low_rank._replace(source=x_one)),
             ("exact_kernel='gate_rows'", _with(ffn, dispatch=DispatchConfig(exact_kernel="gate_rows")), one, None),
             ("gate_tma=False", _with(ffn, dispatch=DispatchConfig(gate_tma=False)), one, None),
             ("the torch backend", _with(ffn, backend="torch"), one, None)]
    dispatch._warned.clear()
    for reason, case_ffn, (r, a, w), active in cases:
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            h, y = case_ffn.forward_add_norm(r, a, w, EPS, active)
            case_ffn.forward_add_norm(r, a, w, EPS, active)
        said = [rec.getMessage() for rec in caplog.records if "add + RMSNorm" in rec.getMessage()]
        assert len(said) == 1 and reason in said[0], (reason, said)
        assert torch.equal(h, r + a)
        assert torch.equal(y, case_ffn(llama_rms_norm(r + a, w, EPS), active))


def _with(ffn, **attrs):
    other = copy.copy(ffn)
    other._plans = {}
    for name, value in attrs.items():
        setattr(other, name, value)
    return other


def _models(layers=2):
    """A tiny ReLU LLaMA (d_model 40, d_ff 100: two interpreter K steps), its sparse copy and a fused sparse copy."""
    dense = sparsify(tiny_llama(num_hidden_layers=layers, hidden_size=D, intermediate_size=F), "relu")
    sparse = copy.deepcopy(dense)
    swap_in_sparse_ffns(sparse, backend="triton")
    fused = copy.deepcopy(sparse)
    assert fuse_ffn_norms(fused) == layers
    return dense, sparse, fused


def test_tiny_llama_decode_with_fused_norms(monkeypatch):
    """Prefill through the layers' own forward (the same logits bit for bit), each decode step's FFNs through
    forward_add_norm; greedy tokens equal to the sparse model without it and to the dense model, teacher-forced
    logits within rounding of both; again with a stand-in low-rank predictor on every layer."""
    from actsparse.kernels.bench_predictor import GateSVDPredictor
    dense, sparse, fused = _models()
    ids = random_ids(batch=1, seq=5)
    with torch.no_grad():
        assert torch.equal(fused(ids).logits, sparse(ids).logits)
    calls = []
    monkeypatch.setattr(SparseFFN, "forward_add_norm", _counting(SparseFFN.forward_add_norm, calls))
    tokens = greedy_decode(fused, ids, 4)
    assert len(calls) == 2 * 3   # two layers, three decode steps after the prefill's token
    assert torch.equal(tokens, greedy_decode(sparse, ids, 4)) and torch.equal(tokens, greedy_decode(dense, ids, 4))
    logits = teacher_forced_logits(fused, tokens, 5)
    torch.testing.assert_close(logits, teacher_forced_logits(sparse, tokens, 5), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, teacher_forced_logits(dense, tokens, 5), rtol=0, atol=1e-4)
    g = torch.Generator().manual_seed(3)
    for plain, with_norm in zip(sparse.model.layers, fused.model.layers):
        predictor = GateSVDPredictor(plain.mlp.ffn.w_gate, None, rank=8)
        predictor.set_margin(torch.randn(64, D, generator=g), 0.5)
        plain.mlp.predictor = with_norm.mlp.predictor = predictor
    calls.clear()
    tokens = greedy_decode(fused, ids, 4)
    assert len(calls) == 6 and all(kind == "LowRankLogits" for kind in calls)
    assert torch.equal(tokens, greedy_decode(sparse, ids, 4))
    torch.testing.assert_close(teacher_forced_logits(fused, tokens, 5), teacher_forced_logits(sparse, tokens, 5),
                               rtol=0, atol=1e-5)


def _counting(method, calls):
    def counted(self, residual, attn_out, weight, eps, active=None, fp32_out=False):
        calls.append(type(active).__name__)
        return method(self, residual, attn_out, weight, eps, active, fp32_out)
    return counted


def test_compiled_decode_takes_the_op(monkeypatch):
    """Under torch.compile (aot_eager) the fused layer's FFN is the one opaque op (no graph break), and the greedy
    tokens equal the eager fused model's."""
    _, sparse, fused = _models(layers=1)
    ids = random_ids(batch=1, seq=5)
    eager_tokens = greedy_decode(fused, ids, 4)
    calls = []
    monkeypatch.setattr(SparseFFN, "forward_add_norm", _counting(SparseFFN.forward_add_norm, calls))
    tokens, graph_breaks = compiled_greedy(fused, ids, 4)
    assert torch.equal(tokens, eager_tokens)
    assert calls and not graph_breaks, graph_breaks


def test_fuse_ffn_norms_takes_plain_pre_norm_layers_only():
    """Idempotent on LLaMA layers; a MiniCPM-style layer (scaled residuals, torch's RMSNorm) raises, naming its class;
    a model without sparse FFNs raises."""
    _, _, fused = _models(layers=1)
    layer = fused.model.layers[0]
    forward = layer.forward
    assert is_fused(layer) and fuse_ffn_norms(fused) == 1 and layer.forward == forward
    minicpm = sparsify(tiny_minicpm_like(), "relu")
    swap_in_sparse_ffns(minicpm, backend="torch")
    with pytest.raises(ValueError, match="MiniCPMLikeLayer"):
        fuse_ffn_norms(minicpm)
    with pytest.raises(ValueError, match="swap_in_sparse_ffns"):
        fuse_ffn_norms(tiny_llama(num_hidden_layers=1))


def test_bench_decode_fuse_ffn_norm(monkeypatch):
    """bench_decode --fuse-ffn-norm, compiled (aot_eager): the sparse decode steps of the exact and the predictor path
    take forward_add_norm, the records say it is on for sparse and off for dense, and the exact path's greedy tokens
    equal the dense model's."""
    from actsparse.kernels import bench_decode
    torch._dynamo.reset()
    args = bench_decode.parse_args(["--sparsity", "0.8", "--prompt-len", "4", "--new-tokens", "3", "--no-cuda-graph",
                                    "--compile", "--predictor-rank", "8", "--exact-kernels", "auto",
                                    "--predicted-kernels", "auto", "--fuse-ffn-norm"])
    args.dtype, args.compile_backend = "fp32", "aot_eager"
    calls = []
    monkeypatch.setattr(SparseFFN, "forward_add_norm", _counting(SparseFFN.forward_add_norm, calls))
    shape = dict(hidden_size=32, intermediate_size=400, num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                 max_position_embeddings=64)
    records = bench_decode.run(2, [1], args, device="cpu", shape=shape)
    assert [(r["path"], r["fuse_ffn_norm"], r["dense_fuse_ffn_norm"]) for r in records] == [
        ("exact", True, False), ("predicted_auto", True, False)]
    assert records[0]["greedy_sequences_identical"] == 1.0
    assert {"NoneType", "LowRankLogits"} <= set(calls)
    torch._dynamo.reset()
