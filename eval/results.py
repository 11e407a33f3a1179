"""The results JSON `actsparse eval` writes, one file per model, and its reader.

Top-level keys (schema `actsparse-eval-results/1`; values are null when a metric was not run):
- `schema`, `name`, `created_utc`, `wall_time_s` {total, load, sparsity, perplexity, quality}
- `model`: {path, name, model_type, architecture, hidden_act, hidden_act_param, num_layers,
  intermediate_size, num_parameters, dtype, device}
- `config`: the eval config as a mapping (with `source`, the YAML file or checkpoint)
- `provenance`: {actsparse_commit, torch, transformers, lm_eval, python, host}
- `data`: {name, documents, seq_len, batch_size, num_batches, tokens, bos_first, skip_tokens}
- `sparsity`: {zero_fraction: {sparsity, per_layer, ...}, cett: {cett, thresholds, sparsity, per_layer},
  ppl_p: {p, cett, thresholds, ppl_ratio, sparsity, per_layer, forward_passes}}; sparsities are fractions
- `perplexity`: {dense, cett, ppl_p}: dense and with each metric's thresholds applied
- `quality`: {tasks: {"<task>:<n>shot": {task, num_fewshot, metric, value, stderr, score, ...}},
  groups: {name: {score, tasks, complete}}, suites: {name: {average, groups, complete, source}},
  missing: [...], add_bos_token, limit, thresholds}; scores in percent for accuracies
- `throughput`: null, or the benchmark JSON given with `--kernel-bench` (with its `source` path): `bench-kernels`, or
  `bench_decode` (the leaderboard then shows the exact path's batch-1 tok/s and speed-up over dense)
"""
from __future__ import annotations

import json
import math
import os

RESULTS_SCHEMA = "actsparse-eval-results/1"
REQUIRED_KEYS = ("schema", "name", "model", "sparsity", "perplexity", "quality", "throughput", "wall_time_s")


class ResultsError(ValueError):
    """A results file is unreadable or not ours; the message names the file and the field."""


def json_safe(value):
    """Plain JSON types: tensors and numpy scalars to numbers, NaN/inf to null, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def empty_results(name: str) -> dict:
    return {"schema": RESULTS_SCHEMA, "name": name, "created_utc": None, "model": {}, "config": {},
            "provenance": {}, "data": None, "sparsity": {"zero_fraction": None, "cett": None, "ppl_p": None},
            "perplexity": {"dense": None, "cett": None, "ppl_p": None}, "quality": None, "throughput": None,
            "wall_time_s": {}}


def write_results(results: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(json_safe(results), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_results(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except OSError as err:
        raise ResultsError(f"{path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not JSON ({err})") from None
    if not isinstance(results, dict) or results.get("schema") != RESULTS_SCHEMA:
        raise ResultsError(f"{path}: schema: expected {RESULTS_SCHEMA!r}, got "
                           f"{results.get('schema') if isinstance(results, dict) else type(results).__name__!r}")
    for key in REQUIRED_KEYS:
        if key not in results:
            raise ResultsError(f"{path}: {key}: missing")
    results["file"] = path
    return results


def load_kernel_bench(path: str) -> dict:
    """The kernel benchmark JSON as is, plus where it came from (the kernels issue owns its layout)."""
    try:
        with open(path, encoding="utf-8") as f:
            bench = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsError(f"{path}: kernel benchmark JSON unreadable: {err}") from None
    return {"source": os.path.abspath(path), "bench": bench}
