"""A real SLURM for the launch tests: munged, slurmctld and one slurmd per "node" (n1, n2).

Two modes, chosen once per session (the terminal summary and the 2-node test say which one ran):
- netns (root, and `ip netns add` works): a Linux bridge in this namespace carries slurmctld's address;
  each node gets its own network namespace, joined to the bridge by a veth, holding only its own address
  (NodeAddr) and a loopback, and its slurmd runs inside it (`ip netns exec NS slurmd`). Everything a job
  starts on a node (batch script, srun task, torchrun, trainers) inherits that namespace, so a
  torch.distributed rendezvous between n1 and n2 crosses hosts over the bridge. The interface inside
  every namespace has the same name (`GLOO_SOCKET_IFNAME`): the machine's hostname resolves to
  127.0.0.1, and gloo would otherwise advertise loopback to the other node.
- localhost (fallback): every slurmd on 127.0.0.1, one machine, "hosts" only by name.
munge's socket is a filesystem path, so the one munged serves every namespace.

`SlurmCluster` writes a slurm.conf into a temp dir (every state/spool/log/pid path inside it), starts
munged on a private socket (so a system munged, if any, is left alone), slurmctld, and `slurmd -N n<i>`
per node. At the end of the session it cancels what is still queued, stops every daemon it started by
PID, ends what jobs left in the namespaces (by PID, `ip netns pids`), then deletes namespaces, veths
and bridge.

Debian's `slurm-wlm` and `munge` are installed on first use when missing (CI is root on Debian); the
fixture skips with the reason when not root or without apt-get. ACTSPARSE_TEST_SLURM_NETNS=0 forces
the localhost mode (to run the fallback on a machine where namespaces work).
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


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


@dataclass
class NodeNetwork:
    """Where the controller and each node's slurmd listen. The localhost form needs no set-up."""

    node_names: list[str]
    mode: str = "localhost"
    controller_addr: str = "127.0.0.1"
    node_addrs: dict[str, str] = field(default_factory=dict)
    netns: dict[str, str] = field(default_factory=dict)   # node -> namespace name (netns mode)
    ifname: str | None = None      # the interface inside every namespace: GLOO_SOCKET_IFNAME for jobs
    note: str = ""                 # why localhost was used, or what was built
    _links: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.node_addrs = self.node_addrs or {n: "127.0.0.1" for n in self.node_names}

    def command_on(self, node: str, cmd: list[str]) -> list[str]:
        """`cmd` run inside `node`'s network namespace. nsenter execs it (the PID stays the command's) and,
        unlike `ip netns exec`, leaves the mounts alone: that one remounts /sys, which hides the
        cgroup filesystem slurmd 22.05 insists on initializing."""
        return ["nsenter", f"--net=/run/netns/{self.netns[node]}", *cmd] if node in self.netns else cmd

    def build_namespaces(self) -> bool:
        """Bridge + one namespace and veth per node; False (with `note` saying why) when netns is unusable."""
        if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("nsenter")):
            self.note = "network namespaces need root, iproute2's `ip` and util-linux's `nsenter`"
            return False
        _remove_stale_networks()
        tag = str(os.getpid())
        first_ns = f"actsparse_{self.node_names[0]}_{tag}"
        probe = subprocess.run(["ip", "netns", "add", first_ns], capture_output=True, text=True)
        if probe.returncode != 0:
            self.note = f"`ip netns add` failed: {probe.stderr.strip()}"
            return False
        self.netns[self.node_names[0]] = first_ns
        try:
            self._wire(tag)
        except RuntimeError as err:   # e.g. no bridge support in this kernel: say so, undo, use localhost
            self.teardown()
            self.mode, self.controller_addr, self.ifname = "localhost", "127.0.0.1", None
            self.node_addrs = {n: "127.0.0.1" for n in self.node_names}
            self.note = f"namespace network could not be built: {err}"
            return False
        return True

    def _wire(self, tag: str) -> None:
        subnet = _unused_subnet(int(tag))
        bridge, self.ifname = f"asbr{tag}", "asp0"    # interface names: at most 15 characters
        _ip("link", "add", bridge, "type", "bridge")
        self._links.append(bridge)
        _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        self.controller_addr = f"{subnet}.1"
        for index, node in enumerate(self.node_names):
            ns = self.netns.setdefault(node, f"actsparse_{node}_{tag}")
            if index > 0:
                _ip("netns", "add", ns)
            host_end = f"as{tag}{node}"
            _ip("link", "add", host_end, "type", "veth", "peer", "name", self.ifname, "netns", ns)
            self._links.append(host_end)
            _ip("link", "set", host_end, "master", bridge, "up")
            self.node_addrs[node] = f"{subnet}.{11 + index}"
            _ip("-n", ns, "addr", "add", f"{self.node_addrs[node]}/24", "dev", self.ifname)
            _ip("-n", ns, "link", "set", self.ifname, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        self.mode = "netns"
        self.note = (f"bridge {bridge} {self.controller_addr} (slurmctld); "
                     + ", ".join(f"{n} {self.node_addrs[n]} in {self.netns[n]}" for n in self.node_names))

    def teardown(self) -> None:
        """End what is left in each namespace (by PID), delete the namespaces, veths and bridge."""
        for ns in self.netns.values():
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            for pid in map(int, out.split()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while out.split() and time.monotonic() < deadline:
                time.sleep(0.1)
                out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in reversed(self._links):   # a veth pair goes with its namespace; deleting is a no-op then
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        self.netns.clear()
        self._links.clear()


def _remove_stale_networks() -> None:
    """Namespaces and bridges named after a test session that is gone (killed before its teardown ran)."""
    def gone(pid: str) -> bool:
        return pid.isdigit() and not Path("/proc", pid).exists()

    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    for ns in (line.split()[0] for line in namespaces if line.startswith("actsparse_")):
        if gone(ns.rsplit("_", 1)[-1]) and not subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                                               text=True).stdout.split():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    links = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True).stdout
    for name in (line.split(":")[1].strip() for line in links.splitlines()):
        if name.startswith("asbr") and gone(name[4:]):
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def _unused_subnet(seed: int) -> str:
    """A 10.201.X /24 no interface here has an address in (several test sessions may run at once)."""
    taken = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for step in range(250):
        subnet = f"10.201.{(seed + step) % 250 + 1}"
        if f" {subnet}." not in taken:
            return subnet
    raise RuntimeError("no free 10.201.X.0/24 subnet for the test bridge")


