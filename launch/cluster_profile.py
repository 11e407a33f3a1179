"""Cluster profile: module loads, environment, NCCL variables and container wrapper for sbatch scripts.

A profile is a small YAML file (launch/profiles/default.yaml documents every field); loading validates
it and names the file and the field in every error.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_PROFILE_PATH = Path(__file__).parent / "profiles" / "default.yaml"
ACCELERATORS = ("gpu", "cpu")


class ProfileError(ValueError):
    pass


@dataclass
class ClusterProfile:
    accelerator: str = "gpu"
    setup: str = ""
    env: dict[str, str] = field(default_factory=dict)
    container: str = ""
    srun_args: list[str] = field(default_factory=list)
    sbatch_directives: list[str] = field(default_factory=list)
    cpus_per_task: int | None = None
    signal_grace_s: int = 300


def _check_field(path: Path, name: str, value, expected: type | tuple) -> None:
    if not isinstance(value, expected):
        want = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise ProfileError(f"{path}: field {name!r} must be {want}, got {type(value).__name__} {value!r}")


def _string_list(path: Path, name: str, value) -> list[str]:
    _check_field(path, name, value, list)
    for item in value:
        _check_field(path, f"{name}[]", item, str)
    return list(value)


def load_profile(path: str | Path | None = None) -> ClusterProfile:
    """Read a profile YAML (the packaged default when `path` is None); unknown or mistyped fields raise."""
    path = Path(path) if path is not None else DEFAULT_PROFILE_PATH
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ProfileError(f"{path}: cannot read cluster profile ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from err
    _check_field(path, "<top level>", raw, dict)
    known = {f.name for f in dataclasses.fields(ClusterProfile)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ProfileError(f"{path}: unknown field(s) {unknown}; known fields: {sorted(known)}")

    profile = ClusterProfile()
    if "accelerator" in raw:
        if raw["accelerator"] not in ACCELERATORS:
            raise ProfileError(f"{path}: field 'accelerator' must be one of {ACCELERATORS}, got {raw['accelerator']!r}")
        profile.accelerator = raw["accelerator"]
    for name in ("setup", "container"):
        if raw.get(name) is not None:
            _check_field(path, name, raw[name], str)
            setattr(profile, name, raw[name])
    if raw.get("env") is not None:
        _check_field(path, "env", raw["env"], dict)
        for key, value in raw["env"].items():
            _check_field(path, f"env.{key}", value, (str, int, float))
        profile.env = {str(k): str(v) for k, v in raw["env"].items()}
    for name in ("srun_args", "sbatch_directives"):
        if raw.get(name) is not None:
            setattr(profile, name, _string_list(path, name, raw[name]))
    if raw.get("cpus_per_task") is not None:
        _check_field(path, "cpus_per_task", raw["cpus_per_task"], int)
        profile.cpus_per_task = raw["cpus_per_task"]
    if raw.get("signal_grace_s") is not None:
        _check_field(path, "signal_grace_s", raw["signal_grace_s"], int)
        profile.signal_grace_s = raw["signal_grace_s"]
    return profile
