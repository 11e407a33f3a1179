"""`actsparse submit` / `submit-eval` on a real SLURM (the `slurm_cluster` fixture: n1, n2 on localhost).

- one node, 2 trainer processes: the `tiny` recipe trains and writes its final checkpoint;
- two nodes, 1 process each (the rendezvous crosses the two slurmd "hosts" over gloo), USR1 sent to the
  batch script mid-run: the job checkpoints, requeues itself, and the resumed run's steps are 1..N with
  no gap and no repeat;
- an eval array waits for its afterok dependency and runs one `actsparse eval` per checkpoint.
"""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from actsparse.recipes.config import resolve_config_path

pytestmark = pytest.mark.slow

TINY = yaml.safe_load(resolve_config_path("tiny").read_text())


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "cpu.yaml"
    path.write_text("accelerator: cpu\nenv: {DS_ACCELERATOR: cpu, TOKENIZERS_PARALLELISM: 'false'}\n")
    return path


def run_cli(cluster, argv: list[str], cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(["actsparse", *argv, "--parsable"], capture_output=True, text=True, cwd=cwd,
                          env=env or cluster.env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def train_steps(run_dir: Path) -> list[int]:
    """Steps of the training lines of metrics.jsonl (held-out evaluation lines excluded)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if "heldout_loss" not in r]


def job_log(run_dir: Path, job_id: str) -> str:
    return (run_dir / f"slurm-{job_id}.out").read_text()


def wait_completed(cluster, job_id: str, run_dir: Path, timeout_s: float) -> None:
    state = cluster.wait_job_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, timeout_s)
    assert state == "COMPLETED", f"job {job_id} {state}:\n{job_log(run_dir, job_id)[-4000:]}"


def test_single_node_two_processes_train_and_checkpoint(slurm_cluster, cpu_profile, tmp_path):
    steps = 6
    run_dir = tmp_path / "run1"
    job_id = run_cli(slurm_cluster, ["submit", "tiny", "--nodes", "1", "--gpus-per-node", "2", "--profile",
                                     str(cpu_profile), f"output_dir={run_dir}", f"train.steps={steps}"], tmp_path)
    # Generous: on a fresh CI machine the first job also JIT-builds DeepSpeed's shm comm op (~35 s).
    wait_completed(slurm_cluster, job_id, run_dir, timeout_s=240)
    assert train_steps(run_dir) == list(range(1, steps + 1))
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == f"global_step{steps}"
    assert any((ckpt / f"global_step{steps}").iterdir())
    assert (run_dir / "submit.sbatch").exists()


def test_two_nodes_preempted_requeued_resumed_without_gap_or_repeat(slurm_cluster, cpu_profile, tmp_path):
    steps = TINY["train"]["steps"]
    run_dir = tmp_path / "run2"
    job_id = run_cli(slurm_cluster, ["submit", "tiny", "--nodes", "2", "--gpus-per-node", "1", "--profile",
                                     str(cpu_profile), f"output_dir={run_dir}"], tmp_path)
    deadline = time.monotonic() + 180
    while len(train_steps(run_dir)) < 2:     # trainers are up and their signal handlers installed
        assert time.monotonic() < deadline, f"no training steps after 180 s:\n{job_log(run_dir, job_id)[-4000:]}"
        assert slurm_cluster.job_field(job_id, "JobState") in ("PENDING", "RUNNING")
        time.sleep(0.2)
    # What SLURM does `--signal` seconds before the time limit (B: = to the batch script only).
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, env=slurm_cluster.env)

    wait_completed(slurm_cluster, job_id, run_dir, timeout_s=180)
    log = job_log(run_dir, job_id)
    assert slurm_cluster.job_field(job_id, "Restarts") == "1", log[-4000:]
    assert "requeueing job" in log and "restart 1 on n[1-2]" in log
    assert train_steps(run_dir) == list(range(1, steps + 1)), log[-4000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"global_step{steps}"
    # World size 2 (one rank per node): tokens per step = micro batch x grad accum x world x seq len.
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tokens_per_step = TINY["train"]["micro_batch_size"] * TINY["train"]["grad_accum"] * 2 * TINY["data"]["seq_len"]
    assert all(r["tokens"] == r["step"] * tokens_per_step for r in records if "tokens" in r)


def test_eval_array_waits_for_dependency_and_runs_one_eval_per_checkpoint(slurm_cluster, cpu_profile, tmp_path):
    # The array's mechanics are under test here, not `actsparse eval` (tests/eval cover it): a recorder
    # named `actsparse` first on the job's PATH writes the argv each array task was started with.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "actsparse").write_text(
        '#!/bin/bash\nprintf "%s\\n" "$@" > "$RECORD_DIR/task-$SLURM_ARRAY_TASK_ID"\n')
    (fake_bin / "actsparse").chmod(0o755)
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    env = dict(slurm_cluster.env, PATH=f"{fake_bin}:{os.environ['PATH']}", RECORD_DIR=str(record_dir))

    blocker = subprocess.run(["sbatch", "--parsable", "-o", str(tmp_path / "blocker.out"), "--wrap", "sleep 4"],
                             capture_output=True, text=True, env=slurm_cluster.env, check=True).stdout.strip()
    ckpts = [tmp_path / name / "export" for name in ("dense", "sparse")]
    for c in ckpts:
        c.mkdir(parents=True)
    done = subprocess.run([shutil.which("actsparse"), "submit-eval", *map(str, ckpts), "--tasks", "commonsense",
                           "--dependency", f"afterok:{blocker}", "--profile", str(cpu_profile), "--gpus", "1",
                           "--out-dir", str(tmp_path / "results"), "--parsable"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    array_id = done.stdout.strip()
    assert slurm_cluster.job_field(f"{array_id}_0", "Dependency").startswith(f"afterok:{blocker}") \
        or slurm_cluster.job_field(blocker, "JobState") == "COMPLETED"
    for index in range(2):
        state = slurm_cluster.wait_job_state(f"{array_id}_{index}", {"COMPLETED", "FAILED", "CANCELLED"}, 60)
        assert state == "COMPLETED"
    assert slurm_cluster.job_field(blocker, "JobState") == "COMPLETED"
    for index, ckpt in enumerate(ckpts):
        argv = (record_dir / f"task-{index}").read_text().splitlines()
        assert argv[:2] == ["eval", str(ckpt)] and "quality.task_groups=[commonsense]" in argv
