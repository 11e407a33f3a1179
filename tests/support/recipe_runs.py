"""Helpers for the recipe tests: run `actsparse train` as a subprocess, read metrics.jsonl."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TRAIN = [sys.executable, "-m", "actsparse.launch.cli", "train"]


def train_env() -> dict:
    # DS_ACCELERATOR=cpu: no GPU probing. TORCH_EXTENSIONS_DIR is left as set (default: the persistent
    # ~/.cache/torch_extensions/py<ver>_cpu), so DeepSpeed's shm comm op compiles once (~35 s), not per test.
    return {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": "1"}


def start_train(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(TRAIN + args, cwd=cwd, env=train_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_train(args: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(TRAIN + args, cwd=cwd, env=train_env(), capture_output=True, text=True, timeout=timeout)


def run_on_two_ranks(script: Path, args: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    """`script args` on 2 local ranks through torchrun (gloo on CPU), in train_env()."""
    from actsparse.recipes.distributed_env import free_port
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           str(script), *args]
    return subprocess.run(cmd, cwd=cwd, env=train_env(), capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training step records, held-out records) from run_dir/metrics.jsonl."""
    lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in lines if "lm_loss" in r], [r for r in lines if "heldout_loss" in r]


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def latest(run_dir: Path) -> str | None:
    path = Path(run_dir) / "checkpoints" / "latest"
    return path.read_text().strip() if path.exists() else None