@dataclass
class SlurmCluster:
    """Daemons of a throwaway cluster. `env` holds SLURM_CONF for clients (sbatch, squeue, scontrol)."""

    root: Path
    node_count: int = 2
    cpus_per_node: int = 2
    pids: dict[str, int] = field(default_factory=dict)
    network: NodeNetwork | None = None     # None: localhost (every slurmd on 127.0.0.1)
    summary: list[str] = field(default_factory=list)   # lines for pytest's terminal summary

    def __post_init__(self) -> None:
        self.network = self.network or NodeNetwork(self.node_names)

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
        net = self.network
        node_lines = "\n".join(
            f"NodeName={n} NodeHostname=localhost NodeAddr={net.node_addrs[n]} Port={_free_port()} "
            f"CPUs={self.cpus_per_node} RealMemory=2000 State=UNKNOWN"
            for n in self.node_names
        )
        self.conf_path.write_text(f"""\
ClusterName=actsparse-test
# localhost(ADDR): slurmctld accepts "localhost" as its own name; clients and slurmds dial ADDR.
SlurmctldHost=localhost({net.controller_addr})
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
        """Start a foreground daemon (stdout/stderr to log/NAME.out) and remember its PID."""
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
            self._spawn(f"slurmd-{node}", self.network.command_on(
                node, ["slurmd", "-D", "-N", node, "-f", str(self.conf_path)]))
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
        """Cancel leftover jobs, stop our daemons, then take the namespaces, veths and bridge down."""
        try:
            self._cancel_jobs()
        finally:
            try:
                self._stop_daemons()
            finally:
                self.network.teardown()

    def _cancel_jobs(self, timeout_s: float = 15) -> None:
        """A test that failed mid-job leaves it running: cancel it so its processes end with it."""
        if "slurmctld" not in self.pids:
            return
        subprocess.run(["scancel", "--user=root"], capture_output=True, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:   # squeue lists pending, running and completing jobs
            active = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=self.env)
            if active.returncode != 0 or not active.stdout.strip():
                return
            time.sleep(0.3)

    def _stop_daemons(self) -> None:
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
    """A running 2-node SLURM cluster (n1, n2 in their own network namespaces where possible, else both on
    127.0.0.1: `cluster.network.mode`); skipped with a reason where SLURM cannot run."""
    reason = install_slurm_if_missing()
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("SLURM tests run slurmd as root (SlurmdUser=root); not root here")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    STARTED_CLUSTERS.append(cluster)
    try:
        if os.environ.get(NETNS_SWITCH) == "0":
            cluster.network.note = f"{NETNS_SWITCH}=0"
        elif not cluster.network.build_namespaces():
            cluster.network.note = f"all slurmds on 127.0.0.1 ({cluster.network.note})"
        cluster.summary.append(f"mode {cluster.network.mode}: {cluster.network.note}")
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


NETNS_SWITCH = "ACTSPARSE_TEST_SLURM_NETNS"   # =0: localhost mode even where namespaces work (debugging)
STARTED_CLUSTERS: list[SlurmCluster] = []


def pytest_terminal_summary(terminalreporter):
    """Which network mode the SLURM cluster ran in, and what the tests recorded about it."""
    for cluster in STARTED_CLUSTERS:
        for line in cluster.summary:
            terminalreporter.write_line(f"SLURM test cluster {line}")
