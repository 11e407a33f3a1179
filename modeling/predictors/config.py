"""`actsparse predictors` configuration: typed dataclasses loaded from YAML, `key=value` overrides.

    model: runs/prosparse-7b/export          # HF folder; predictors go to <model>/predictors
    collect: {data: calib.jsonl, max_tokens: 400000, input_location: pre_norm}
    train: {rank: 384}
    eval: {data_dir: runs/heldout_acts, ppl_data: heldout.jsonl, rule: threshold, threshold: 0.5}

Every error names the file and the dotted field (`predictors.yaml: train.rank: expected int, got 'big'`).
Overrides use the same dotted names: `train.rank=256 eval.rule=topk eval.topk_percent=25`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .collect import STORE_DTYPES
from .predictor import ACTIVE_RULES, INPUT_LOCATIONS, PREDICTORS_DIRNAME
from .train import TrainSettings


class ConfigError(ValueError):
    pass


@dataclass
class CollectSection:
    data: str | None = None             # .jsonl (field `text_field`), .txt, or .pt (LongTensor [N, T] of ids)
    tokenizer: str | None = None        # default: the model folder
    text_field: str = "text"
    seq_len: int = 512
    batch_size: int = 8
    max_tokens: int = 400_000           # ProSparse used ~400k pairs per layer
    flush_tokens: int = 65_536
    input_location: str = "pre_norm"
    clip_percent: float | None = None   # also store "clip" labels (top clip_percent% of |x1|), e.g. 15
    store_dtype: str = "float16"
    out_dir: str | None = None          # default: <model>/predictor_data


@dataclass
class EvalSection:
    data_dir: str | None = None         # a held-out collection (not the one trained on)
    rule: str = "threshold"
    threshold: float = 0.5
    topk_percent: float = 20.0
    ppl_data: str | None = None         # held-out text for perplexity (same formats as collect.data)
    ppl_seq_len: int = 512
    ppl_batch_size: int = 4
    ppl_max_tokens: int = 100_000
    reference_d_model: int = 4096       # the budget line is also printed at this shape (LLaMA-2-7B)
    reference_d_ff: int = 11008
    budget_fraction: float = 0.05
    sweep_thresholds: list[float] | None = None   # also report recall / predicted sparsity at these thresholds
    out_json: str | None = None         # default: <predictors_dir>/eval.json


@dataclass
class PredictorsConfig:
    model: str | None = None
    activation: str | None = None       # convert on load; default: the checkpoint's hidden_act
    activation_threshold: float = 0.0
    dtype: str = "float32"
    device: str = "cpu"
    predictors_dir: str | None = None   # default: <model>/predictors
    collect: CollectSection = field(default_factory=CollectSection)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSection = field(default_factory=EvalSection)

    def __post_init__(self):
        # one place for the device: the top-level field; train.device only mirrors it
        if self.train.device not in ("cpu", self.device):
            raise ConfigError(f"train.device: {self.train.device!r}; set the top-level `device` instead")
        self.train.device = self.device

    def require_model(self) -> Path:
        if not self.model:
            raise ConfigError("model: not set (an HF checkpoint folder); pass model=PATH")
        return Path(self.model)

    def collect_dir(self) -> Path:
        return Path(self.collect.out_dir) if self.collect.out_dir else self.require_model() / "predictor_data"

    def predictor_dir(self) -> Path:
        return Path(self.predictors_dir) if self.predictors_dir else self.require_model() / PREDICTORS_DIRNAME


CHOICES = {"collect.input_location": INPUT_LOCATIONS, "collect.store_dtype": tuple(STORE_DTYPES),
           "eval.rule": ACTIVE_RULES, "train.label": ("active", "clip"),
           "dtype": ("float32", "float16", "bfloat16")}


def _check_value(value, hint, where: str):
    """`value` converted to `hint` (int -> float allowed), or a ConfigError naming `where`."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(hint, value, where)
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where}: may not be null")
    for option in options:
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            return [_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):      # YAML 1.1 reads `1e-3` as a string
            try:
                return float(value)
            except ValueError:
                pass
        if option is not type(None) and isinstance(value, option) and not (option is int and isinstance(value, bool)):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{where}: expected {names}, got {value!r}")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{prefix or 'config'}: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        where = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _check_value(value, hints[name], where)
        if where in CHOICES and kwargs[name] not in CHOICES[where]:
            raise ConfigError(f"{where}: {kwargs[name]!r} is not one of {', '.join(CHOICES[where])}")
    return cls(**kwargs)


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key=value (e.g. train.rank=256)")
    key, raw = override.split("=", 1)
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(raw) if raw != "" else None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> PredictorsConfig:
    """Config from YAML (optional) with dotted `key=value` overrides applied on top."""
    data, source = {}, "<overrides>"
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{source}: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level")
    for override in overrides:
        _apply_override(data, override)
    try:
        return _build(PredictorsConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
