"""A real SLURM on localhost for the launch tests: munged, slurmctld and one slurmd per "node".

`SlurmCluster` writes a slurm.conf into a temp dir (every state/spool/log/pid path inside it), starts
munged on a private socket (so a system munged, if any, is left alone), slurmctld, and `slurmd -N n<i>`
per node on its own port; all nodes are NodeAddr=127.0.0.1, so several "hosts" share one machine and a
torch.distributed rendezvous over gloo crosses them through loopback. It stops every daemon it started,
by PID, at the end of the session.

Debian's `slurm-wlm` and `munge` are installed on first use when missing (CI is root on Debian); the
fixture skips with the reason when not root or without apt-get.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_slurm_if_missing() -> str | None:
    """Install slurm-wlm + munge with apt when missing; returns a skip reason, or None when usable."""
    if all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS):
        return None
    if os.geteuid() != 0:
        return "SLURM tests need root to install/run slurm-wlm and munge (not root)"
    if not shutil.which("apt-get"):
        return "SLURM tests need Debian's slurm-wlm and munge (no apt-get on this machine)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}"
    return None


def ensure_munge_key(path: Path = Path("/etc/munge/munge.key")) -> None:
    """munged refuses keys readable by others; create one (1024 random bits, 0400, owner munge) if absent."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(128))
    os.chmod(path, 0o400)
    try:
        shutil.chown(path, "munge", "munge")
    except (LookupError, PermissionError):
        pass  # no munge user: munged started by root with --force reads it as root


@dataclass
class SlurmCluster:
    """Daemons of a throwaway cluster. `env` holds SLURM_CONF for clients (sbatch, squeue, scontrol)."""

    root: Path
    node_count: int = 2
    cpus_per_node: int = 2
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def conf_path(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf_path))

    @property
    def node_names(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.node_count)]

    def write_conf(self) -> None:
        r = self.root
        for sub in ("state", "spool", "log", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        node_lines = "\n".join(
            f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={_free_port()} "
            f"CPUs={self.cpus_per_node} RealMemory=2000 State=UNKNOWN"
            for n in self.node_names
        )
        self.conf_path.write_text(f"""\
ClusterName=actsparse-test
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long before it may start again (default 120 s).
AuthInfo=socket={r}/munge/munge.socket,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# Short timers: tests wait on job transitions, and a finished job should stay visible to scontrol.
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=2
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.%n.log
{node_lines}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.root / "log" / f"{name}.out", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.pids[name] = proc.pid
        time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at start ({proc.returncode}): {(self.root / 'log' / f'{name}.out').read_text()}")

    def start(self) -> "SlurmCluster":
        ensure_munge_key()
        self.write_conf()
        m = self.root / "munge"
        # Foreground daemons (-F / -D / -D): each is our direct child, so its PID is the one we stop.
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={m}/munge.socket", f"--pid-file={m}/munged.pid",
                               f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"])
        self._wait_for(lambda: (m / "munge.socket").exists(), "munged socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf_path)])
        for node in self.node_names:
            self._spawn(f"slurmd-{node}", ["slurmd", "-D", "-N", node, "-f", str(self.conf_path)])
        self._wait_for(self._nodes_idle, "all nodes idle", timeout_s=60)
        return self

    def _nodes_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=self.env).stdout
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return sorted(states) == self.node_names and all(s == "idle" for s in states.values())

    def _wait_for(self, ready, what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.3)
        raise TimeoutError(f"SLURM test cluster: {what} not reached in {timeout_s:.0f}s; logs in {self.root / 'log'}")

    def stop(self) -> None:
        """SIGTERM each daemon we started (by PID, reverse start order), SIGKILL what is left after 10 s."""
        for name, pid in reversed(list(self.pids.items())):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for name, pid in reversed(list(self.pids.items())):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        self.pids.clear()

    # --- client helpers used by the tests ---------------------------------------------------------

    def scontrol(self, *args: str) -> str:
        done = subprocess.run(["scontrol", *args], capture_output=True, text=True, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def job_field(self, job_id: str, key: str) -> str:
        """One `Key=value` field of `scontrol show job` (e.g. JobState, Restarts, ExitCode)."""
        for token in self.scontrol("show", "job", "-o", job_id).split():
            if token.startswith(key + "="):
                return token.split("=", 1)[1]
        raise KeyError(key)

    def wait_job_state(self, job_id: str, states: set[str], timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            state = self.job_field(job_id, "JobState")
            if state in states:
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {state} after {timeout_s:.0f}s (wanted {sorted(states)}); "
                           f"logs in {self.root / 'log'}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running 2-node SLURM cluster (n1, n2 on 127.0.0.1); skipped with a reason where it cannot run."""
    reason = install_slurm_if_missing()
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("SLURM tests run slurmd as root (SlurmdUser=root); not root here")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
