"""Reading one configured text source into a `datasets.Dataset` of documents (files checked first).

jsonl / parquet hold one document per row (the `text_field` column); a txt / md / rst file is one
document. Loading goes through `datasets.load_dataset`, whose Arrow cache (keyed by the file paths,
sizes and modification times) makes a second read of unchanged files free. `datasets` is imported
only here, when a text source is read: pre-tokenized `tokens` sources (token_files.py) need numpy alone.
"""
from __future__ import annotations

import codecs
import logging
from pathlib import Path

from .config import DataConfig, SourceConfig, field_error
from .stdlib_corpus import DEMO_MAX_CHARS, python_minor, write_stdlib_corpus

log = logging.getLogger(__name__)

LOADERS = {"jsonl": "json", "parquet": "parquet", "txt": "text"}
UTF8_CHUNK_BYTES = 1 << 20


def source_files(data_cfg: DataConfig, index: int) -> list[Path]:
    """The files of `sources[index]`; a built-in source is written into the cache folder first."""
    source = data_cfg.sources[index]
    if source.name == "stdlib_docs":
        return [builtin_stdlib_file(data_cfg.cache_path())]
    files = source.files()
    if not files:
        raise field_error(data_cfg.where, f"sources[{index}].path", f"no data files match: {source.path}")
    return files


def builtin_stdlib_file(cache_dir: Path) -> Path:
    """The demo corpus for this Python version, written once and reused (its mtime keys the cache)."""
    path = cache_dir / "builtin" / f"stdlib_docs-py{python_minor()}-{DEMO_MAX_CHARS}chars.jsonl"
    if not path.exists():
        info = write_stdlib_corpus(path, max_chars=DEMO_MAX_CHARS)
        log.info("wrote the stdlib_docs corpus: %d documents, %d characters -> %s", info.documents, info.chars, path)
    return path


def text_column(source: SourceConfig) -> str:
    """The column holding the document text (the text loader always names it `text`)."""
    return "text" if source.format in ("txt", None) else source.text_field


def first_invalid_utf8_byte(path: Path) -> int | None:
    """Offset of the first byte that is not valid UTF-8, or None (read in chunks, any file size)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as stream:
        while chunk := stream.read(UTF8_CHUNK_BYTES):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                return offset + err.start
            offset += len(chunk)
    pending = len(decoder.getstate()[0])    # a multi-byte sequence cut off by the end of the file
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        return offset - pending + err.start
    return None


def _root_reason(err: BaseException) -> str:
    """The innermost cause of a `datasets` loading error, on one line."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def load_source_documents(data_cfg: DataConfig, index: int):
    """Text source `sources[index]` as a `datasets.Dataset` with its text column (`text_column`)."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError(f"reading text sources needs the datasets package ({err}); or pre-tokenize them "
                          "elsewhere with `actsparse prepare-data` and use the .tokens.npz file") from None
    source: SourceConfig = data_cfg.sources[index]
    files = source_files(data_cfg, index)
    fmt = source.format or "jsonl"   # only built-in sources have no format: they are jsonl
    at = f"sources[{index}]"
    if fmt in ("jsonl", "txt"):
        for path in files:
            bad = first_invalid_utf8_byte(path)
            if bad is not None:
                raise field_error(data_cfg.where, f"{at}.path", f"not UTF-8 text (byte {bad}): {path}")
    kwargs = {"sample_by": "document"} if fmt == "txt" else {}
    try:
        documents = datasets.load_dataset(LOADERS[fmt], data_files=[str(p) for p in files], split="train",
                                          cache_dir=str(data_cfg.cache_path()), **kwargs)
    except Exception as err:  # datasets wraps parser errors; the root cause names the problem
        names = files[0] if len(files) == 1 else f"{len(files)} files under {source.path}"
        raise field_error(data_cfg.where, f"{at}.path", f"cannot read as {fmt} ({_root_reason(err)}): {names}") from None
    _check_columns(documents, source, data_cfg.where, at, files)
    return documents


def _check_columns(documents, source: SourceConfig, where: str, at: str, files: list[Path]) -> None:
    columns = documents.features
    field = text_column(source)
    if field not in columns:
        raise field_error(where, f"{at}.text_field", f"no column {field!r} (columns: {', '.join(columns)}) in: {files[0]}")
    dtype = getattr(columns[field], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise field_error(where, f"{at}.text_field", f"column {field!r} holds {columns[field]}, not text, in: {files[0]}")
