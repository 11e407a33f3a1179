"""`actsparse eval` configuration: typed dataclasses loaded from YAML, `key=value` overrides.

    cfg = load_eval_config("eval.yaml", ["quality.limit=20", "activation.threshold=0.01"])
    cfg = config_for_checkpoint("runs/x/export", ["metrics=[zero_fraction,perplexity]"])

Errors are `EvalConfigError` with one line naming the file and the dotted field. Relative paths are
taken relative to the working directory, as on the command line.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

METRICS = ("zero_fraction", "cett", "ppl_p", "perplexity", "quality")
ACTIVATIONS = ("silu", "relu", "drelu", "relu2", "fatrelu")
DATA_SOURCES = ("stdlib", "jsonl", "txt")
QUALITY_THRESHOLDS = ("none", "cett", "ppl_p")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class EvalConfigError(ValueError):
    """One line: `<file>: <dotted.field>: <what is wrong>`."""


@dataclass
class ActivationConfig:
    """Optional activation swap before measuring, e.g. ProSparse's relu -> fatrelu(0.01) step."""

    override: str | None = None      # one of ACTIVATIONS; None keeps the checkpoint's own
    threshold: float = 0.0           # FATReLU threshold (only with override: fatrelu)


@dataclass
class DataConfig:
    """Calibration / held-out text for the sparsity metrics and perplexity."""

    source: str = "stdlib"           # stdlib (bundled Python docstrings), jsonl or txt
    path: str | None = None          # jsonl / txt file
    text_field: str = "text"         # jsonl: the field holding the text
    seq_len: int = 256               # tokens per sequence (BOS included when quality.add_bos_token)
    batch_size: int = 4              # sequences per batch
    num_batches: int = 10            # Sparsing Law: loss over the first 10 validation batches
    skip_tokens: int = 0             # start this far into the token stream (e.g. past a training split)


@dataclass
class QualityConfig:
    task_groups: list[str] = field(default_factory=lambda: ["prosparse"])   # suite or group names
    task_groups_file: str | None = None   # extra groups/suites (YAML), merged over the shipped ones
    include_path: list[str] = field(default_factory=list)   # folders of local lm-eval task YAMLs
    limit: float | None = None       # lm-eval: first N examples per task (or a fraction < 1)
    batch_size: int = 8
    add_bos_token: bool = True       # LLaMA-family models expect <s> first (PAPERS.md (i))
    thresholds: str = "none"         # run tasks with CETT or PPL-p% thresholds applied
    skip_missing: bool = False       # skip tasks whose data is not cached (listed in results) instead of failing
    max_length: int | None = None    # lm-eval context length; default from the model config


@dataclass
class EvalConfig:
    model: str                       # checkpoint folder (ours, plain HF, ProSparse format) or Hub id
    name: str | None = None          # row name in the leaderboard; default: the folder name
    tokenizer: str | None = None     # default: the model folder
    dtype: str = "auto"
    device: str = "auto"             # auto: cuda when available
    trust_remote_code: bool = False
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    cett: float = 0.2                # CETT target for the `cett` metric
    ppl_p: float = 0.01              # PPL ratio bound for the `ppl_p` metric (1%)
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    kernel_bench: str | None = None  # JSON from `actsparse bench-kernels`: fills `throughput`
    output: str | None = None        # results JSON; default results/<name>.json
    source: str = ""                 # the YAML file (or checkpoint) this came from

    @property
    def display_name(self) -> str:
        return self.name or os.path.basename(os.path.normpath(self.model))

    @property
    def output_path(self) -> str:
        return self.output or os.path.join("results", f"{self.display_name}.json")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"activation": ActivationConfig, "data": DataConfig, "quality": QualityConfig}


def _check_type(value: Any, annotation: str, where: str) -> Any:
    """Check `value` against a dataclass field's annotation string; int widens to float."""
    optional = annotation.endswith("| None")
    base = annotation.replace("| None", "").strip()
    if value is None:
        if optional:
            return None
        raise EvalConfigError(f"{where}: must not be null")
    if base == "float" and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)   # YAML 1.1 reads 5e-3 as a string
        except ValueError:
            pass
    elif base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif base == "bool" and isinstance(value, bool):
        return value
    elif base == "str" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    elif base == "list[str]" and isinstance(value, list):
        return [str(v) for v in value]
    elif base == "list[str]" and isinstance(value, str):
        return [value]
    raise EvalConfigError(f"{where}: expected {annotation}, got {value!r}")


