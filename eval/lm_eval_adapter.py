"""Run lm-evaluation-harness tasks on an in-memory (converted, possibly thresholded) model.

We wrap the model in lm-eval's `HFLM` and run tasks by name through `lm_eval.simple_evaluate`, one call
per (task, few-shot count), so each task gets its own few-shot setting and a task whose data is missing
is named on its own. Local YAML tasks are found through `TaskManager(include_path=...)`.

BOS: LLaMA-family models (and ProSparse's) were trained with `<s>` first; lm-eval only adds it if the
tokenizer does, so scores can differ from the papers (PAPERS.md (i)). With `add_bos_token=True` (our
default) the tokenizer is made to prepend BOS, and `BosHFLM` puts exactly one BOS before every rolling
loglikelihood window (plain HFLM would feed `<s> <s> ...` and score the second `<s>`).
"""
from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field

from .task_groups import Suite, TaskGroup, TaskSpec

log = logging.getLogger(__name__)


class MissingTaskData(RuntimeError):
    """A task's dataset is neither local nor reachable; the message is one line naming task and dataset."""


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ImportError("lm-eval is not installed: pip install 'actsparse[eval]' (or pip install lm-eval)") from None


def tokenizer_with_bos(tokenizer, add_bos_token: bool):
    """A copy of `tokenizer` whose encodings start with BOS when `add_bos_token` (the caller's stays as is)."""
    if not add_bos_token:
        return tokenizer
    if tokenizer.bos_token_id is None:
        raise ValueError(f"add_bos_token=True but the tokenizer ({type(tokenizer).__name__}) has no bos_token; "
                         "set quality.add_bos_token: false for this model")
    if tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    # transformers >= 5: setting the attribute rebuilds the tokenizer's post-processor with BOS first.
    tokenizer.add_bos_token = True
    if tokenizer("a")["input_ids"][:1] != [tokenizer.bos_token_id]:
        raise ValueError(f"cannot make {type(tokenizer).__name__} prepend {tokenizer.bos_token!r}; "
                         "set quality.add_bos_token: false for this model")
    log.warning("the tokenizer does not prepend %s by itself; adding it for lm-eval because add_bos_token is "
                "true (right for LLaMA-family models; set quality.add_bos_token: false for models trained "
                "without BOS, e.g. SmolLM2)", tokenizer.bos_token)
    return tokenizer


def make_bos_hflm_class():
    from lm_eval.models.huggingface import HFLM

    class BosHFLM(HFLM):
        """HFLM whose rolling loglikelihood starts every window with exactly one, unscored BOS."""

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            # lm-eval prefixes each document's first window with `prefix_token_id` (BOS); encoding the
            # document with add_bos_token=True would put a second BOS after it and score it.
            saved = self.add_bos_token
            if saved:
                self.add_bos_token = False
            try:
                return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
            finally:
                self.add_bos_token = saved

    return BosHFLM


def wrap_model(model, tokenizer, batch_size: int | str = 1, add_bos_token: bool = True,
               max_length: int | None = None):
    """lm-eval `HFLM` around an in-memory model (no copy; thresholds applied to `model` stay in effect)."""
    _require_lm_eval()
    tokenizer = tokenizer_with_bos(tokenizer, add_bos_token)
    hflm_class = make_bos_hflm_class()
    # With a model object HFLM takes the device from the model (and ignores `device`).
    return hflm_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_bos_token,
                      max_length=max_length)


def task_key(spec: TaskSpec) -> str:
    """Results key of one task run: the same task can appear with several few-shot counts."""
    return f"{spec.task}:{spec.num_fewshot}shot"


def make_task_manager(include_paths: list[str], task_names: list[str]):
    """TaskManager over `include_paths`; lm-eval's own ~10k task index only when a name needs it."""
    from lm_eval.tasks import TaskManager

    paths = [os.path.abspath(p) for p in include_paths]
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(name in local.all_tasks for name in task_names):
            return local
    return TaskManager(include_path=paths or None)


