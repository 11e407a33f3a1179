"""The previous layer's last residual add and the input RMSNorm in the fused q/k/v GEMV (fused_qkv_norm.py,
decode_layer.py), under TRITON_INTERPRET=1.

The op's h and x (NaN-poisoned) against torch's add + LlamaRMSNorm, its product against float64 (an fp32 ffn_out
rounded to the model's dtype first, as the layer's cast does), its torch fallback; tiny LLaMA models (dense, and sparse
with the FFN's norm fused too) with fuse_qkv_norms against the same models without it: greedy tokens, teacher-forced
logits, how many decode steps take the op, eager and compiled; the refusals; bench_decode --fuse-qkv-norm.
"""
import copy
import logging

import pytest
import torch
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels import dispatch, fused_qkv_norm, triton_gemv_prefetch  # noqa: E402
from actsparse.kernels.fused_ffn_norm import fuse_ffn_norms  # noqa: E402
from actsparse.kernels.fused_qkv import fuse_qkv  # noqa: E402
from actsparse.kernels.fused_qkv_norm import fuse_qkv_norms, qkv_add_norm_op  # noqa: E402
from actsparse.kernels.sparse_decoding import greedy_decode, swap_in_sparse_ffns, teacher_forced_logits  # noqa: E402
from actsparse.kernels.sparse_ffn import llama_rms_norm  # noqa: E402
from actsparse.modeling import sparsify  # noqa: E402

from ffn_reference import rms_norm64  # noqa: E402
from tiny_models import compiled_greedy, random_ids, tiny_llama  # noqa: E402

EPS = 1e-5
ULP = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10}


def parts(d, dtype, ffn_dtype, seed):
    """(residual h, ffn_out, norm weight) of a layer boundary; ffn_out in `ffn_dtype` (float32: the FFN's sum)."""
    g = torch.Generator().manual_seed(seed)
    residual, ffn_out = torch.randn(1, d, generator=g).to(dtype), (0.5 * torch.randn(1, d, generator=g)).to(ffn_dtype)
    return residual, ffn_out, (1.0 + 0.2 * torch.randn(d, generator=g)).to(dtype)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype,ffn_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                             (torch.float16, torch.float32)])
