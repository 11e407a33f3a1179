"""`actsparse submit` / `submit-eval` on a real SLURM (the `slurm_cluster` fixture: nodes n1, n2, each in
its own network namespace where the machine allows it, else both on 127.0.0.1).

- one node, 2 trainer processes: the `tiny` recipe trains and writes its final checkpoint;
- two nodes, 1 process each (the rendezvous crosses the two slurmd "hosts" over gloo), USR1 sent to the
  batch script mid-run: the job checkpoints, requeues itself, and the resumed run's steps are 1..N with
  no gap and no repeat; every node task records the namespace, addresses and MASTER_ADDR it saw;
- an eval array waits for its afterok dependency and runs one `actsparse eval` per checkpoint.
"""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from actsparse.recipes.config import resolve_config_path

pytestmark = pytest.mark.slow

TINY = yaml.safe_load(resolve_config_path("tiny").read_text())


# The profile's `container` prefix runs this before torchrun in every node task: one file per node and
# start of the job, with what the node's processes see, then the real command. On nodes other than the
# first, a background sampler (USR1 ignored, output detached so srun does not wait on it) appends the
# node's established TCP connections to MASTER_ADDR, `local->peer(process)`, once both kinds are up:
# the rendezvous store's (MASTER_PORT) and a gloo pair's (a trainer's, another port; slurmstepd's own
# I/O connection back to srun does not count).
NODE_RECORDER = r"""#!/bin/bash
out="$NODE_RECORD_DIR/job$SLURM_JOB_ID-restart${SLURM_RESTART_COUNT:-0}-$SLURMD_NODENAME.txt"
{ echo "node=$SLURMD_NODENAME"; echo "master_addr=${MASTER_ADDR:-}"; echo "master_port=${MASTER_PORT:-}"
  echo "netns=$(readlink /proc/self/ns/net)"
  echo "addrs=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | xargs)"
  [ -n "${MASTER_ADDR:-}" ] && echo "route_to_master=$(ip -4 route get "$MASTER_ADDR" | head -1 | xargs)"; } > "$out"
if [ -n "${MASTER_ADDR:-}" ] && [ "$SLURM_NODEID" != 0 ]; then
  ( trap "" USR1
    for _ in $(seq 240); do
      conns=$(ss -tnpH state established dst "$MASTER_ADDR" | sed 's/\[::ffff:\([0-9.]*\)\]/\1/g' \
              | awk '{split($5, proc, "\""); print $3 "->" $4 "(" proc[2] ")"}' | sort | tr '\n' ' ')
      if echo "$conns" | tr ' ' '\n' | grep -q ":$MASTER_PORT(" && echo "$conns" | tr ' ' '\n' \
          | grep -v -e ":$MASTER_PORT(" -e "(slurmstepd)" | grep -q .; then
        echo "conns_to_master=$conns" >> "$out"; break
      fi
      sleep 0.5
    done ) </dev/null >/dev/null 2>&1 &
fi
exec "$@"
"""


@pytest.fixture(scope="module")
def node_record_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("node-records")


@pytest.fixture(scope="module")
def cpu_profile(slurm_cluster, node_record_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("profile")
    recorder = folder / "record-node-task"
    recorder.write_text(NODE_RECORDER)
    recorder.chmod(0o755)
    env = {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", "NODE_RECORD_DIR": str(node_record_dir)}
    if slurm_cluster.network.ifname:   # gloo would pick the hostname's address, 127.0.0.1, in every namespace
        env["GLOO_SOCKET_IFNAME"] = slurm_cluster.network.ifname
    path = folder / "cpu.yaml"
    path.write_text(yaml.safe_dump({"accelerator": "cpu", "env": env, "container": str(recorder)}))
    return path


def node_records(record_dir: Path, job_id: str, restart: int) -> dict[str, dict[str, str]]:
    """node -> what its node task recorded at the start of `restart` of the job."""
    records = {}
    for path in sorted(record_dir.glob(f"job{job_id}-restart{restart}-*.txt")):
        fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        records[fields["node"]] = fields
    return records


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


def assert_rendezvous_crossed_hosts(cluster, records: dict[str, dict[str, str]]) -> None:
    """Both node tasks ran, each saw MASTER_ADDR = n1's address; in netns mode each sat in its own network
    namespace holding only its own address, so n2 reached n1 over the bridge, not through loopback."""
    net = cluster.network
    assert sorted(records) == ["n1", "n2"], records
    assert all(r["master_addr"] == net.node_addrs["n1"] for r in records.values()), records
    if net.mode == "localhost":
        return
    own_netns = os.readlink("/proc/self/ns/net")
    assert len({records["n1"]["netns"], records["n2"]["netns"], own_netns}) == 3, records
    for node, record in records.items():
        assert record["addrs"].split() == [net.node_addrs[node]], records
    assert f"dev {net.ifname} src {net.node_addrs['n2']}" in records["n2"]["route_to_master"], records
    # n2's own TCP connections to n1: the store at MASTER_PORT, and a trainer's gloo pair on another port.
    conns = [re.fullmatch(r"(.+)->(.+):(\d+)\((.*)\)", c).groups()
             for c in records["n2"].get("conns_to_master", "").split()]
    assert conns and all(local.startswith(net.node_addrs["n2"] + ":") and peer == net.node_addrs["n1"]
                         for local, peer, _, _ in conns), records
    assert any(port == records["n2"]["master_port"] for _, _, port, _ in conns), records
    assert any(port != records["n2"]["master_port"] and proc != "slurmstepd" for _, _, port, proc in conns), records


def test_two_nodes_preempted_requeued_resumed_without_gap_or_repeat(slurm_cluster, cpu_profile, node_record_dir,
                                                                    tmp_path):
    """Where network namespaces can be made, n1 and n2 are separate network "hosts" (own namespace and
    address each, joined by a bridge) and the gloo rendezvous crosses them; otherwise (no root, or
    `ip netns add` refused) both slurmds share 127.0.0.1 and the rendezvous runs over loopback. Which mode
    ran is printed here and in pytest's terminal summary."""
    print(f"SLURM test cluster mode {slurm_cluster.network.mode}: {slurm_cluster.network.note}")   # -s / -rA
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
    for restart in (0, 1):   # the first start and the requeued one
        seen = node_records(node_record_dir, job_id, restart)
        assert_rendezvous_crossed_hosts(slurm_cluster, seen)
        crossed = slurm_cluster.network.mode == "netns"
        for node, r in seen.items():
            line = (f"2-node job, start {restart}, {node}: {r['netns']} addrs [{r['addrs']}] MASTER_ADDR "
                    f"{r['master_addr']}:{r['master_port']}, route to it: {r['route_to_master']}"
                    + (f"; TCP to it: {r['conns_to_master'].strip()}" if crossed and "conns_to_master" in r else ""))
            print(line)
            slurm_cluster.summary.append(line)
    if slurm_cluster.network.mode == "localhost":
        slurm_cluster.summary.append("2-node job: localhost mode, both nodes' ranks shared one network namespace "
                                     "and 127.0.0.1; the rendezvous crossed no host boundary")


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
