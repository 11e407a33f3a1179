"""The `data:` section of a recipe: typed dataclasses, validated on load.

    data:
      sources:
        - {path: corpora/web.jsonl, weight: 3}            # format inferred from the suffix
        - {path: corpora/code/, format: txt, weight: 1}   # a folder: every .txt/.md/.rst file inside
        - {name: stdlib_docs}                              # built in: the Python stdlib's docstrings
      seq_len: 2048
      heldout_fraction: 0.01        # or heldout_sequences: 64
      seed: 0
      cache_dir: null               # null: $ACTSPARSE_CACHE/data, else ~/.cache/actsparse/data
      max_tokens: null              # training-set size in tokens; null: as large as no repeats allow

Each error is a `ConfigError` with one line naming the file and the dotted field. Relative paths are
relative to the current working directory.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

BUILTIN_SOURCES = ("stdlib_docs",)
FORMATS = ("jsonl", "parquet", "txt", "tokens")
# `tokens` is a pre-tokenized corpus from `actsparse prepare-data` (`*.tokens.npz`, token_files.py).
SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                  ".txt": "txt", ".md": "txt", ".rst": "txt", ".text": "txt"}


def split_where(where: str) -> tuple[str, str]:
    """`"x.yaml:data"` -> ("x.yaml", "data"); a bare file name means the `data` section."""
    file, sep, prefix = where.rpartition(":")
    if sep and prefix and "/" not in prefix:
        return file, prefix
    return where, "data"


def field_error(where: str, dotted: str, problem: str) -> ConfigError:
    file, prefix = split_where(where)
    return ConfigError(" ".join(f"{file}: {prefix}.{dotted}: {problem}".splitlines()))


def format_of(path: Path) -> str | None:
    if path.name.endswith(".tokens.npz"):
        return "tokens"
    return SUFFIX_FORMATS.get(path.suffix.lower())


def matching_files(pattern: str, fmt: str | None = None) -> list[Path]:
    """The data files a source path names: a file, a glob, or every data file under a folder (those of
    format `fmt` when it is given)."""
    path = Path(pattern).expanduser()
    if any(ch in pattern for ch in "*?["):
        found = [Path(p) for p in glob.glob(str(path), recursive=True)]
    elif path.is_dir():
        found = [p for p in path.rglob("*") if format_of(p) is not None and fmt in (None, format_of(p))]
    else:
        found = [path]
    return sorted(p for p in found if not p.is_dir())


@dataclass(frozen=True)
class SourceConfig:
    """One corpus: a local path (file, folder or glob) or a built-in `name`, and its mixing weight."""

    path: str | None = None
    name: str | None = None
    weight: float = 1.0
    format: str | None = None          # jsonl | parquet | txt | tokens; None: from the file suffix
    text_field: str = "text"           # jsonl / parquet column holding the document text

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name

    def files(self) -> list[Path]:
        return matching_files(self.path, self.format) if self.path is not None else []


@dataclass(frozen=True)
class DataConfig:
    sources: list[SourceConfig]
    seq_len: int = 2048
    heldout_fraction: float | None = None    # share of each source's tokens (default 0.01)
    heldout_sequences: int | None = None     # or: this many seq_len sequences, split by weight
    seed: int = 0
    cache_dir: str | None = None             # tokenized corpora (datasets' Arrow cache)
    max_tokens: int | None = None            # training rows = max_tokens // seq_len (mixing.py); None: no repeats
    where: str = field(default="<data config>", compare=False, repr=False)  # for error messages

    @classmethod
    def from_dict(cls, raw: Any, where: str = "<data config>") -> "DataConfig":
        if not isinstance(raw, dict):
            file, prefix = split_where(where)
            raise ConfigError(f"{file}: {prefix}: expected a mapping, got {raw!r}")
        _reject_unknown(raw, cls, where, "", exclude={"where"})
        if "sources" not in raw:
            raise field_error(where, "sources", "required field missing")
        if not isinstance(raw["sources"], list) or not raw["sources"]:
            raise field_error(where, "sources", f"expected a non-empty list of sources, got {raw['sources']!r}")
        sources = [_source_from_dict(item, where, i) for i, item in enumerate(raw["sources"])]
        values = {name: _checked(raw[name], kind, where, name) for name, kind in _SCALARS.items() if name in raw}
        if values.get("heldout_fraction") is not None and values.get("heldout_sequences") is not None:
            raise field_error(where, "heldout_sequences", "set heldout_fraction or heldout_sequences, not both")
        if values.get("heldout_fraction") is None and values.get("heldout_sequences") is None:
            values["heldout_fraction"] = 0.01
        config = cls(sources=sources, where=where, **values)
        config.check()
        return config

    def check(self) -> None:
        if self.seq_len < 2:
            raise field_error(self.where, "seq_len", f"must be >= 2, got {self.seq_len}")
        if self.heldout_fraction is not None and not 0.0 <= self.heldout_fraction < 1.0:
            raise field_error(self.where, "heldout_fraction", f"must be in [0, 1), got {self.heldout_fraction}")
        if self.heldout_sequences is not None and self.heldout_sequences < 0:
            raise field_error(self.where, "heldout_sequences", f"must be >= 0, got {self.heldout_sequences}")
        if self.max_tokens is not None and self.max_tokens < self.seq_len:
            raise field_error(self.where, "max_tokens", f"must be >= seq_len ({self.seq_len}), got {self.max_tokens}")

    def cache_path(self) -> Path:
        """`cache_dir`, or the project cache (`$ACTSPARSE_CACHE`, default ~/.cache/actsparse) + `/data`."""
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        return Path(os.environ.get("ACTSPARSE_CACHE", Path.home() / ".cache" / "actsparse")) / "data"

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("where")
        return out


_SCALARS = {"seq_len": int, "heldout_fraction": float, "heldout_sequences": int, "seed": int,
            "cache_dir": str, "max_tokens": int}
_SOURCE_FIELDS = {"path": str, "name": str, "weight": float, "format": str, "text_field": str}
_NULLABLE = {"heldout_fraction", "heldout_sequences", "cache_dir", "max_tokens", "path", "name", "format"}


def _checked(value: Any, kind: type, where: str, dotted: str) -> Any:
    """`value` if it is a `kind` (None where the field allows it; ints widen to float), else a ConfigError."""
    if value is None and dotted.rpartition(".")[2] in _NULLABLE:
        return None
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise field_error(where, dotted, f"expected {kind.__name__}, got {value!r}")


def _reject_unknown(raw: dict, cls: type, where: str, prefix: str, exclude: set[str] = frozenset()) -> None:
    known = sorted(f.name for f in dataclasses.fields(cls) if f.name not in exclude)
    for key in raw:
        if key not in known:
            raise field_error(where, f"{prefix}{key}", f"unknown field; known: {', '.join(known)}")


def _source_from_dict(raw: Any, where: str, index: int) -> SourceConfig:
    at = f"sources[{index}]"
    if not isinstance(raw, dict):
        raise field_error(where, at, f"expected a mapping with path or name, got {raw!r}")
    _reject_unknown(raw, SourceConfig, where, f"{at}.")
    values = {key: _checked(value, _SOURCE_FIELDS[key], where, f"{at}.{key}") for key, value in raw.items()}
    if (values.get("path") is None) == (values.get("name") is None):
        raise field_error(where, at, "set exactly one of path (local files) or name (built in: "
                          f"{', '.join(BUILTIN_SOURCES)})")
    if not values.get("weight", 1.0) > 0:
        raise field_error(where, f"{at}.weight", f"must be > 0, got {values.get('weight')}")
    if values.get("name") is not None and values["name"] not in BUILTIN_SOURCES:
        raise field_error(where, f"{at}.name", f"unknown built-in source {values['name']!r}; "
                          f"known: {', '.join(BUILTIN_SOURCES)} (local files go in path)")
    if values.get("format") is not None and values["format"] not in FORMATS:
        raise field_error(where, f"{at}.format", f"expected one of {', '.join(FORMATS)}, got {values['format']!r}")
    source = SourceConfig(**values)
    if source.path is not None:
        source = dataclasses.replace(source, format=_checked_files(source, where, at))
    return source


def _checked_files(source: SourceConfig, where: str, at: str) -> str:
    """The source's format, after checking its files exist, are not empty and share one format."""
    files = source.files()
    if not files:
        raise field_error(where, f"{at}.path", f"no data files match: {source.path}")
    for path in files:
        if not path.exists():
            raise field_error(where, f"{at}.path", f"file not found: {path}")
        if path.stat().st_size == 0:
            raise field_error(where, f"{at}.path", f"file is empty: {path}")
    if source.format is not None:
        return source.format
    formats = {format_of(p) for p in files}
    if None in formats or len(formats) != 1:
        found = ", ".join(sorted({p.suffix or p.name for p in files}))
        raise field_error(where, f"{at}.format", f"cannot infer one format from the file suffixes ({found}); "
                          f"set format: {' | '.join(FORMATS)}")
    return formats.pop()
