"""Calibration / held-out batches for the sparsity metrics and perplexity, from a local text file.

Documents are tokenized, joined with EOS between them into one token stream (as the recipe packs its
training data), and cut into `seq_len` windows; each window starts with BOS when the model expects one.
Sources: `jsonl` (one document per line, `text_field`), `txt` (documents separated by blank lines) or
`stdlib`, the recipe's bundled corpus of Python standard-library docstrings (no download, PSF license).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .eval_config import DataConfig

DEFAULT_CACHE_DIR = os.path.expanduser("~/.cache/actsparse/data")


def read_documents(cfg: DataConfig) -> tuple[list[str], str]:
    """(documents, a name for the data that goes into the results)."""
    if cfg.source == "stdlib":
        from actsparse.recipes.data.sources import builtin_stdlib_file

        path = builtin_stdlib_file(Path(DEFAULT_CACHE_DIR))
        docs = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]
        return docs, f"stdlib:{path.name}"
    text = Path(cfg.path).read_text(encoding="utf-8")
    if cfg.source == "txt":
        return [d.strip() for d in text.split("\n\n") if d.strip()], f"txt:{cfg.path}"
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if cfg.text_field not in row:
            raise ValueError(f"{cfg.path}:{number}: no field {cfg.text_field!r} (data.text_field)")
        docs.append(str(row[cfg.text_field]))
    return docs, f"jsonl:{cfg.path}"


def calibration_batches(cfg: DataConfig, tokenizer, add_bos: bool) -> tuple[list[torch.Tensor], dict]:
    """`num_batches` LongTensors `[batch_size, seq_len]` and a description of what they hold."""
    docs, name = read_documents(cfg)
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for doc in docs:
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
    bos = [tokenizer.bos_token_id] if add_bos and tokenizer.bos_token_id is not None else []
    body = cfg.seq_len - len(bos)
    needed = cfg.num_batches * cfg.batch_size
    stream = stream[cfg.skip_tokens:]
    windows = [bos + stream[i:i + body] for i in range(0, len(stream) - body + 1, body)][:needed]
    if len(windows) < needed:
        raise ValueError(f"data {name}: {len(stream)} tokens after skip_tokens={cfg.skip_tokens} make "
                         f"{len(windows)} windows of {cfg.seq_len}; need num_batches * batch_size = {needed}")
    ids = torch.tensor(windows, dtype=torch.long)
    batches = list(ids.split(cfg.batch_size))
    info = {"name": name, "documents": len(docs), "seq_len": cfg.seq_len, "batch_size": cfg.batch_size,
            "num_batches": len(batches), "tokens": int(ids.numel()), "bos_first": bool(bos),
            "skip_tokens": cfg.skip_tokens}
    return batches, info
