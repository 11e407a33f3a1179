"""Fill launch/sbatch_template.sbatch: `{{name}}` placeholders, every one required, nothing else touched.

The template is bash, full of `$VAR` and `${VAR:-x}`, so `string.Template`'s `$` syntax would need
every shell variable escaped; double braces never occur in the script itself.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .cluster_profile import ClusterProfile

TEMPLATE_PATH = Path(__file__).parent / "sbatch_template.sbatch"
PLACEHOLDER = re.compile(r"{{(\w+)}}")


@dataclass
class SbatchJob:
    """What one training job asks SLURM for and runs; `train_argv` is what torchrun starts per process."""

    job_name: str
    nodes: int
    gpus_per_node: int              # trainer processes per node (GPUs on accelerator: gpu)
    run_dir: Path
    train_argv: list[str]
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    qos: str | None = None
    signal_grace_s: int | None = None   # None: the profile's
    extra_directives: list[str] = field(default_factory=list)


def fill(template: str, values: dict[str, str]) -> str:
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"sbatch template placeholders without a value: {missing}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def resource_directives(profile: ClusterProfile, gpus_per_node: int, **queue_flags: str | None) -> list[str]:
    """GPU/CPU request from the profile's accelerator, then --partition/--account/--time/--qos when set."""
    lines = []
    if profile.accelerator == "gpu":
        lines.append(f"--gpus-per-node={gpus_per_node}")
    cpus = profile.cpus_per_task or (gpus_per_node if profile.accelerator == "cpu" else None)
    if cpus:
        lines.append(f"--cpus-per-task={cpus}")
    lines += [f"--{flag}={value}" for flag, value in queue_flags.items() if value]
    return lines


def directive_block(flags: list[str]) -> str:
    return "\n".join(f"#SBATCH {flag}" for flag in flags)


def setup_block(profile: ClusterProfile) -> str:
    return profile.setup.rstrip("\n") if profile.setup.strip() else "# (no setup lines)"


def env_block(profile: ClusterProfile) -> str:
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in profile.env.items())


def render_sbatch(job: SbatchJob, profile: ClusterProfile, profile_path: str,
                  template: str | None = None) -> str:
    """The batch script text for `job` on the cluster described by `profile`."""
    template = TEMPLATE_PATH.read_text() if template is None else template
    grace_s = job.signal_grace_s if job.signal_grace_s is not None else profile.signal_grace_s
    values = {
        "rendered_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "job_name": job.job_name,
        "nodes": str(job.nodes),
        "nproc_per_node": str(job.gpus_per_node),
        "run_dir": str(job.run_dir),
        "signal_grace_s": str(grace_s),
        "resource_directives": directive_block(resource_directives(
            profile, job.gpus_per_node, partition=job.partition, account=job.account, time=job.time, qos=job.qos)),
        "extra_directives": directive_block(profile.sbatch_directives + job.extra_directives),
        "profile_path": profile_path,
        "setup": setup_block(profile),
        "env_exports": env_block(profile),
        "srun_args": "".join(f"{shlex.quote(a)} " for a in profile.srun_args),
        "container": f"{profile.container.strip()} " if profile.container.strip() else "",
        "train_command": " ".join(shlex.quote(a) for a in job.train_argv),
    }
    return fill(template, values)
