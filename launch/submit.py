"""`actsparse submit CONFIG --nodes N --gpus-per-node G [...] [--dry-run] [key=value ...]`

Renders an sbatch script for a training recipe into the run directory (`<output_dir>/submit.sbatch`, a
plain script you can edit and `sbatch` by hand) and submits it with `sbatch --parsable`; `--dry-run`
prints it and submits nothing. The run directory is the recipe's `output_dir` (from the config, or an
`output_dir=...` override), made absolute so the job does not depend on where it was submitted from.

Without SLURM, the same recipe runs locally with `actsparse train CONFIG --nproc-per-node N`.

Design (the script's comments say the same where it acts):
- One srun task per node, each running torchrun with `--nproc-per-node` = GPUs per node and a static
  rendezvous (node rank = SLURM_NODEID) at the first host, port from the job id. torchrun owns local
  ranks, LOCAL_RANK / device mapping and worker teardown; SLURM sees one task per node, so a node's
  failure is one task's failure (`--kill-on-bad-exit` ends the rest) and no `--gpus-per-task` binding
  or per-task CPU pinning has to be right. Static rather than c10d rendezvous: node ranks are known
  from SLURM and node 0 hosts the store, where c10d guesses the host by matching host names (and
  retries as a client when several "nodes" share an address, as in the localhost test cluster).
- `--signal=B:USR1@grace` + `--requeue`: only the batch shell gets USR1; its trap forwards it with
  `scancel --signal=USR1 JOBID` to every process of the training step on every node. torchrun's agent
  handles TERM/INT/HUP/QUIT only, so USR1 would kill it: each node task runs `trap "" USR1` before
  exec'ing torchrun, the ignore is inherited by the trainers, which install their own handler (save a
  checkpoint at the next step boundary, exit 0). The shell then runs `scontrol requeue`, and the
  requeued job (same id, same port) resumes from `<run_dir>/checkpoints/latest`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import resources
from pathlib import Path

import yaml

from .cluster_profile import DEFAULT_PROFILE_PATH, ProfileError, load_profile
from .sbatch_render import SbatchJob, render_sbatch

SCRIPT_NAME = "submit.sbatch"
RUN_DIR_KEY = "output_dir"   # the recipe's run-directory field (recipes/config.py: RecipeConfig.output_dir)


class SubmitError(ValueError):
    pass


def resolve_config(config: str) -> Path:
    """A config path as given, or the name of a config shipped in actsparse/recipes/configs (`tiny`)."""
    path = Path(config)
    if path.is_file():
        return path.resolve()
    shipped = resources.files("actsparse.recipes") / "configs" / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if shipped.is_file():
        return Path(str(shipped))
    raise SubmitError(f"{config}: no such config file, and no shipped config of that name")


def run_dir_from(config_path: Path, overrides: list[str]) -> Path:
    """`output_dir=` from the overrides (last wins), else from the config; relative paths against cwd."""
    value = None
    for item in overrides:
        key, sep, text = item.partition("=")
        if sep and key == RUN_DIR_KEY:
            value = yaml.safe_load(text)
    if value is None:
        raw = yaml.safe_load(config_path.read_text()) or {}
        value = raw.get(RUN_DIR_KEY) if isinstance(raw, dict) else None
    if not isinstance(value, str) or not value:
        raise SubmitError(f"{config_path}: field {RUN_DIR_KEY!r}: the run directory is not set; put it in the "
                          f"config or pass {RUN_DIR_KEY}=PATH (it holds the script, logs and checkpoints)")
    return Path(value).expanduser().resolve()


def train_argv(config_path: Path, overrides: list[str], run_dir: Path) -> list[str]:
    """What torchrun starts in every trainer process; the run directory is pinned as an absolute path."""
    kept = [o for o in overrides if o.partition("=")[0] != RUN_DIR_KEY]
    return ["actsparse", "train", str(config_path), *kept, f"{RUN_DIR_KEY}={run_dir}"]


def sbatch_submit(script_path: Path) -> str:
    """Submit with `sbatch --parsable`; returns the job id."""
    done = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SubmitError(f"sbatch {script_path} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]   # "<id>" or "<id>;<cluster>"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actsparse submit", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="recipe YAML path, or a shipped config name (tiny)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, as for `actsparse train`")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=1,
                   help="trainer processes per node: GPUs, or CPU processes with a profile of accelerator: cpu")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--time", help="time limit, SLURM syntax (e.g. 24:00:00)")
    p.add_argument("--qos")
    p.add_argument("--job-name", help="default: actsparse-<config name>")
    p.add_argument("--signal-grace", type=int, metavar="SECONDS",
                   help="USR1 this long before the time limit (default: the profile's signal_grace_s)")
    p.add_argument("--sbatch", action="append", default=[], metavar="FLAG",
                   help="extra #SBATCH flag, repeatable (e.g. --sbatch=--exclusive)")
    p.add_argument("--profile", default=None, help=f"cluster profile YAML (default: {DEFAULT_PROFILE_PATH})")
    p.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    p.add_argument("--parsable", action="store_true", help="print only the job id (for --dependency=afterok:ID)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1 or (args.signal_grace is not None and args.signal_grace < 1):
        print("actsparse submit: --nodes, --gpus-per-node and --signal-grace must be >= 1", file=sys.stderr)
        return 2
    try:
        profile = load_profile(args.profile)
        config_path = resolve_config(args.config)
        run_dir = run_dir_from(config_path, args.overrides)
        job = SbatchJob(
            job_name=args.job_name or f"actsparse-{config_path.stem}", nodes=args.nodes,
            gpus_per_node=args.gpus_per_node, run_dir=run_dir,
            train_argv=train_argv(config_path, args.overrides, run_dir),
            partition=args.partition, account=args.account, time=args.time, qos=args.qos,
            signal_grace_s=args.signal_grace, extra_directives=args.sbatch)
        script = render_sbatch(job, profile, str(args.profile or DEFAULT_PROFILE_PATH))
        if args.dry_run:
            print(script, end="")
            return 0
        run_dir.mkdir(parents=True, exist_ok=True)
        script_path = run_dir / SCRIPT_NAME
        script_path.write_text(script)
        job_id = sbatch_submit(script_path)
    except (SubmitError, ProfileError) as err:
        print(f"actsparse submit: {err}", file=sys.stderr)
        return 2
    if args.parsable:
        print(job_id)
    else:
        print(f"submitted job {job_id}: {script_path} (log: {run_dir}/slurm-{job_id}.out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
