"""`build_datasets(data_cfg, tokenizer)`: configured sources -> packed training and held-out sequences.

Per source, in this order: load the files (datasets), tokenize (cached), drop empty documents, choose the
held-out documents (packing.heldout_mask: before any mixing or shuffling), pack the held-out and the
training documents separately (file order, EOS after each document). Then the training rows of all
sources are mixed by weight (mixing.py); the held-out rows of all sources are concatenated in source
order. Shuffling is the sampler's job (TrainBatches), so the datasets themselves are fixed by the files,
the tokenizer, seq_len, the held-out setting, max_tokens and the seed.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import DataConfig, field_error
from .mixing import apportion, mixture_rows
from .packing import DocumentTokens, heldout_mask, pack_documents
from .sources import load_source_documents, text_column
from .token_files import read_token_file_metadata
from .tokenizing import eos_id_of, tokenize_documents, tokenizer_fingerprint

log = logging.getLogger(__name__)


class PackedSequences(torch.utils.data.Dataset):
    """Fixed-length token rows; item i is `{"input_ids": LongTensor[seq_len]}` (labels = input_ids)."""

    def __init__(self, rows: np.ndarray, source_ids: np.ndarray, source_names: list[str]):
        self.rows = rows                    # int32 [n, seq_len]
        self.source_ids = source_ids        # int [n]: which source each row came from
        self.source_names = source_names

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


def _heldout_targets(data_cfg: DataConfig, source_tokens: list[int]) -> list[int]:
    """Held-out tokens wanted from each source (see the DataConfig fields)."""
    if data_cfg.heldout_sequences is not None:
        shares = apportion(data_cfg.heldout_sequences, [s.weight for s in data_cfg.sources])
        return [n * data_cfg.seq_len for n in shares]
    return [math.ceil(data_cfg.heldout_fraction * tokens) for tokens in source_tokens]


def _source_documents(data_cfg: DataConfig, index: int, tokenizer) -> DocumentTokens:
    source = data_cfg.sources[index]
    documents = load_source_documents(data_cfg, index)
    if source.format == "tokens":
        _check_tokens_file(data_cfg, index, tokenizer)
        tokenized = documents
    else:
        tokenized = tokenize_documents(documents, tokenizer, text_column(source), source.label)
    docs = DocumentTokens.from_dataset(tokenized)
    empty = int((docs.lengths == 0).sum())
    if empty:
        log.info("%s: %d empty documents skipped", source.label, empty)
    return docs


def _check_tokens_file(data_cfg: DataConfig, index: int, tokenizer) -> None:
    path = data_cfg.sources[index].files()[0]
    made_with = read_token_file_metadata(path).get("tokenizer_fingerprint")
    if made_with != tokenizer_fingerprint(tokenizer):
        raise field_error(data_cfg.where, f"sources[{index}].path", f"tokenized with another tokenizer "
                          f"(fingerprint {made_with}, this one {tokenizer_fingerprint(tokenizer)}): {path}")


def _split_and_pack(data_cfg: DataConfig, all_docs: list[DocumentTokens], eos_id: int) -> list[_SourceRows]:
    spans = [docs.lengths + 1 for docs in all_docs]
    targets = _heldout_targets(data_cfg, [int(s[docs.lengths > 0].sum()) for s, docs in zip(spans, all_docs)])
    packed = []
    for index, (docs, span, target) in enumerate(zip(all_docs, spans, targets)):
        nonempty = docs.lengths > 0
        held = heldout_mask(docs.keys[nonempty], span[nonempty], target)
        doc_ids = np.flatnonzero(nonempty)
        heldout = pack_documents(docs, doc_ids[held], eos_id, data_cfg.seq_len)
        if data_cfg.heldout_sequences is not None:
            heldout = heldout[: target // data_cfg.seq_len]
        train = pack_documents(docs, doc_ids[~held], eos_id, data_cfg.seq_len)
        if len(train) == 0:
            raise field_error(data_cfg.where, f"sources[{index}].path", f"too little text for one training "
                              f"sequence of {data_cfg.seq_len} tokens after the held-out split "
                              f"({int(span[nonempty].sum())} tokens in all): {data_cfg.sources[index].label}")
        packed.append(_SourceRows(data_cfg.sources[index].label, train, heldout))
    return packed


def _concat(parts: list[np.ndarray], seq_len: int, names: list[str]) -> PackedSequences:
    rows = np.concatenate(parts) if parts else np.zeros((0, seq_len), dtype=np.int32)
    source_ids = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(parts)])
    return PackedSequences(rows.reshape(-1, seq_len), source_ids, names)


def build_datasets(data_cfg: DataConfig, tokenizer) -> PackedData:
    """Training and held-out sequences for `data_cfg`, tokenized with `tokenizer` (see the module doc)."""
    eos_id = eos_id_of(tokenizer)
    all_docs = [_source_documents(data_cfg, i, tokenizer) for i in range(len(data_cfg.sources))]
    packed = _split_and_pack(data_cfg, all_docs, eos_id)
    labels = [p.label for p in packed]
    names = [label if labels.count(label) == 1 else f"{label}[{i}]" for i, label in enumerate(labels)]
    picks = mixture_rows([len(p.train) for p in packed], [s.weight for s in data_cfg.sources],
                         data_cfg.seq_len, data_cfg.max_tokens, data_cfg.seed)
    train = _concat([p.train[rows] for p, rows in zip(packed, picks)], data_cfg.seq_len, names)
    heldout = _concat([p.heldout for p in packed], data_cfg.seq_len, names)
    data = PackedData(train, heldout, data_cfg.seq_len, eos_id, tokenizer_fingerprint(tokenizer))
    log.info(data.summary())
    return data
