"""Task groups and suites for lm-eval, loaded from YAML (`task_groups.yaml` ships the papers' settings).

    groups = load_task_groups()                   # the shipped file
    groups = load_task_groups("mine.yaml")        # or a user's file with the same layout
    selected = groups.select(["prosparse", "leaderboard_gsm8k"])   # suite or group names
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import yaml

DEFAULT_TASK_GROUPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "task_groups.yaml")


class TaskGroupsError(ValueError):
    """A task-groups file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class TaskSpec:
    task: str              # lm-eval task (or lm-eval group) name
    num_fewshot: int
    metric: str            # key in lm-eval's results, e.g. "acc,none"
    scale: float = 100.0   # score = value * scale (accuracy -> percent)
    higher_is_better: bool = True


@dataclass(frozen=True)
class TaskGroup:
    name: str
    tasks: tuple[TaskSpec, ...]


@dataclass(frozen=True)
class Suite:
    name: str
    groups: tuple[str, ...]
    source: str = ""


@dataclass
class TaskGroups:
    groups: dict[str, TaskGroup] = field(default_factory=dict)
    suites: dict[str, Suite] = field(default_factory=dict)
    path: str = ""

    def select(self, names: list[str]) -> tuple[list[TaskGroup], list[Suite]]:
        """Groups to run for `names` (suite or group names, in order, without repeats) and the suites named."""
        groups: list[TaskGroup] = []
        suites: list[Suite] = []
        for name in names:
            if name in self.suites:
                suites.append(self.suites[name])
                wanted = self.suites[name].groups
            elif name in self.groups:
                wanted = (name,)
            else:
                raise TaskGroupsError(
                    f"{self.path}: no suite or group named {name!r}; suites: {', '.join(self.suites)}; "
                    f"groups: {', '.join(self.groups)}")
            groups.extend(self.groups[g] for g in wanted if self.groups[g] not in groups)
        return groups, suites

    def merged(self, other: "TaskGroups") -> "TaskGroups":
        """These groups and suites plus `other`'s (other wins on a name clash)."""
        return TaskGroups({**self.groups, **other.groups}, {**self.suites, **other.suites},
                          f"{self.path} + {other.path}")


def _task_spec(raw, where: str) -> TaskSpec:
    if not isinstance(raw, dict) or "task" not in raw:
        raise TaskGroupsError(f"{where}: expected a mapping with 'task', 'num_fewshot', 'metric'; got {raw!r}")
    unknown = set(raw) - {"task", "num_fewshot", "metric", "scale", "higher_is_better"}
    if unknown:
        raise TaskGroupsError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for key in ("num_fewshot", "metric"):
        if key not in raw:
            raise TaskGroupsError(f"{where}.{key}: missing")
    if not isinstance(raw["num_fewshot"], int) or raw["num_fewshot"] < 0:
        raise TaskGroupsError(f"{where}.num_fewshot: expected an integer >= 0, got {raw['num_fewshot']!r}")
    return TaskSpec(str(raw["task"]), raw["num_fewshot"], str(raw["metric"]), float(raw.get("scale", 100.0)),
                    bool(raw.get("higher_is_better", True)))


def _parse(data, path: str) -> TaskGroups:
    if not isinstance(data, dict) or "groups" not in data:
        raise TaskGroupsError(f"{path}: expected a mapping with 'groups' (and optionally 'suites')")
    unknown = set(data) - {"groups", "suites"}
    if unknown:
        raise TaskGroupsError(f"{path}: unknown top-level field(s) {', '.join(sorted(unknown))}")
    groups = {}
    for name, body in (data["groups"] or {}).items():
        where = f"{path}: groups.{name}"
        if not isinstance(body, dict) or not isinstance(body.get("tasks"), list) or not body["tasks"]:
            raise TaskGroupsError(f"{where}.tasks: expected a non-empty list of tasks")
        specs = tuple(_task_spec(t, f"{where}.tasks[{i}]") for i, t in enumerate(body["tasks"]))
        groups[str(name)] = TaskGroup(str(name), specs)
    suites = {}
    for name, body in (data.get("suites") or {}).items():
        where = f"{path}: suites.{name}"
        if not isinstance(body, dict) or not isinstance(body.get("groups"), list):
            raise TaskGroupsError(f"{where}.groups: expected a list of group names")
        missing = [g for g in body["groups"] if g not in groups]
        if missing:
            raise TaskGroupsError(f"{where}.groups: unknown group(s) {', '.join(map(str, missing))}")
        suites[str(name)] = Suite(str(name), tuple(map(str, body["groups"])), str(body.get("source", "")))
    return TaskGroups(groups, suites, path)


def load_task_groups(path: str | None = None) -> TaskGroups:
    """Load a task-groups YAML file (default: the shipped `task_groups.yaml`)."""
    path = path or DEFAULT_TASK_GROUPS
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise TaskGroupsError(f"{path}: cannot read task groups ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise TaskGroupsError(f"{path}: not valid YAML: {err}") from None
    return _parse(data, path)
