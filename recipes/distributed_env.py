"""Who am I in the job: rank / world size / local rank / rendezvous, from whichever launcher started us.

torchrun and the `deepspeed` launcher set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
`srun` without torchrun sets only SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID: we map them, take
MASTER_ADDR from the environment (the sbatch script exports it) or the node srun was launched from, and
derive MASTER_PORT from the job id (torchtitan's habit) so concurrent jobs on a node do not collide.
Started by none of them, we are a single process on a free local port.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from actsparse.launch.slurm_env import master_port


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str          # torchrun | slurm | single


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_dist_env(environ=None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        job_id = int(env.get("SLURM_JOB_ID", "0") or 0)
        addr = env.get("MASTER_ADDR") or env.get("SLURM_LAUNCH_NODE_IPADDR") or "127.0.0.1"
        port = int(env.get("MASTER_PORT") or master_port(job_id))   # the sbatch script's rule (launch/slurm_env.py)
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                       addr, port, "slurm")
    return DistEnv(0, 1, 0, "127.0.0.1", free_port(), "single")


def export_torch_env(dist_env: DistEnv) -> None:
    """Write the torch.distributed variables so `init_process_group(init_method="env://")` finds them."""
    os.environ.update({
        "RANK": str(dist_env.rank), "WORLD_SIZE": str(dist_env.world_size),
        "LOCAL_RANK": str(dist_env.local_rank), "MASTER_ADDR": dist_env.master_addr,
        "MASTER_PORT": str(dist_env.master_port),
    })
