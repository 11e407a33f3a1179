"""`actsparse leaderboard`: table cells against the input JSON values, published rows, PNGs written."""
import csv
import json
import math

import numpy as np
import pytest

from actsparse.eval.leaderboard_cli import main
from actsparse.eval.published import PUBLISHED_ROWS
from actsparse.eval.results import empty_results, write_results


def fake_results(name, zero, cett, ppl_p, groups, per_layer):
    results = empty_results(name)
    results["model"] = {"hidden_act": "fatrelu", "hidden_act_param": 0.01}
    results["data"] = {"name": "jsonl:heldout.jsonl"}
    results["sparsity"] = {"zero_fraction": {"sparsity": zero, "per_layer": per_layer},
                           "cett": {"cett": 0.2, "sparsity": cett, "per_layer": [min(v + 0.05, 1) for v in per_layer]},
                           "ppl_p": {"p": 0.01, "sparsity": ppl_p, "ppl_ratio": 1.009, "per_layer": per_layer}}
    results["perplexity"] = {"dense": 12.5, "cett": 13.1, "ppl_p": 12.6}
    group_rows = {g: {"score": s, "tasks": [f"{g}:0shot"], "complete": True} for g, s in groups.items()}
    results["quality"] = {"tasks": {}, "groups": group_rows, "missing": [], "limit": None, "thresholds": "none",
                          "suites": {"prosparse": {"average": sum(groups.values()) / len(groups),
                                                   "groups": list(groups), "complete": True}}}
    results["wall_time_s"] = {"total": 1.0}
    return results


