"""Rendezvous address and port for a SLURM allocation, printed as shell `export` lines.

The batch script runs `eval "$(PYTHONSAFEPATH=1 python -m actsparse.launch.slurm_env)"` once on the
first node. MASTER_ADDR is the first host of `scontrol show hostnames $SLURM_JOB_NODELIST`; when that
name does not resolve (several slurmds on one machine, or clusters whose node names are not DNS
names) the node's `NodeAddr` from `scontrol show node` is used instead. MASTER_PORT is derived from
the job id, so two jobs sharing a first node get different ports, and a requeued job (same id) reuses
its port deterministically.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

PORT_BASE = 10000
PORT_SPAN = 20000  # ports 10000..29999: below Linux's ephemeral range (32768+), so no clash with client sockets


def master_port(job_id: int) -> int:
    """A port from the job id (torchtitan's habit), stable across requeues of the same job."""
    return PORT_BASE + job_id % PORT_SPAN


def _scontrol(*args: str) -> str:
    done = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`scontrol {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def first_host(nodelist: str) -> str:
    """First host name of a compressed SLURM node list (`n[1-4]` -> `n1`)."""
    hosts = _scontrol("show", "hostnames", nodelist).split()
    if not hosts:
        raise RuntimeError(f"`scontrol show hostnames {nodelist}` returned no hosts")
    return hosts[0]


def node_addr_field(scontrol_node_text: str) -> str | None:
    """The NodeAddr value in `scontrol show node` output, or None."""
    for token in scontrol_node_text.split():
        if token.startswith("NodeAddr="):
            return token.split("=", 1)[1] or None
    return None


def resolvable(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except socket.gaierror:
        return False


def node_address(host: str) -> str:
    """An address other nodes can reach `host` at: the name if it resolves, else SLURM's NodeAddr."""
    if resolvable(host):
        return host
    addr = node_addr_field(_scontrol("show", "node", host))
    if not addr:
        raise RuntimeError(f"node {host!r} does not resolve and `scontrol show node` has no NodeAddr")
    return addr


def rendezvous_exports(environ: dict[str, str]) -> dict[str, str]:
    for key in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST"):
        if key not in environ:
            raise RuntimeError(f"{key} is not set: run inside a SLURM job (sbatch/salloc)")
    return {
        "MASTER_ADDR": node_address(first_host(environ["SLURM_JOB_NODELIST"])),
        "MASTER_PORT": str(master_port(int(environ["SLURM_JOB_ID"]))),
    }


def main(argv: list[str] | None = None) -> int:
    for key, value in rendezvous_exports(dict(os.environ)).items():
        print(f"export {key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
