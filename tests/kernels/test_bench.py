"""bench-kernels on CPU: exit code 2 without a GPU; one benchmark case end to end through the interpreter
(fp32, tiny shape) with a stand-in timer, so every method's call and correctness check runs; report files."""
import importlib.util
import json

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)

from actsparse.kernels import bench, configs  # noqa: E402
from actsparse.kernels.bench_data import make_weight_sets, neuron_probabilities  # noqa: E402
from actsparse.kernels.read_floor import ReadFloor  # noqa: E402

FLOOR = ReadFloor(t0_us=1.0, gbs=100.0)   # a stand-in device: 1 µs + bytes at 100 GB/s


def test_cpu_exits_with_code_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    from actsparse.kernels import bench_breakdown, bench_decode
    for main in (bench.main, bench_breakdown.main, bench_decode.main):
        assert main([]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err


def test_neuron_probabilities_mean_and_heavy_tail():
    p = neuron_probabilities(4000, 0.9, torch.Generator().manual_seed(0))
    assert abs(float(p.mean()) - 0.1) < 1e-6
    assert float(p.max()) > 0.5 and float(torch.median(p)) < 0.05  # a few hot neurons, most cold


def _one_pass_timer(calls, reps):
    for call in calls:
        call()
    return {"us": 10.0, "us_p10": 9.0, "us_p90": 11.0}  # the stand-in timer's fixed figures, not measurements


COMMON_METHODS = {"dense", "index_select", "ours_union", "ours_union_gate_up", "ours_predicted_union",
                  "ours_predicted_fused", "ours_dispatch"}


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
def test_bench_case_batch_1_has_the_inline_compaction_pdl_and_index_methods(caplog):
    """Batch 1 adds the inline compaction, the PDL launches and the index list; under the interpreter PDL is unusable, which the
    log says once, and the results stay exact."""
    from actsparse.kernels import dispatch
    dispatch._warned.clear()   # warn_once is per process: another test may have said it already
    d, f = 40, 100
    sets = make_weight_sets(d, f, torch.float32, "cpu", min_total_bytes=1)
    records = bench.bench_case("tiny", d, f, 1, 0.7, sets, torch.float32, 1, FLOOR, torch.Generator().manual_seed(0),
                               timer=_one_pass_timer, device="cpu")
    assert {r["method"] for r in records} == COMMON_METHODS | {"ours_predicted_inline", "ours_union_pdl",
                                                               "ours_predicted_union_pdl", "ours_predicted_index",
                                                               "ours_union_rows", "ours_predicted_rows",
                                                               "ours_predicted_index_rows", "ours_union_atomic",
                                                               "ours_predicted_index_atomic", "ours_predicted_index_pdl",
                                                               "ours_union_gate_rows", "ours_union_rows_plain_gate",
                                                               "ours_union_rows_prefetch", "ours_union_rows_fp32_out",
                                                               "ours_union_stream",
                                                               "ours_union_stream_p25", "ours_union_stream_p50",
                                                               "ours_union_stream_w8", "ours_union_stream_p50_w8"}
    for r in records:
        assert "error" not in r and r["rel_err"] < 1e-4, r
    assert "DispatchConfig(pdl=True), GemvLinear(pdl=True)) unavailable under the Triton interpreter" in caplog.text


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
def test_bench_case_runs_every_method_correctly(tmp_path):
    d, f = 40, 100
    sets = make_weight_sets(d, f, torch.float32, "cpu", min_total_bytes=1)
    records = bench.bench_case("tiny", d, f, 3, 0.7, sets, torch.float32, 1, FLOOR, torch.Generator().manual_seed(0),
                               timer=_one_pass_timer, device="cpu")
    methods = {r["method"] for r in records}
    assert methods == COMMON_METHODS | {"ours_per_token", "ours_predicted_per_token"}
    for r in records:
        assert "error" not in r and r["rel_err"] < 1e-4, r
        assert 0 < r["active_per_token"] <= r["active_union"] <= 1
        # the floor: the read floor's time for the bytes the method must read (fp32 here), against the timer's 10 µs
        assert r["floor_us"] == pytest.approx(1.0 + r["must_read_bytes"] / 1e5)
        assert r["floor_fraction"] == pytest.approx(r["floor_us"] / 10.0)
        assert r["max_speedup"] == pytest.approx(10.0 / r["floor_us"])
    dense = next(r for r in records if r["method"] == "dense")
    assert dense["must_read_bytes"] == 3 * d * f * 4
    union = next(r for r in records if r["method"] == "ours_union")
    assert union["must_read_bytes"] == pytest.approx(d * f * 4 + 2 * d * 4 * union["active_union"] * f)
    meta = {"device": "cpu", "dtype": "fp32", "copy_gbs": 100.0, "read_t0_us": 1.0, "read_gbs": 100.0,
            "command": "test"}
    bench.write_report(records, tmp_path, meta)
    assert (tmp_path / "bench_kernels.png").exists()
    md = (tmp_path / "bench_kernels.md").read_text()
    assert "ours_union" in md and "read floor 1.0 µs + bytes at 100 GB/s, copy bandwidth 100 GB/s" in md
    assert bench.main(["--report-from", str(tmp_path / "bench_kernels.json"), "--out-dir", str(tmp_path / "re")]) == 0
    assert json.loads((tmp_path / "re" / "bench_kernels.json").read_text())["records"] == records


# bench_decode.run's model shape for the CPU tests: 2 layers of it decode in seconds under the interpreter.
TINY_DECODE_SHAPE = dict(hidden_size=32, intermediate_size=400, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=97, max_position_embeddings=64)


def _compiled_tiny_decode_args(bench_decode, *flags):
    """bench_decode's arguments for a compiled CPU run at 80% sparsity, 4 prompt and 3 new tokens, no CUDA graph, plus
    `flags`; fp32, and aot_eager (no code generation on CPU: what is traced is the point)."""
    args = bench_decode.parse_args(["--sparsity", "0.8", "--prompt-len", "4", "--new-tokens", "3", "--no-cuda-graph",
                                    "--compile", *flags])
    args.dtype, args.compile_backend = "fp32", "aot_eager"
    return args


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
def test_bench_decode_flow_on_a_tiny_model():
    """bench_decode's model build, layer-by-layer gate biases and dense-vs-sparse loop, tiny and on CPU."""
    from actsparse.kernels import bench_decode
    args = bench_decode.parse_args(["--sparsity", "0.8", "--prompt-len", "4", "--new-tokens", "3",
                                    "--no-cuda-graph", "--predicted-kernels", "lists,lists_inline,fused,rows"])
    args.dtype = "fp32"
    args.predictor_rank = 8
    exact, exact_rows, lists, inline, fused, rows = bench_decode.run(2, [1], args, device="cpu",
                                                                     shape=TINY_DECODE_SHAPE)
    assert [r["path"] for r in (exact, exact_rows, lists, inline, fused, rows)] == [
        "exact", "exact_rows", "predicted_lists", "predicted_lists_inline", "predicted_fused", "predicted_rows"]
    for r in (lists, inline, fused, rows):
        assert 0 < r["predictor_recall"] <= 1 and r["sparse_tok_s"] > 0
    for rec in (exact, exact_rows):
        assert len(rec["per_layer_active"]) == 2
        assert all(0.1 < a < 0.3 for a in rec["per_layer_active"]), rec["per_layer_active"]  # target 0.2
        assert rec["greedy_sequences_identical"] == 1.0 and rec["sparse_tok_s"] > 0
        assert rec["teacher_forced"]["argmax_agreement"] == 1.0 and rec["teacher_forced"]["max_abs_diff"] < 1e-3


def test_bench_decode_pdl_on_the_predictor_paths_only():
    """--pdl predicted: the exact path without PDL, the predictor path with it (on CPU it launches without, said once),
    and with --gemv-o every o projection is a GemvLinear launched with PDL; the exact path still decodes the dense
    tokens."""
    from actsparse.kernels import bench_decode
    from actsparse.kernels.triton_gemv import GemvLinear
    args = bench_decode.parse_args(["--sparsity", "0.8", "--prompt-len", "4", "--new-tokens", "3", "--no-cuda-graph",
                                    "--exact-kernels", "auto", "--predicted-kernels", "rows", "--gemv-o",
                                    "--pdl", "predicted"])
    args.dtype = "fp32"
    args.predictor_rank = 8
    built = []
    build = bench_decode.build_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_decode, "build_model", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
        exact, rows = bench_decode.run(2, [1], args, device="cpu", shape=TINY_DECODE_SHAPE)
    assert [(r["path"], r["pdl"]) for r in (exact, rows)] == [("exact", False), ("predicted_rows", True)]
    assert exact["greedy_sequences_identical"] == 1.0 and rows["sparse_tok_s"] > 0
    o_projections = [m for m in built[0].modules() if isinstance(m, GemvLinear)]
    assert len(o_projections) == 2 and all(m.pdl for m in o_projections)


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
def test_bench_decode_on_a_trained_checkpoint_folder(tmp_path):
    """--model: an exported FATReLU checkpoint is loaded as saved (its threshold too), and not re-biased."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from actsparse.kernels import bench_decode
    from actsparse.modeling import export_hf, sparse_mlps, sparsify
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=96, num_attention_heads=4,
                                         num_key_value_heads=2, num_hidden_layers=3, vocab_size=97,
                                         max_position_embeddings=64))
    sparsify(model, "fatrelu", 0.01)
    export_hf(model, tmp_path / "ckpt")
    args = bench_decode.parse_args(["--model", str(tmp_path / "ckpt"), "--prompt-len", "4", "--new-tokens", "3",
                                    "--no-cuda-graph", "--predictor-rank", "0", "--layers", "8"])
    args.dtype = "fp32"
    rec, rows = bench_decode.run(0, [1], args, device="cpu")
    assert rows["path"] == "exact_rows" and rows["greedy_sequences_identical"] == 1.0
    assert rec["layers"] == 3 and len(rec["per_layer_active"]) == 3
    loaded = bench_decode.load_trained(str(tmp_path / "ckpt"), torch.float32, "cpu")
    assert [m.threshold for m in sparse_mlps(loaded)] == [0.01] * 3
    assert all(m.gate_proj.bias is None for m in sparse_mlps(loaded))
    assert rec["greedy_sequences_identical"] == 1.0 and rec["teacher_forced"]["argmax_agreement"] == 1.0


def test_gate_svd_predictor_selects_the_requested_fraction_and_full_rank_is_the_gate():
    """At full rank the stand-in predictor is the gate's sign (the SVD is exact); the margin hits the fraction."""
    from actsparse.kernels.bench_predictor import GateSVDPredictor, predictor_bytes_fraction
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(60, 16, generator=g), torch.randn(60, generator=g), torch.randn(200, 16, generator=g)
    full = GateSVDPredictor(w, b, rank=16)
    gate_sign = (x.double() @ w.double().t() + b.double()) > 0
    assert (full(x) != gate_sign).float().mean() < 2e-3   # only logits within fp32 error of 0 may differ
    low = GateSVDPredictor(w, b, rank=4)
    low.set_margin(x, 0.15)
    assert abs(low(x).float().mean().item() - 0.15) < 0.01
    assert abs(predictor_bytes_fraction(358, 4096, 11008) - 0.04) < 0.001


def test_logit_agreement_counts_flips_and_near_ties():
    from actsparse.kernels.sparse_decoding import logit_agreement
    ref = torch.tensor([[[3.0, 1.0, 0.0], [1.0, 0.99, 0.0], [0.0, 2.0, 5.0], [0.0, 4.0, 1.0]]])
    other = ref.clone()
    other[0, 0, 0] = 3.01    # rounding-level differences where nothing flips
    other[0, 2, 2] = 5.01
    other[0, 1, 1] = 1.005   # near tie (gap 0.01, diff 0.015): flips
    other[0, 3, 0] = 5.0     # far from a tie (gap 3, diff 5): flips
    res = logit_agreement(ref, other)
    assert res["argmax_agreement"] == 0.5 and res["max_abs_diff"] == 5.0
    assert abs(res["typical_diff"] - 0.01) < 1e-6
    assert res["near_tie_disagreements"] == 0.5
    assert logit_agreement(ref, ref)["argmax_agreement"] == 1.0


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
def test_bench_decode_compiled_matches_eager_without_recompiling():
    """--compile: the FFN stays one opaque custom op inside the compiled graph; exact greedy output equals dense;
    a prefill and a decode variant only (a recompile per call would make the GPU run compile for minutes)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()   # other tests' compiled graphs count there too
    from actsparse.kernels import bench_decode
    args = _compiled_tiny_decode_args(bench_decode, "--predictor-rank", "0")
    for rec in bench_decode.run(2, [1], args, device="cpu", shape=TINY_DECODE_SHAPE):   # exact, exact_rows
        assert rec["compiled"] and rec["greedy_sequences_identical"] == 1.0
        assert rec["teacher_forced"]["argmax_agreement"] == 1.0
    counters = torch._dynamo.utils.counters
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 4   # dense and sparse, prefill and decode each
    torch._dynamo.reset()


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
def test_bench_decode_gemv_o_and_both_fp32_out_settings():
    """--gemv-o (o projections through the Triton GEMV, dense and sparse alike) and --fp32-out both: the exact path is
    timed with and without the FFN's fp32 sum, and every record's greedy output equals the dense model's."""
    torch._dynamo.reset()
    from actsparse.kernels import bench_decode
    from actsparse.kernels.triton_gemv import GemvLinear
    args = _compiled_tiny_decode_args(bench_decode, "--predictor-rank", "0", "--exact-kernels", "auto", "--gemv-o",
                                      "--fp32-out", "both")
    built = []
    build = bench_decode.build_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_decode, "build_model", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
        records = bench_decode.run(2, [1], args, device="cpu", shape=TINY_DECODE_SHAPE)
    assert [(r["path"], r["fp32_out"], r["gemv_o"]) for r in records] == [("exact", True, True),
                                                                        ("exact_no_fp32_out", False, True)]
    assert all(r["greedy_sequences_identical"] == 1.0 and r["teacher_forced"]["argmax_agreement"] == 1.0
               for r in records)
    assert sum(isinstance(m, GemvLinear) for m in built[0].modules()) == 2


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
def test_bench_decode_fused_predictor_both_settings(monkeypatch):
    """--fused-predictor both on the rows path, compiled: the fused path runs the list kernel and not the compaction,
    the `_mask` path the reverse; both decode the same greedy tokens (same predicted sets, computed two ways)."""
    torch._dynamo.reset()
    from actsparse.kernels import bench_decode, triton_ffn, triton_predictor_list
    launches = []
    for module, name in ((triton_predictor_list, "launch_predictor_list"), (triton_ffn, "compact_mask")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _r=real, _n=name, **k: launches.append(_n) or _r(*a, **k))
    args = _compiled_tiny_decode_args(bench_decode, "--predictor-rank", "8", "--exact-kernels", "auto",
                                      "--predicted-kernels", "auto", "--fused-predictor", "both")
    seen = {}
    run_path = bench_decode.tokens_per_s

    def tokens_per_s(model, ids, new_tokens, graph):
        launches.clear()
        tps, out = run_path(model, ids, new_tokens, graph)
        seen[len(seen)] = (set(launches), out)
        return tps, out
    monkeypatch.setattr(bench_decode, "tokens_per_s", tokens_per_s)
    records = bench_decode.run(2, [1], args, device="cpu", shape=TINY_DECODE_SHAPE)
    assert [(r["path"], r.get("fused_predictor")) for r in records] == [
        ("exact", None), ("predicted_auto", True), ("predicted_auto_mask", False)]
    (_, dense), (_, exact), (fused_calls, fused), (mask_calls, masked) = (seen[i] for i in range(4))
    assert fused_calls == {"launch_predictor_list"} and mask_calls == {"compact_mask"}
    assert torch.equal(fused, masked) and torch.equal(exact, dense)
    torch._dynamo.reset()
