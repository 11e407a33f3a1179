"""Tokenized documents -> fixed-length sequences, and the held-out choice of documents.

Packing rule: the documents, in the given order, are concatenated with one EOS token after each
(`d0 EOS d1 EOS d2 EOS ...`) and the stream is cut into consecutive `seq_len` rows; the last partial
row is dropped. A document may span rows; no padding exists anywhere.

Held-out rule: within one source, documents are ranked by `doc_key` (a hash of the text) and taken
from the smallest key up until their tokens (EOS included) reach the target; documents with the same
key as the last one taken (exact duplicates) go too. The choice depends on the documents alone, not on
file order, the seed, the mixture or seq_len, so held-out text never reaches training.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DocumentTokens:
    """All documents of one source: document d is `values[offsets[d]:offsets[d + 1]]`."""

    values: np.ndarray    # int32 token ids, every document back to back
    offsets: np.ndarray   # int64, len = documents + 1
    keys: np.ndarray      # int64 doc_key per document (tokenizing.doc_key)

    @classmethod
    def from_dataset(cls, tokenized) -> "DocumentTokens":
        """From a tokenized `datasets.Dataset` (`input_ids`, `doc_key` columns), reading its Arrow buffers."""
        table = tokenized.flatten_indices().data if tokenized._indices is not None else tokenized.data
        ids = table.column("input_ids").combine_chunks()
        offsets = ids.offsets.to_numpy().astype(np.int64)
        values = ids.values.to_numpy().astype(np.int32, copy=False)
        keys = table.column("doc_key").to_numpy().astype(np.int64, copy=False)
        return cls(values=values, offsets=offsets, keys=keys)

    @classmethod
    def concat(cls, parts: list["DocumentTokens"]) -> "DocumentTokens":
        shifts = np.cumsum([0] + [len(p.values) for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] - p.offsets[0] + s for p, s in zip(parts, shifts)])
        return cls(values=np.concatenate([p.values for p in parts]), offsets=offsets.astype(np.int64),
                   keys=np.concatenate([p.keys for p in parts]))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.keys)


def token_stream(docs: DocumentTokens, order: np.ndarray, eos_id: int) -> np.ndarray:
    """`docs[order[0]] EOS docs[order[1]] EOS ...` as one int32 array (vectorised gather)."""
    order = np.asarray(order, dtype=np.int64)
    starts, lengths = docs.offsets[order], docs.lengths[order]
    spans = lengths + 1                                   # each document plus its EOS
    out_starts = np.cumsum(spans) - spans
    total = int(spans.sum())
    # position p of the output reads values[p + (start - out_start)] of the document it falls in
    source_index = np.arange(total, dtype=np.int64) + np.repeat(starts - out_starts, spans)
    stream = docs.values[np.minimum(source_index, max(len(docs.values) - 1, 0))] if len(docs.values) else \
        np.zeros(total, dtype=np.int32)
    stream[out_starts + lengths] = eos_id
    return stream.astype(np.int32, copy=False)


def pack_documents(docs: DocumentTokens, order: np.ndarray, eos_id: int, seq_len: int) -> np.ndarray:
    """Rows of `seq_len` tokens cut from `token_stream(docs, order)`; the partial tail is dropped."""
    stream = token_stream(docs, order, eos_id)
    rows = len(stream) // seq_len
    return stream[: rows * seq_len].reshape(rows, seq_len)


def heldout_mask(keys: np.ndarray, spans: np.ndarray, target_tokens: int) -> np.ndarray:
    """Documents held out: smallest `keys` first until `spans` (tokens + EOS) sum to `target_tokens`."""
    mask = np.zeros(len(keys), dtype=bool)
    if target_tokens <= 0 or len(keys) == 0:
        return mask
    ranked = np.argsort(keys, kind="stable")
    reached = np.cumsum(spans[ranked]) >= target_tokens
    count = int(np.argmax(reached)) + 1 if reached.any() else len(ranked)
    last_key = keys[ranked[count - 1]]
    count = int(np.searchsorted(keys[ranked], last_key, side="right"))   # duplicates of the last go too
    mask[ranked[:count]] = True
    return mask