def write_run(path, steps=12, a0=0.08, c=1.5, alpha=0.5, b=-0.5, seed=0):
    """metrics.jsonl whose activation ratio follows the ReLU-form Sparsing Law curve, plus held-out records."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for step in range(1, steps + 1):
            tokens = step * 2e8
            ratio = math.exp(-c * (tokens / 1e9) ** alpha + b) + a0 + rng.normal(0, 1e-4)
            f.write(json.dumps({"step": step, "lm_loss": 3.0 - 0.05 * step, "reg_loss": 0.1, "l1_lambda": 0.01 * step,
                                "lr": 3e-5, "grad_norm": 1.0, "tokens": tokens, "sparsity": 1 - ratio,
                                "sparsity_per_layer": [1 - ratio] * 2, "tokens_per_s": 1000.0}) + "\n")
            if step % 4 == 0:
                f.write(json.dumps({"step": step, "heldout_loss": 3.1 - 0.05 * step, "heldout_sparsity": 1 - ratio}) + "\n")


@pytest.fixture
def inputs(tmp_path):
    a = fake_results("ours-relu", 0.71, 0.80, 0.84, {"commonsense": 60.0, "reading": 50.0}, [0.6, 0.82])
    b = fake_results("ours-fatrelu", 0.86, 0.90, 0.92, {"commonsense": 58.0, "reading": 47.0}, [0.8, 0.92])
    paths = [write_results(a, str(tmp_path / "a.json")), write_results(b, str(tmp_path / "b.json"))]
    (tmp_path / "run1").mkdir()
    write_run(tmp_path / "run1" / "metrics.jsonl")
    return paths, str(tmp_path / "run1" / "metrics.jsonl"), tmp_path


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_table_holds_our_values_and_published_rows(inputs):
    paths, run, tmp = inputs
    out = tmp / "board"
    assert main([*paths, "--out", str(out), "--runs", run]) == 0
    rows = read_csv(out / "leaderboard.csv")
    ours = {r["model"]: r for r in rows if r["kind"] == "ours"}
    a = ours["ours-relu"]
    assert float(a["zero_fraction_sparsity"]) == pytest.approx(71.0)
    assert float(a["cett_sparsity"]) == pytest.approx(80.0) and float(a["ppl_p_sparsity"]) == pytest.approx(84.0)
    assert float(a["prosparse avg"]) == pytest.approx(55.0) and float(a["commonsense"]) == 60.0
    assert float(a["ppl_dense"]) == 12.5 and float(a["ppl_ppl_p"]) == 12.6
    assert a["open_llm_leaderboard avg"] == "" and "fatrelu(t=0.01)" in a["note"]
    published = [r for r in rows if r["kind"] == "published"]
    assert len(published) == len(PUBLISHED_ROWS)
    prosparse_7b = next(r for r in published if r["model"] == "ProSparse-7B")
    assert float(prosparse_7b["prosparse avg"]) == 38.46 and float(prosparse_7b["zero_fraction_sparsity"]) == 89.32
    assert "Table 1" in prosparse_7b["source"]
    turbo = next(r for r in published if r["model"] == "TurboSparse-Mistral")
    assert float(turbo["open_llm_leaderboard avg"]) == 63.65
    markdown = (out / "leaderboard.md").read_text()
    assert "| ours-fatrelu | ours | 52.50 |" in markdown and "| ProSparse-7B | published |" in markdown


def nontrivial_png(path, min_bytes=10_000):
    import matplotlib.image as mpimg
    assert path.stat().st_size > min_bytes
    pixels = mpimg.imread(str(path))[..., :3]
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert (pixels < 0.5).mean() > 0.005        # more than a blank canvas: axes, lines, text
    return pixels


def test_pngs_and_scaling_fit(inputs):
    paths, run, tmp = inputs
    out = tmp / "board"
    assert main([*paths, "--out", str(out), "--runs", run]) == 0
    for name in ("sparsity_vs_quality", "per_layer_sparsity", "training_curves", "scaling_run1"):
        nontrivial_png(out / f"{name}.png")
    fits = json.loads((out / "scaling_fits.json").read_text())
    assert fits["run1"]["form"] == "relu" and fits["run1"]["A0"] == pytest.approx(0.08, abs=0.01)


def test_scaling_fit_skipped_for_short_runs_and_bad_input(tmp_path, inputs, capsys):
    paths, _, _ = inputs
    short = tmp_path / "short" / "metrics.jsonl"
    short.parent.mkdir()
    write_run(short, steps=4)
    assert main([paths[0], "--out", str(tmp_path / "o"), "--runs", str(short), "--no-published"]) == 0
    assert not list((tmp_path / "o").glob("scaling_*.png")) and (tmp_path / "o" / "training_curves.png").exists()
    assert all(r["kind"] == "ours" for r in read_csv(tmp_path / "o" / "leaderboard.csv"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something-else"}))
    assert main([str(bad), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "schema" in err


def test_run_labels_come_from_the_run_folder_or_the_copied_file_name(tmp_path):
    from actsparse.eval.leaderboard_plots import run_label
    assert run_label(str(tmp_path / "runs" / "prosparse" / "metrics.jsonl")) == "prosparse"
    assert run_label(str(tmp_path / "arms" / "metrics_relu.jsonl")) == "relu"
    assert run_label(str(tmp_path / "arms" / "drelu_run.jsonl")) == "drelu_run"


def test_throughput_cell_reads_a_decode_bench_and_names_other_benches():
    """bench_decode's JSON: the exact path's batch-1 tok/s and speed-up; a kernel-bench JSON: its file name."""
    from actsparse.eval.leaderboard import throughput_cell
    decode = {"source": "/runs/bench_decode.json", "bench": {"records": [
        {"path": "exact", "batch": 8, "sparse_tok_s": 900.0, "speedup": 1.2},
        {"path": "exact", "batch": 1, "sparse_tok_s": 260.3, "speedup": 1.5268},
        {"path": "predicted_auto", "batch": 1, "sparse_tok_s": 290.0, "speedup": 1.69}]}}
    assert throughput_cell(decode) == "260 tok/s, 1.53x dense (exact, bench_decode.json)"
    kernels = {"source": "/runs/bench_kernels.json", "bench": {"records": [{"method": "dense", "us": 110.0}]}}
    assert throughput_cell(kernels) == "bench_kernels.json"
    assert throughput_cell(None) is None

