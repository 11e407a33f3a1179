"""The recipe end to end on CPU: 2-process ZeRO-3 over gloo (tiny config), kill-and-resume, SIGTERM, export.

References are written out independently: lambda per step from ProSparse Algorithm 1 as printed
(PAPERS.md (c)); the uninterrupted run's loss trajectory for the resumed one; the live gathered weights
for the consolidated checkpoint.
"""
from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch

from prosparse_reference import algorithm_1
from recipe_runs import latest, read_metrics, run_on_two_ranks, run_train, start_train, train_env, wait_for

pytestmark = pytest.mark.slow

STEPS = 12
# Compressed progressive schedule: stage 0 (lambda 0) to step 2, warm-up lambda 0.05 to 4, sine ramps after.
STAGES = [[0.0, 2], [0.05, 4], [0.5, 8], [1.0, 11]]
TINY = ["tiny", f"train.steps={STEPS}", "train.checkpoint_every=4", "train.eval_batches=1",
        f"l1.stages={STAGES}", "optim.warmup_steps=2"]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("two_rank")
    result = run_train(["--nproc-per-node", "2", *TINY, f"output_dir={cwd / 'run'}"], cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd / "run"


def test_two_rank_zero3_loss_falls_lambda_follows_schedule_sparsity_rises(two_rank_run):
    steps, heldout = read_metrics(two_rank_run)
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    for r in steps:
        assert r["l1_lambda"] == pytest.approx(algorithm_1(r["step"], STAGES), abs=1e-12), r["step"]
        assert r["tokens"] == r["step"] * 2 * 4 * 2 * 64      # ranks * micro * accum * seq_len
        assert len(r["sparsity_per_layer"]) == 2 and r["grad_norm"] > 0
    assert steps[-1]["lm_loss"] < steps[0]["lm_loss"] - 1.0
    assert heldout[-1]["heldout_loss"] < heldout[0]["heldout_loss"] - 1.0
    first, last = steps[0]["sparsity"], steps[-1]["sparsity"]
    assert 0.3 < first < 0.7 and last > first + 0.2          # ReLU on random init ~ half zeros; L1 pushes up
    assert latest(two_rank_run) == f"global_step{STEPS}"
    shards = list((two_rank_run / "checkpoints" / f"global_step{STEPS}").glob("*optim_states.pt"))
    assert len(shards) == 2                                   # ZeRO: one optimizer shard per rank


def test_in_loop_cett_under_zero3_matches_the_checkpoint_on_cpu(tmp_path):
    """train.cett_every: the CETT sparsity logged under ZeRO-3, every parameter partitioned (persistence
    threshold 0, so W_down exists whole only inside its forward), equals the same metric computed afterwards
    on the consolidated final weights and the same held-out batch, in one process."""
    import json
    from actsparse.eval.cett import cett_sparsity_on_batch
    from actsparse.recipes.config import load_recipe
    from actsparse.recipes.consolidate import load_run_model
    from actsparse.recipes.data import build_datasets, heldout_batches
    ds_json = tmp_path / "partition_all.json"
    ds_json.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    run_dir = tmp_path / "run"
    result = run_train(["--nproc-per-node", "2", *TINY, "train.steps=4", "train.cett_every=2",
                        f"train.deepspeed_json={ds_json}", f"output_dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    cett = {r["step"]: r["cett_sparsity"] for r in records if "cett_sparsity" in r}
    assert sorted(cett) == [2, 4] and all(0.0 < v < 1.0 for v in cett.values())
    model, tokenizer = load_run_model(run_dir)
    cfg = load_recipe(run_dir / "recipe.yaml")
    batch = next(heldout_batches(build_datasets(cfg.data, tokenizer).heldout, cfg.train.micro_batch_size, 1))
    assert cett[4] == pytest.approx(cett_sparsity_on_batch(model, batch, 0.2), abs=1e-6)
    _, heldout = read_metrics(run_dir)        # same batch (eval_batches=1): CETT zeroes at least the exact zeros
    assert cett[4] >= heldout[-1]["heldout_sparsity"] - 1e-9


def test_sigkill_after_checkpoint_then_resume_gives_the_same_losses(two_rank_run, tmp_path):
    run_dir = tmp_path / "run"
    args = ["--nproc-per-node", "2", *TINY, f"output_dir={run_dir}"]
    proc = start_train(args, tmp_path)
    wait_for(lambda: latest(run_dir) == "global_step8", proc)
    os.killpg(proc.pid, signal.SIGKILL)                       # no handler, no cleanup: a node failure
    proc.wait()
    resumed = run_train(args, tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    reference, _ = read_metrics(two_rank_run)
    got, _ = read_metrics(run_dir)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for ref, new in zip(reference, got):
        for key in ("lm_loss", "reg_loss", "l1_lambda", "lr", "grad_norm", "sparsity"):
            assert new[key] == pytest.approx(ref[key], rel=0, abs=1e-6), (key, ref["step"])


def test_sigterm_checkpoints_at_the_next_step_and_exits_zero(tmp_path):
    run_dir = tmp_path / "run"
    # Also the activation-checkpointing path (non-reentrant, so the L1 term keeps its gradient).
    proc = start_train(["tiny", "train.steps=200", "train.checkpoint_every=0", "train.activation_checkpointing=true",
                        "l1.stages=[[0, 1], [0.05, 2], [0.5, 200]]", f"output_dir={run_dir}"], tmp_path)
    wait_for(lambda: (run_dir / "metrics.jsonl").exists() and len(read_metrics(run_dir)[0]) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    steps, _ = read_metrics(run_dir)
    stopped_at = steps[-1]["step"]
    assert 3 <= stopped_at < 200
    assert latest(run_dir) == f"global_step{stopped_at}"
    assert "stopped at step" in output
    assert steps[-1]["l1_lambda"] > 0 and steps[-1]["reg_loss"] > 0


GATHER_SCRIPT = '''
import sys, torch, deepspeed, torch.distributed as dist
from actsparse.recipes.config import load_recipe
from actsparse.recipes.continue_pretrain import exit_rank, train

def save_live_weights(engine):
    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        if dist.get_rank() == 0:
            torch.save({n: p.detach().clone() for n, p in params.items()}, sys.argv[1])

train(load_recipe("tiny", sys.argv[2:]), on_end=save_live_weights)
exit_rank(0)
'''


def test_consolidated_checkpoint_equals_live_gathered_weights(tmp_path):
    from actsparse.recipes.consolidate import load_run_model
    from actsparse.modeling import sparse_mlps

    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    live_file, run_dir = tmp_path / "live.pt", tmp_path / "run"
    result = run_on_two_ranks(script, [str(live_file), "train.steps=3", "train.eval_batches=0",
                                       "train.export_at_end=true", f"output_dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    live = torch.load(live_file)
    model, tokenizer = load_run_model(run_dir)
    consolidated = dict(model.named_parameters())
    assert set(consolidated) == set(live)
    for name, tensor in live.items():
        assert torch.equal(consolidated[name], tensor), name
    assert [m.activation for m in sparse_mlps(model)] == ["relu", "relu"]
    assert tokenizer.eos_token_id == model.config.eos_token_id
    from safetensors.torch import load_file                 # the end-of-run export: the same weights
    exported = load_file(run_dir / "export" / "model.safetensors")
    for name, tensor in exported.items():
        assert torch.equal(tensor, live[name]), name


def test_runs_unchanged_under_srun_style_variables(tmp_path):
    """Two processes that only have SLURM's variables (as `srun` sets them, no torchrun) form one job."""
    from actsparse.recipes.distributed_env import free_port

    from recipe_runs import TRAIN

    run_dir, port = tmp_path / "run", free_port()
    procs = []
    for rank in range(2):
        env = {k: v for k, v in train_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_JOB_ID="4242",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(TRAIN + ["tiny", "train.steps=3", "train.eval_batches=0", f"output_dir={run_dir}"],
                                      cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=150)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "on 2 CPU rank(s)" in outputs[0]
    steps, _ = read_metrics(run_dir)
    assert [r["step"] for r in steps] == [1, 2, 3] and steps[0]["tokens"] == 2 * 4 * 2 * 64
