"""`build_datasets(data_cfg, tokenizer)`: configured sources -> packed training and held-out sequences.

Per source, in this order: load the files (datasets), tokenize (cached), drop empty documents, choose the
held-out documents (packing.heldout_mask: before any mixing or shuffling), pack the held-out and the
training documents separately (file order, EOS after each document). Then the training rows of all
sources are mixed by weight (mixing.py); the held-out rows of all sources are concatenated in source
order. Shuffling is the sampler's job (TrainBatches), so the datasets themselves are fixed by the files,
the tokenizer, seq_len, the held-out setting, max_tokens and the seed.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import DataConfig, field_error
from .mixing import apportion, mixture_rows
from .packing import DocumentTokens, heldout_mask, pack_documents
from .sources import load_source_documents, text_column
from .token_files import read_token_file
from .tokenizing import eos_id_of, tokenize_documents, tokenizer_fingerprint

log = logging.getLogger(__name__)


class PackedSequences(torch.utils.data.Dataset):
    """Fixed-length token rows; item i is `{"input_ids": LongTensor[seq_len]}` (labels = input_ids)."""

    def __init__(self, rows: np.ndarray, source_ids: np.ndarray, source_names: list[str]):
        self.rows = rows                    # int32 [n, seq_len]
        self.source_ids = source_ids        # int [n]: which source each row came from
        self.source_names = source_names
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.rows[index].astype(np.int64))}

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Rows `indices` stacked: `{"input_ids": LongTensor[len(indices), seq_len]}`."""
        return {"input_ids": torch.from_numpy(self.rows[np.asarray(indices, dtype=np.int64)].astype(np.int64))}

    @property
    def seq_len(self) -> int:
        return self.rows.shape[1]

    def fingerprint(self) -> str:
        """A hash of the rows: a resumed run checks it reads the same data (TrainBatches.load_state_dict)."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.blake2b(np.ascontiguousarray(self.rows).tobytes(), digest_size=8).hexdigest()
        return self._fingerprint

    def tokens_by_source(self) -> dict[str, int]:
        counts = np.bincount(self.source_ids, minlength=len(self.source_names)) * self.rows.shape[1]
        return {name: int(c) for name, c in zip(self.source_names, counts)}


@dataclass
class PackedData:
    train: PackedSequences
    heldout: PackedSequences
    seq_len: int
    eos_token_id: int
    tokenizer_fingerprint: str

    def summary(self) -> str:
        def shares(part: PackedSequences) -> str:
            return ", ".join(f"{name} {n:,}" for name, n in part.tokens_by_source().items())
        return (f"data: {len(self.train):,} train x {self.seq_len} tokens ({shares(self.train)}); "
                f"{len(self.heldout):,} held-out ({shares(self.heldout)})")


@dataclass
class _SourceRows:
    label: str
    train: np.ndarray
    heldout: np.ndarray


def _heldout_target_tokens(data_cfg: DataConfig, index: int, source_tokens: int) -> int:
    """Held-out tokens wanted from source `index`: its heldout_fraction share, or its weight's share of
    heldout_sequences (largest remainder) in whole rows."""
    if data_cfg.heldout_sequences is not None:
        rows = apportion(data_cfg.heldout_sequences, [s.weight for s in data_cfg.sources])[index]
        return rows * data_cfg.seq_len
    return math.ceil(data_cfg.heldout_fraction * source_tokens)


def _source_documents(data_cfg: DataConfig, index: int, tokenizer) -> DocumentTokens:
    source = data_cfg.sources[index]
    if source.format == "tokens":
        docs = DocumentTokens.concat([_read_tokens_file(data_cfg, index, path, tokenizer) for path in source.files()])
    else:
        documents = load_source_documents(data_cfg, index)
        docs = DocumentTokens.from_dataset(tokenize_documents(documents, tokenizer, text_column(source), source.label))
    empty = int((docs.lengths == 0).sum())
    if empty:
        log.info("%s: %d empty documents skipped", source.label, empty)
    return docs


def _read_tokens_file(data_cfg: DataConfig, index: int, path, tokenizer) -> DocumentTokens:
    """A prepare-data file, refused when another tokenizer made it."""
    at = f"sources[{index}].path"
    try:
        docs, metadata = read_token_file(path)
    except (OSError, ValueError, KeyError) as err:
        raise field_error(data_cfg.where, at, f"not a tokens file from actsparse prepare-data "
                          f"({type(err).__name__}: {err}): {path}") from None
    made_with, this_one = metadata.get("tokenizer_fingerprint"), tokenizer_fingerprint(tokenizer)
    if made_with != this_one:
        raise field_error(data_cfg.where, at, f"tokenized with another tokenizer (fingerprint {made_with}, "
                          f"this one {this_one}): {path}")
    return docs


def _split_and_pack(data_cfg: DataConfig, index: int, docs: DocumentTokens, eos_id: int) -> _SourceRows:
    """Held-out documents chosen first, then both parts packed in file order (empty documents left out)."""
    source, seq_len = data_cfg.sources[index], data_cfg.seq_len
    doc_ids = np.flatnonzero(docs.lengths > 0)
    spans = docs.lengths[doc_ids] + 1                       # tokens + EOS
    target = _heldout_target_tokens(data_cfg, index, int(spans.sum()))
    held = heldout_mask(docs.keys[doc_ids], spans, target)
    heldout = pack_documents(docs, doc_ids[held], eos_id, seq_len)
    if data_cfg.heldout_sequences is not None:
        heldout = heldout[: target // seq_len]
    train = pack_documents(docs, doc_ids[~held], eos_id, seq_len)
    if len(train) == 0:
        raise field_error(data_cfg.where, f"sources[{index}].{'path' if source.path else 'name'}",
                          f"too little text for one training sequence of {seq_len} tokens after the held-out "
                          f"split ({int(spans.sum())} tokens in all): {source.label}")
    return _SourceRows(source.label, train, heldout)


def _concat(parts: list[np.ndarray], seq_len: int, names: list[str]) -> PackedSequences:
    source_ids = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(parts)])
    return PackedSequences(np.concatenate(parts).reshape(-1, seq_len), source_ids, names)


def build_datasets(data_cfg: DataConfig, tokenizer) -> PackedData:
    """Training and held-out sequences for `data_cfg`, tokenized with `tokenizer` (see the module doc)."""
    eos_id = eos_id_of(tokenizer)
    packed = [_split_and_pack(data_cfg, i, _source_documents(data_cfg, i, tokenizer), eos_id)
              for i in range(len(data_cfg.sources))]
    labels = [p.label for p in packed]
    names = [label if labels.count(label) == 1 else f"{label}[{i}]" for i, label in enumerate(labels)]
    picks = mixture_rows([len(p.train) for p in packed], [s.weight for s in data_cfg.sources],
                         data_cfg.seq_len, data_cfg.max_tokens, data_cfg.seed)
    train = _concat([p.train[rows] for p, rows in zip(packed, picks)], data_cfg.seq_len, names)
    heldout = _concat([p.heldout for p in packed], data_cfg.seq_len, names)
    data = PackedData(train, heldout, data_cfg.seq_len, eos_id, tokenizer_fingerprint(tokenizer))
    log.info(data.summary())
    return data
