"""`actsparse train CONFIG [--nproc-per-node N] [key=value ...]`: run a continue-pretraining recipe.

- No launcher variables and N = 1 (default): trains in this process.
- `--nproc-per-node N` (N > 1): starts N local ranks through torchrun (`python -m torch.distributed.run`),
  each running this command again; SIGTERM / SIGUSR1 sent to this process reach them as SIGTERM.
- Started by torchrun, the `deepspeed` launcher or `srun`: each rank trains (train_cli reads RANK /
  WORLD_SIZE / LOCAL_RANK / MASTER_*, or SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID); the deepspeed
  launcher's `--local_rank` argument is accepted and ignored (LOCAL_RANK says the same).

CONFIG is a YAML path or the name of a shipped config (`tiny`, `smollm2_135m_prosparse`, ...).
Exit codes: 0 done or stopped cleanly by a signal after checkpointing, 2 bad configuration
(one line on stderr naming file and field), otherwise the failing rank's code.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from .errors import ConfigError



def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="actsparse train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="recipe YAML path or shipped config name (e.g. tiny)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=20")
    parser.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=1,
                        help="local processes to start through torchrun (default 1: this process)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_intermixed_args(argv)


def spawn_local_ranks(argv_without_nproc: list[str], nproc: int) -> int:
    """Re-run this command under torchrun with `nproc` ranks; forward stop signals; return its code."""
    from .distributed_env import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}",
           "-m", "actsparse.recipes.train_cli", *argv_without_nproc]
    # PYTHONSAFEPATH: never put the current directory (maybe the repo root) first on sys.path.
    env = {**os.environ, "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    child = subprocess.Popen(cmd, env=env)

    def forward(signum, frame):
        # torchrun forwards SIGTERM to every rank; SIGUSR1 would kill torchrun itself, so map it.
        child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from .config import load_recipe

    try:
        cfg = load_recipe(args.config, args.overrides)   # validate before starting any process
    except ConfigError as err:
        print(f"actsparse train: {err}", file=sys.stderr)
        return 2
    # Under torchrun / the deepspeed launcher (RANK set) each process is already one rank. Under srun
    # with one task per GPU, leave --nproc-per-node at 1; with N > 1 (e.g. inside a one-node sbatch
    # script, where SLURM_PROCID is set too) we start the N local ranks ourselves.
    if args.nproc_per_node > 1 and "RANK" not in os.environ:
        return spawn_local_ranks([args.config, *args.overrides], args.nproc_per_node)

    from .continue_pretrain import finish_rank, train

    try:
        result = train(cfg)
    except ConfigError as err:       # e.g. non-UTF-8 text found while tokenizing
        print(f"actsparse train: {err}", file=sys.stderr)
        return 2
    if result.stopped_by_signal:
        print(f"actsparse train: stopped at step {result.final_step}; resume with the same command", file=sys.stderr)
    return finish_rank(0)   # one rank of several: leaves without the interpreter's teardown (exit_rank)


if __name__ == "__main__":
    sys.exit(main())