def _build(cls, raw: Any, src: str, prefix: str):
    if not isinstance(raw, dict):
        raise EvalConfigError(f"{src}: {prefix or 'top level'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    top_level = cls is EvalConfig   # its `source` is set by the loader (the YAML path), never read from YAML
    unknown = sorted(set(raw) - set(fields) - ({"source"} if top_level else set()))
    if unknown:
        raise EvalConfigError(f"{src}: {prefix}{unknown[0]}: unknown field; known: {', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        if name in SECTIONS and cls is EvalConfig:
            values[name] = _build(SECTIONS[name], value or {}, src, f"{name}.")
        elif not (top_level and name == "source"):
            values[name] = _check_type(value, fields[name].type, f"{src}: {prefix}{name}")
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and n not in values]
    if missing:
        raise EvalConfigError(f"{src}: {prefix}{missing[0]}: missing (required)")
    return cls(**values)


def _choice(value, allowed, where: str) -> None:
    if value not in allowed:
        raise EvalConfigError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")


def validate(cfg: EvalConfig) -> EvalConfig:
    src = cfg.source or "<config>"
    for metric in cfg.metrics:
        _choice(metric, METRICS, f"{src}: metrics")
    _choice(cfg.dtype, DTYPES, f"{src}: dtype")
    if cfg.activation.override is not None:
        _choice(cfg.activation.override, ACTIVATIONS, f"{src}: activation.override")
    if cfg.activation.threshold and cfg.activation.override != "fatrelu":
        raise EvalConfigError(f"{src}: activation.threshold: only applies with activation.override: fatrelu")
    if cfg.activation.threshold < 0:
        raise EvalConfigError(f"{src}: activation.threshold: must be >= 0, got {cfg.activation.threshold}")
    _choice(cfg.data.source, DATA_SOURCES, f"{src}: data.source")
    if cfg.data.source != "stdlib" and not cfg.data.path:
        raise EvalConfigError(f"{src}: data.path: required for data.source {cfg.data.source}")
    if cfg.data.path and not os.path.isfile(cfg.data.path):
        raise EvalConfigError(f"{src}: data.path: file not found: {cfg.data.path}")
    for name in ("seq_len", "batch_size", "num_batches"):
        if getattr(cfg.data, name) < (2 if name == "seq_len" else 1):
            raise EvalConfigError(f"{src}: data.{name}: too small: {getattr(cfg.data, name)}")
    if not 0.0 < cfg.cett < 1.0:
        raise EvalConfigError(f"{src}: cett: expected a value in (0, 1), got {cfg.cett}")
    if not cfg.ppl_p > 0.0:
        raise EvalConfigError(f"{src}: ppl_p: expected a value > 0, got {cfg.ppl_p}")
    _choice(cfg.quality.thresholds, QUALITY_THRESHOLDS, f"{src}: quality.thresholds")
    if cfg.quality.thresholds != "none" and cfg.quality.thresholds not in cfg.metrics:
        raise EvalConfigError(f"{src}: quality.thresholds: {cfg.quality.thresholds} needs metric "
                              f"{cfg.quality.thresholds} in metrics")
    for name in ("task_groups_file", ):
        path = getattr(cfg.quality, name)
        if path and not os.path.isfile(path):
            raise EvalConfigError(f"{src}: quality.{name}: file not found: {path}")
    for i, path in enumerate(cfg.quality.include_path):
        if not os.path.isdir(path):
            raise EvalConfigError(f"{src}: quality.include_path[{i}]: not a folder: {path}")
    if cfg.kernel_bench and not os.path.isfile(cfg.kernel_bench):
        raise EvalConfigError(f"{src}: kernel_bench: file not found: {cfg.kernel_bench}")
    return cfg


def apply_overrides(raw: dict, overrides: list[str], src: str) -> dict:
    """`a.b=value` pairs (value parsed as YAML) set into the raw mapping."""
    raw = dict(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise EvalConfigError(f"{src}: override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise EvalConfigError(f"{src}: override {key}: value is not YAML: {err}") from None
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return raw


def load_eval_config(path: str, overrides: list[str] = ()) -> EvalConfig:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except OSError as err:
        raise EvalConfigError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise EvalConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise EvalConfigError(f"{path}: top level: expected a mapping")
    cfg = _build(EvalConfig, apply_overrides(raw, list(overrides), path), path, "")
    cfg.source = path
    return validate(cfg)


def config_for_checkpoint(model_path: str, overrides: list[str] = ()) -> EvalConfig:
    """Defaults for a checkpoint given directly on the command line."""
    src = f"{model_path} (checkpoint, default eval config)"
    cfg = _build(EvalConfig, apply_overrides({"model": model_path}, list(overrides), src), src, "")
    cfg.source = model_path
    return validate(cfg)