def _missing_data_message(spec: TaskSpec, err: Exception) -> str:
    text = " ".join(str(err).split())
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    hint = ("not in the local datasets cache (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set); download it once "
            "online or point HF_DATASETS_CACHE at a cache that has it") if offline else "could not be loaded"
    return f"task {spec.task} ({spec.num_fewshot}-shot): dataset {hint}: {text[:300]}"


def _is_missing_data(err: Exception) -> bool:
    if isinstance(err, (ConnectionError, FileNotFoundError)):
        return True
    name = type(err).__name__
    return name in ("DatasetNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "HfHubHTTPError")


def run_task(lm, spec: TaskSpec, task_manager, limit: int | float | None = None, seed: int = 1234) -> dict:
    """Evaluate one task; returns {task, num_fewshot, metric, value, stderr, score, samples}."""
    from lm_eval import simple_evaluate

    try:
        out = simple_evaluate(model=lm, tasks=[spec.task], num_fewshot=spec.num_fewshot, limit=limit,
                              task_manager=task_manager, log_samples=False, bootstrap_iters=0,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
    except Exception as err:  # lm-eval surfaces dataset problems as many exception types
        if _is_missing_data(err):
            raise MissingTaskData(_missing_data_message(spec, err)) from err
        raise
    row = out["results"].get(spec.task)
    if row is None or spec.metric not in row:
        have = sorted(k for k in (row or {}) if "," in k and "stderr" not in k)
        raise KeyError(f"task {spec.task}: lm-eval reported no metric {spec.metric!r}; it reported {have}")
    value = float(row[spec.metric])
    name, _, filt = spec.metric.partition(",")
    stderr = row.get(f"{name}_stderr,{filt}")
    samples = out.get("n-samples", {}).get(spec.task, {}).get("effective")
    return {"task": spec.task, "num_fewshot": spec.num_fewshot, "metric": spec.metric, "value": value,
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            "score": value * spec.scale, "higher_is_better": spec.higher_is_better, "samples": samples}


@dataclass
class QualityResults:
    tasks: dict[str, dict] = field(default_factory=dict)
    groups: dict[str, dict] = field(default_factory=dict)
    suites: dict[str, dict] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(tasks: dict[str, dict], groups: list[TaskGroup], suites: list[Suite]) -> tuple[dict, dict]:
    """Group score = mean of its tasks' scores; suite average = mean of its group scores (complete only)."""
    group_rows = {}
    for group in groups:
        keys = [task_key(s) for s in group.tasks]
        scores = [tasks[k]["score"] for k in keys if k in tasks]
        group_rows[group.name] = {"score": _mean(scores) if len(scores) == len(keys) else None,
                                  "tasks": keys, "complete": len(scores) == len(keys)}
    suite_rows = {}
    for suite in suites:
        scores = [group_rows[g]["score"] for g in suite.groups if group_rows.get(g, {}).get("score") is not None]
        complete = len(scores) == len(suite.groups)
        suite_rows[suite.name] = {"average": _mean(scores) if complete else None, "groups": list(suite.groups),
                                  "complete": complete, "source": suite.source}
    return group_rows, suite_rows


def run_task_groups(lm, groups: list[TaskGroup], suites: list[Suite], include_paths: list[str] = (),
                    limit: int | float | None = None, skip_missing: bool = False, progress=None) -> QualityResults:
    """Run every distinct (task, few-shot) of `groups` once; MissingTaskData unless `skip_missing`."""
    specs = list({task_key(s): s for g in groups for s in g.tasks}.values())
    task_manager = make_task_manager(list(include_paths), [s.task for s in specs])
    results = QualityResults()
    for spec in specs:
        if progress is not None:
            progress(f"lm-eval {task_key(spec)}")
        try:
            results.tasks[task_key(spec)] = run_task(lm, spec, task_manager, limit)
        except MissingTaskData as err:
            if not skip_missing:
                raise
            log.warning("skipping: %s", err)
            results.missing.append(str(err))
    results.groups, results.suites = summarize(results.tasks, groups, suites)
    for row in results.tasks.values():
        if not math.isfinite(row["value"]):
            log.warning("task %s: non-finite %s", row["task"], row["metric"])
    return results