def test_op_computes_h_x_and_qkv(dtype, ffn_dtype, bias):
    """h equals torch's `residual + ffn_out.to(dtype)` bit for bit, x LlamaRMSNorm's up to one rounding step, and the
    product (88 rows of d 72: a partial last block, masked columns) the float64 product of the unrounded norm."""
    residual, ffn_out, weight = parts(72, dtype, ffn_dtype, seed=1)
    g = torch.Generator().manual_seed(2)
    w = (torch.randn(88, 72, generator=g) / 8).to(dtype)
    b = (0.1 * torch.randn(88, generator=g)).to(dtype) if bias else None
    h, x, qkv = qkv_add_norm_op(residual, ffn_out, weight, EPS, w, b, False)
    h_ref = residual + ffn_out.to(dtype)
    assert torch.equal(h, h_ref)
    torch.testing.assert_close(x, llama_rms_norm(h_ref, weight, EPS), rtol=1.01 * ULP[dtype], atol=0)
    ref = rms_norm64(h_ref, weight, EPS) @ w.double().T + (0 if b is None else b.double())
    torch.testing.assert_close(qkv.double(), ref, rtol=max(ULP[dtype], 1e-5), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_prefetching_gemv_rounds_an_fp32_ffn_out_first(dtype):
    """The GEMV that loads its rows before it waits (the op's kernel with PDL) takes the fp32 sum too."""
    residual, ffn_out, weight = parts(72, dtype, torch.float32, seed=3)
    w = (torch.randn(26, 72, generator=torch.Generator().manual_seed(4)) / 8).to(dtype)
    x, h = torch.full_like(residual, float("nan")), torch.full_like(residual, float("nan"))
    y = triton_gemv_prefetch.gemv_prefetch(x, w, norm=(residual, ffn_out, weight, EPS, h))
    h_ref = residual + ffn_out.to(dtype)
    assert torch.equal(h, h_ref)
    torch.testing.assert_close(x, llama_rms_norm(h_ref, weight, EPS), rtol=1.01 * ULP[dtype], atol=0)
    torch.testing.assert_close(y.double(), rms_norm64(h_ref, weight, EPS) @ w.double().T,
                               rtol=max(ULP[dtype], 1e-5), atol=1e-6)


def test_op_falls_back_to_torch_and_says_why(caplog):
    """A weight whose rows the GEMV cannot read (d 36: rows not 16-byte aligned in fp16) takes torch's add, norm and
    F.linear (the same roundings as the layer's own forward), said once."""
    dispatch._warned.clear()
    residual, ffn_out, weight = parts(36, torch.float16, torch.float32, seed=5)
    w = (torch.randn(20, 36, generator=torch.Generator().manual_seed(6)) / 8).half()
    with caplog.at_level(logging.WARNING):
        h, x, qkv = qkv_add_norm_op(residual, ffn_out, weight, EPS, w, None, True)
        qkv_add_norm_op(residual, ffn_out, weight, EPS, w, None, True)
    h_ref = residual + ffn_out.half()
    x_ref = llama_rms_norm(h_ref, weight, EPS)
    assert torch.equal(h, h_ref) and torch.equal(x, x_ref) and torch.equal(qkv, torch.nn.functional.linear(x_ref, w))
    said = [r.message for r in caplog.records if "q/k/v GEMV with the input norm" in r.message]
    assert len(said) == 1, said


def _dense(layers=3):
    model = sparsify(tiny_llama(num_hidden_layers=layers, hidden_size=40, intermediate_size=100), "relu")
    fuse_qkv(model)
    return model


def _counting(monkeypatch):
    calls = []
    real = fused_qkv_norm.qkv_add_norm_op
    monkeypatch.setattr(fused_qkv_norm, "qkv_add_norm_op", lambda *a: calls.append(a[-1]) or real(*a))
    return calls


def test_tiny_dense_llama_decodes_the_same(monkeypatch):
    """Dense: prefill through the layers' own forward (the same logits bit for bit), each decode step's layers 2..n
    through the op (layer 1 has no previous layer); greedy tokens equal, teacher-forced logits within rounding."""
    plain = _dense()
    fused = copy.deepcopy(plain)
    assert fuse_qkv_norms(fused, pdl=True) == 2
    ids = random_ids(batch=1, seq=5)
    with torch.no_grad():
        assert torch.equal(fused(ids).logits, plain(ids).logits)
    calls = _counting(monkeypatch)
    tokens = greedy_decode(fused, ids, 4)
    assert calls == [True] * (2 * 3)   # two layers take it, three decode steps after the prefill's token
    assert torch.equal(tokens, greedy_decode(plain, ids, 4))
    torch.testing.assert_close(teacher_forced_logits(fused, tokens, 5), teacher_forced_logits(plain, tokens, 5),
                               rtol=0, atol=1e-5)
    assert fused.model.layers[0].qkv_handoff.pending is None   # the last layer hands nothing on


def test_tiny_sparse_llama_with_both_norms_fused(monkeypatch):
    """Sparse (exact path, the FFN's fp32 sum) with the post-attention norm in the FFN and the input norm in the q/k/v
    GEMV: the op takes the FFN's output as the FFN's op returns it; greedy tokens equal to the sparse model without
    either fusion and to the dense model."""
    dense = _dense()
    sparse = copy.deepcopy(dense)
    swap_in_sparse_ffns(sparse, backend="triton")
    fused = copy.deepcopy(sparse)
    fuse_ffn_norms(fused)
    fuse_qkv_norms(fused)
    ids = random_ids(batch=1, seq=5)
    seen = []
    real = fused_qkv_norm.qkv_add_norm_op
    monkeypatch.setattr(fused_qkv_norm, "qkv_add_norm_op", lambda *a: seen.append(a[1].dtype) or real(*a))
    tokens = greedy_decode(fused, ids, 4)
    assert len(seen) == 6 and set(seen) == {torch.float32}
    assert torch.equal(tokens, greedy_decode(sparse, ids, 4)) and torch.equal(tokens, greedy_decode(dense, ids, 4))
    torch.testing.assert_close(teacher_forced_logits(fused, tokens, 5), teacher_forced_logits(sparse, tokens, 5),
                               rtol=0, atol=1e-5)


def test_compiled_decode_takes_the_op_without_graph_breaks(monkeypatch):
    """Under torch.compile (aot_eager) the handoff between layers is traced (no graph break) and the greedy tokens
    equal the eager fused model's."""
    fused = _dense(layers=2)
    fuse_qkv_norms(fused)
    ids = random_ids(batch=1, seq=5)
    eager_tokens = greedy_decode(fused, ids, 4)
    calls = _counting(monkeypatch)
    tokens, graph_breaks = compiled_greedy(fused, ids, 4)
    assert torch.equal(tokens, eager_tokens)
    assert calls and not graph_breaks, graph_breaks


def test_refusals():
    """Unfused q/k/v projections and a one-layer model raise, naming what to do."""
    with pytest.raises(ValueError, match="run fuse_qkv before fuse_qkv_norms"):
        fuse_qkv_norms(sparsify(tiny_llama(num_hidden_layers=2), "relu"))
    with pytest.raises(ValueError, match="from the second layer on"):
        fuse_qkv_norms(_dense(layers=1))


def test_bench_decode_fuse_qkv_norm(monkeypatch):
    """bench_decode --fuse-qkv --fuse-qkv-norm --fuse-ffn-norm, compiled (aot_eager): the dense and the sparse steps
    take the op, the records say so, and the exact path's greedy tokens equal the dense model's; without --fuse-qkv it
    exits with a one-line message."""
    from actsparse.kernels import bench_decode
    torch._dynamo.reset()
    argv = ["--sparsity", "0.8", "--prompt-len", "4", "--new-tokens", "3", "--no-cuda-graph", "--compile",
            "--predictor-rank", "8", "--exact-kernels", "auto", "--predicted-kernels", "auto", "--fuse-ffn-norm",
            "--fuse-qkv-norm"]
    shape = dict(hidden_size=32, intermediate_size=400, num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                 max_position_embeddings=64)
    with pytest.raises(SystemExit, match="needs --fuse-qkv"):
        bench_decode.run(2, [1], bench_decode.parse_args(argv), device="cpu", shape=shape)
    args = bench_decode.parse_args(argv + ["--fuse-qkv"])
    args.dtype, args.compile_backend = "fp32", "aot_eager"
    calls = _counting(monkeypatch)
    records = bench_decode.run(2, [1], args, device="cpu", shape=shape)
    assert [(r["path"], r["fuse_qkv_norm"]) for r in records] == [("exact", True), ("predicted_auto", True)]
    assert records[0]["greedy_sequences_identical"] == 1.0
    assert calls
    torch._dynamo.reset()
