"""overhead_bench: each mode switches exactly the L1 term and the counters it names; the summary's ratios."""
import pytest
import torch

from actsparse.recipes import overhead_bench


def test_modes_switch_the_l1_term_and_the_counters():
    from transformers import LlamaConfig, LlamaForCausalLM
    from actsparse.modeling import SparsityStats, sparse_mlps, sparsify
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                         num_key_value_heads=1, num_hidden_layers=2, vocab_size=50))
    sparsify(model, "relu")
    stats = SparsityStats(model)
    ids = torch.randint(0, 50, (2, 8))
    for mode, want_l1, want_counts in [("off", False, False), ("counters", False, True), ("l1", True, False),
                                       ("both", True, True)]:
        stats.reset()
        assert overhead_bench.set_mode(model, stats, mode, "mean") is want_l1
        model(input_ids=ids)
        assert all((m.l1_term is not None) is want_l1 for m in sparse_mlps(model)), mode
        counted = stats._zeros is not None and int(stats._entries.sum()) > 0
        assert counted is want_counts, mode


def test_summary_takes_each_rounds_ratio_to_its_own_off_block():
    blocks = [dict(round=0, mode="off", step_s=1.0), dict(round=0, mode="counters", step_s=1.01),
              dict(round=0, mode="l1", step_s=1.02), dict(round=0, mode="both", step_s=1.03),
              dict(round=1, mode="off", step_s=2.0), dict(round=1, mode="counters", step_s=2.02),   # clocks halved
              dict(round=1, mode="l1", step_s=2.04), dict(round=1, mode="both", step_s=2.06)]
    s = overhead_bench.summarize(blocks)
    assert s["both"]["overhead"] == pytest.approx(0.03) and s["off"]["overhead"] == 0.0
    assert s["counters"]["overhead_min"] == pytest.approx(0.01) == s["counters"]["overhead_max"]
    assert s["l1"]["median_step_s"] == pytest.approx(1.53)


def test_runs_the_tiny_recipe_in_one_process(tmp_path):
    """In a subprocess, like every other test that starts DeepSpeed: its process-group caches outlive the run."""
    import json
    import os
    import subprocess
    import sys
    out = tmp_path / "o.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONSAFEPATH": "1"}
    proc = subprocess.run([sys.executable, "-m", "actsparse.recipes.overhead_bench", "tiny", f"output_dir={tmp_path / 'run'}",
                           "--rounds", "1", "--block", "1", "--warmup", "1", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "overhead of the L1 term + counters (both)" in proc.stdout
    result = json.loads(out.read_text())
    assert [b["mode"] for b in result["blocks"]] == list(overhead_bench.MODES)
    assert all(b["step_s"] > 0 for b in result["blocks"])
