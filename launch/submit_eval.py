"""`actsparse submit-eval CHECKPOINT... --tasks GROUPS [--dependency afterok:JOBID] [...] [key=value ...]`

Renders a job-array sbatch script (one array index per checkpoint, each running `actsparse eval
CHECKPOINT --name NAME --out OUT_DIR/NAME.json quality.task_groups=[GROUPS]`) into OUT_DIR and submits
it with `sbatch --parsable`; `--dry-run` prints it. With `--dependency afterok:<train job>` the array
waits for training to finish successfully. key=value pairs are passed to every `actsparse eval`.
"""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from .cluster_profile import DEFAULT_PROFILE_PATH, ProfileError, load_profile
from .sbatch_render import directive_block, env_block, fill, resource_directives, setup_block

TEMPLATE_PATH = Path(__file__).parent / "eval_template.sbatch"
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
DEPENDENCY = re.compile(r"^(after|afterok|afterany|afternotok|aftercorr|singleton)(:\d+(_\d+)?(\+\d+)?)*$")


class SubmitEvalError(ValueError):
    pass


def result_name(checkpoint: Path) -> str:
    """A results-file name from a checkpoint path: `runs/prosparse/export` -> `prosparse-export`."""
    parts = [p for p in checkpoint.parts[-2:] if p not in ("/", "")]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)) or "model"


def unique_names(checkpoints: list[Path]) -> list[str]:
    names = [result_name(c) for c in checkpoints]
    if len(set(names)) != len(names):   # same last two parts: number them rather than overwrite results
        names = [f"{n}-{i}" for i, n in enumerate(names)]
    return names


def checkpoint_arg(text: str) -> str:
    """Local paths become absolute (the job may start elsewhere); anything else (a Hub id) stays."""
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def parse_tasks(text: str) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()]
    if not groups or any(not re.fullmatch(r"[A-Za-z0-9_.-]+", g) for g in groups):
        raise SubmitEvalError(f"--tasks {text!r}: expected comma-separated task group or suite names")
    return groups


def render_eval_sbatch(args: argparse.Namespace, profile, profile_path: str) -> str:
    checkpoints = [checkpoint_arg(c) for c in args.checkpoints]
    names = unique_names([Path(c) for c in checkpoints])
    groups = parse_tasks(args.tasks)
    if args.dependency and not DEPENDENCY.match(args.dependency):
        raise SubmitEvalError(f"--dependency {args.dependency!r}: expected e.g. afterok:12345")
    out_dir = Path(args.out_dir).expanduser().resolve()
    overrides = [f"quality.task_groups=[{','.join(groups)}]", *args.overrides]
    array = f"0-{len(checkpoints) - 1}" + (f"%{args.max_parallel}" if args.max_parallel else "")
    values = {
        "rendered_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "job_name": args.job_name, "array_spec": array, "out_dir": str(out_dir), "out_dir_shell": shlex.quote(str(out_dir)),
        "task_groups": ",".join(groups),
        "resource_directives": directive_block(resource_directives(
            profile, args.gpus, partition=args.partition, account=args.account, time=args.time, qos=args.qos)),
        "dependency_directive": directive_block([f"--dependency={args.dependency}"] if args.dependency else []),
        "extra_directives": directive_block(profile.sbatch_directives + args.sbatch),
        "profile_path": profile_path, "setup": setup_block(profile), "env_exports": env_block(profile),
        "checkpoints": "\n".join(f"    {shlex.quote(c)}" for c in checkpoints),
        "names": "\n".join(f"    {shlex.quote(n)}" for n in names),
        "srun_args": "".join(f"{shlex.quote(a)} " for a in profile.srun_args),
        "container": f"{profile.container.strip()} " if profile.container.strip() else "",
        "eval_overrides": " ".join(shlex.quote(o) for o in overrides),
    }
    return fill(TEMPLATE_PATH.read_text(), values)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actsparse submit-eval", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="model folders (or Hub ids) to evaluate")
    p.add_argument("--tasks", required=True, help="comma-separated task groups or suites (eval/task_groups.yaml)")
    p.add_argument("--dependency", help="SLURM dependency, e.g. afterok:12345 (the training job)")
    p.add_argument("--out-dir", default="results", help="results JSONs, the script and logs (default: results)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per array task (CPU cores with accelerator: cpu)")
    p.add_argument("--max-parallel", type=int, help="at most this many array tasks at once (%%N)")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--time")
    p.add_argument("--qos")
    p.add_argument("--job-name", default="actsparse-eval")
    p.add_argument("--sbatch", action="append", default=[], metavar="FLAG", help="extra #SBATCH flag, repeatable")
    p.add_argument("--profile", help=f"cluster profile YAML (default: {DEFAULT_PROFILE_PATH})")
    p.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    p.add_argument("--parsable", action="store_true", help="print only the job id")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Dotted key=value tokens are eval overrides; everything else is checkpoints and options.
    overrides = [a for a in argv if OVERRIDE.match(a)]
    args = build_parser().parse_args([a for a in argv if not OVERRIDE.match(a)])
    args.overrides = overrides
    try:
        profile = load_profile(args.profile)
        script = render_eval_sbatch(args, profile, str(args.profile or DEFAULT_PROFILE_PATH))
        if args.dry_run:
            print(script, end="")
            return 0
        out_dir = Path(args.out_dir).expanduser().resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        script_path = out_dir / f"{args.job_name}.sbatch"
        script_path.write_text(script)
        done = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SubmitEvalError(f"sbatch {script_path} failed ({done.returncode}): {done.stderr.strip()}")
    except (SubmitEvalError, ProfileError) as err:
        print(f"actsparse submit-eval: {err}", file=sys.stderr)
        return 2
    job_id = done.stdout.strip().split(";")[0]
    print(job_id if args.parsable else f"submitted eval array {job_id}: {script_path} ({len(args.checkpoints)} tasks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
