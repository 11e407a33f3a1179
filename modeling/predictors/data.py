"""Token batches for collection and perplexity from a file: `.pt` ids, `.jsonl` / `.txt` text, or the
pre-tokenized `.tokens.parquet` that `actsparse prepare-data` writes.

- `.pt`: a LongTensor [N, T] of token ids (or a dict holding one under `input_ids`), used as is.
- `.jsonl`: one JSON object per line, text under `text_field`; `.txt`: one document per non-empty line.
  Documents are tokenized (with the tokenizer's BOS), joined with EOS, and cut into `seq_len` windows,
  streaming, so a large file is never held in memory at once.
- `.parquet`: one document per row, token ids in column `input_ids` (no EOS stored; joined with the
  tokenizer's EOS like text). It must come from the same tokenizer (prepare-data records which).
`modeling` may not import `actsparse.recipes`; the recipes' own batches (`heldout_batches(...)`, dicts with
`input_ids`) can be passed straight to `collect_activations` / `heldout_perplexity`, which take any
iterable of id tensors or dicts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch


def _documents(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                record = json.loads(line)
                if text_field not in record:
                    raise KeyError(f"{path}:{line_no}: no field {text_field!r} (set collect.text_field)")
                yield record[text_field]
            else:
                yield line.rstrip("\n")


def _token_documents(path: Path, tokenizer, text_field: str) -> Iterator[list[int]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        for group in pq.ParquetFile(path).iter_batches(columns=["input_ids"]):
            yield from group.column(0).to_pylist()
        return
    for text in _documents(path, text_field):
        yield tokenizer(text)["input_ids"]


def _windows(path: Path, tokenizer, seq_len: int, text_field: str) -> Iterator[torch.Tensor]:
    pending: list[int] = []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for ids in _token_documents(path, tokenizer, text_field):
        pending.extend(list(ids) + eos)
        while len(pending) >= seq_len:
            yield torch.tensor(pending[:seq_len])
            pending = pending[seq_len:]
    if len(pending) > 1:
        yield torch.tensor(pending)


def token_batches(path: str | Path, tokenizer=None, seq_len: int = 512, batch_size: int = 8,
                  max_tokens: int | None = None, text_field: str = "text") -> Iterator[torch.Tensor]:
    """LongTensor batches [B, T] from `path`, at most `max_tokens` tokens in all (None: the whole file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    if path.suffix == ".pt":
        ids = torch.load(path)
        ids = ids["input_ids"] if isinstance(ids, dict) else ids
        rows: Iterator[torch.Tensor] = iter(ids.long())
    elif path.suffix in (".jsonl", ".txt", ".parquet"):
        if tokenizer is None:
            raise ValueError(f"{path}: text / parquet data needs a tokenizer (collect.tokenizer or the model folder)")
        rows = _windows(path, tokenizer, seq_len, text_field)
    else:
        raise ValueError(f"{path}: unsupported data file; use .pt (token ids), .jsonl, .txt or .parquet")
    batch, used = [], 0
    for row in rows:
        if max_tokens is not None and used + row.numel() > max_tokens:
            row = row[: max_tokens - used]
        if row.numel() > 1:
            batch.append(row)
            used += row.numel()
        # rows of one batch must share a length: a short last window goes out alone
        if len(batch) == batch_size or (batch and batch[-1].numel() != batch[0].numel()):
            yield from _flush(batch)
            batch = []
        if max_tokens is not None and used >= max_tokens:
            break
    yield from _flush(batch)


def _flush(batch: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    if not batch:
        return
    same = [r for r in batch if r.numel() == batch[0].numel()]
    odd = [r for r in batch if r.numel() != batch[0].numel()]
    yield torch.stack(same)
    for row in odd:
        yield row.unsqueeze(0)
