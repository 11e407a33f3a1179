"""One model through every configured metric -> the results mapping that `results.py` describes.

    results = evaluate(load_eval_config("eval.yaml"))

Order: load (and optionally swap the activation), calibration batches, zero-fraction sparsity, CETT
thresholds and the sparsity and perplexity under them, PPL-p% (one CETT value for all layers), dense
perplexity, then lm-eval tasks on the model as converted (optionally with the CETT or PPL-p% thresholds
applied). The sparsity metrics themselves live in zero_fraction.py, cett.py, ppl_p.py, perplexity.py.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
import subprocess
import time
from datetime import datetime, timezone

import torch

from .eval_config import EvalConfig
from .results import empty_results, load_kernel_bench

log = logging.getLogger(__name__)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model_and_tokenizer(cfg: EvalConfig):
    from transformers import AutoTokenizer

    from actsparse.modeling import load_pretrained, sparsify

    dtype = None if cfg.dtype == "auto" else cfg.dtype
    kwargs = {"trust_remote_code": True} if cfg.trust_remote_code else {}
    model = load_pretrained(cfg.model, dtype=dtype, **kwargs)
    model = model.to(_device(cfg.device)).eval()
    if cfg.activation.override is not None:
        sparsify(model, cfg.activation.override, cfg.activation.threshold)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.model, trust_remote_code=cfg.trust_remote_code)
    return model, tokenizer


def model_info(model, cfg: EvalConfig) -> dict:
    config = getattr(model, "config", None)
    get = (lambda key: getattr(config, key, None)) if config is not None else (lambda key: None)
    param = next(model.parameters())
    return {"path": cfg.model, "name": cfg.display_name, "model_type": get("model_type"),
            "architecture": type(model).__name__, "hidden_act": get("hidden_act"),
            "hidden_act_param": get("hidden_act_param"), "num_layers": get("num_hidden_layers"),
            "intermediate_size": get("intermediate_size"),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(param.dtype).replace("torch.", ""), "device": str(param.device)}


def _git_commit() -> str | None:
    """The repo's HEAD; ACTSPARSE_COMMIT where the code runs from a copy without .git (a GPU machine)."""
    if os.environ.get("ACTSPARSE_COMMIT"):
        return os.environ["ACTSPARSE_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance() -> dict:
    import transformers

    try:
        import lm_eval
        lm_eval_version = getattr(lm_eval, "__version__", None)
    except ImportError:
        lm_eval_version = None
    return {"actsparse_commit": _git_commit(), "torch": torch.__version__, "transformers": transformers.__version__,
            "lm_eval": lm_eval_version, "python": platform.python_version(), "host": platform.node(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _normalized(metric: dict) -> dict:
    """The other metrics' dicts with `sparsity` and `per_layer` under fixed names."""
    out = dict(metric)
    if "sparsity" not in out and "overall" in out:
        out["sparsity"] = out["overall"]
    for key in ("sparsity_per_layer", "per_layer_sparsity"):
        if "per_layer" not in out and key in out:
            out["per_layer"] = out.pop(key)
    return out


def _thresholded_run(model, batches, thresholds) -> tuple[float, list[float], float]:
    """(overall sparsity, per-layer sparsity, perplexity) with `thresholds` applied, in one pass."""
    from .perplexity import perplexity
    from .thresholding import apply_thresholds

    with apply_thresholds(model, thresholds) as thresholded:
        ppl = perplexity(model, batches)
        return thresholded.overall_sparsity(), thresholded.per_layer_sparsity(), ppl


def sparsity_and_perplexity(model, batches, cfg: EvalConfig, results: dict, step) -> None:
    from .cett import cett_thresholds
    from .perplexity import perplexity
    from .ppl_p import ppl_p_sparsity
    from .zero_fraction import zero_fraction_sparsity

    if "zero_fraction" in cfg.metrics:
        with step("zero-fraction sparsity"):
            results["sparsity"]["zero_fraction"] = _normalized(zero_fraction_sparsity(model, batches))
    if "cett" in cfg.metrics:
        with step(f"CETT-{cfg.cett} thresholds"):
            thresholds = cett_thresholds(model, batches, cett=cfg.cett)
            sparsity, per_layer, ppl = _thresholded_run(model, batches, thresholds)
            results["sparsity"]["cett"] = {"cett": cfg.cett, "thresholds": thresholds, "sparsity": sparsity,
                                           "per_layer": per_layer}
            results["perplexity"]["cett"] = ppl
    if "ppl_p" in cfg.metrics:
        with step(f"CETT-PPL-{100 * cfg.ppl_p:g}% search"):
            found = _normalized(ppl_p_sparsity(model, batches, p=cfg.ppl_p))
            found["p"] = cfg.ppl_p
            if "per_layer" not in found:
                found["sparsity"], found["per_layer"], _ = _thresholded_run(model, batches, found["thresholds"])
            results["sparsity"]["ppl_p"] = found
    if "perplexity" in cfg.metrics:
        with step("dense perplexity"):
            results["perplexity"]["dense"] = perplexity(model, batches)
        ppl_p = results["sparsity"]["ppl_p"]
        if ppl_p is not None and results["perplexity"]["ppl_p"] is None:
            with step("perplexity at PPL-p% thresholds"):
                results["perplexity"]["ppl_p"] = _thresholded_run(model, batches, ppl_p["thresholds"])[2]


def quality(model, tokenizer, cfg: EvalConfig, results: dict, step) -> None:
    from .lm_eval_adapter import run_task_groups, wrap_model
    from .task_groups import load_task_groups
    from .thresholding import apply_thresholds

    groups = load_task_groups()
    if cfg.quality.task_groups_file:
        groups = groups.merged(load_task_groups(cfg.quality.task_groups_file))
    selected, suites = groups.select(cfg.quality.task_groups)
    limit = cfg.quality.limit
    limit = int(limit) if limit is not None and limit >= 1 else limit
    lm = wrap_model(model, tokenizer, batch_size=cfg.quality.batch_size, add_bos_token=cfg.quality.add_bos_token,
                    max_length=cfg.quality.max_length)
    which = cfg.quality.thresholds
    context = contextlib.nullcontext()
    if which != "none":
        context = apply_thresholds(model, results["sparsity"][which]["thresholds"])
    with context:
        out = run_task_groups(lm, selected, suites, include_paths=cfg.quality.include_path, limit=limit,
                              skip_missing=cfg.quality.skip_missing, progress=lambda text: step.note(text))
    results["quality"] = {"tasks": out.tasks, "groups": out.groups, "suites": out.suites, "missing": out.missing,
                          "add_bos_token": cfg.quality.add_bos_token, "limit": cfg.quality.limit,
                          "thresholds": which}


class Steps:
    """Timed, printed stages (rich when installed); `wall` collects seconds per stage family."""

    def __init__(self, show: bool = True):
        self.show = show
        self.wall: dict[str, float] = {}
        try:
            from rich.console import Console
            self.console = Console(stderr=True, log_path=False)
        except ImportError:
            self.console = None

    def note(self, text: str) -> None:
        if self.show:
            self.console.log(text, markup=False) if self.console else print(text, flush=True)

    @contextlib.contextmanager
    def __call__(self, text: str, family: str | None = None):
        self.note(f"[eval] {text} ...")
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.note(f"[eval] {text}: {seconds:.1f} s")
        key = family or ("perplexity" if "perplexity" in text else "sparsity")
        self.wall[key] = self.wall.get(key, 0.0) + seconds


def evaluate(cfg: EvalConfig, show_progress: bool = True) -> dict:
    from .eval_data import calibration_batches

    start = time.perf_counter()
    step = Steps(show_progress)
    results = empty_results(cfg.display_name)
    results["created_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["config"] = cfg.to_dict()
    results["provenance"] = provenance()
    with step(f"load {cfg.model}", family="load"):
        model, tokenizer = load_model_and_tokenizer(cfg)
    results["model"] = model_info(model, cfg)
    if any(m in cfg.metrics for m in ("zero_fraction", "cett", "ppl_p", "perplexity")):
        with step("calibration data", family="load"):
            batches, results["data"] = calibration_batches(cfg.data, tokenizer, add_bos=cfg.quality.add_bos_token)
        sparsity_and_perplexity(model, batches, cfg, results, step)
    if "quality" in cfg.metrics:
        with step("lm-eval tasks", family="quality"):
            quality(model, tokenizer, cfg, results, step)
    if cfg.kernel_bench:
        results["throughput"] = load_kernel_bench(cfg.kernel_bench)
    results["wall_time_s"] = {"total": time.perf_counter() - start, **step.wall}
    return results
