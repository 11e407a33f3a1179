"""Pre-tokenized corpora (`*.tokens.npz`): what `actsparse prepare-data` writes and `format: tokens` reads.

A compressed numpy archive, readable with numpy alone (GPU images may lack datasets and pyarrow):
`input_ids` (every document's ids back to back, no EOS: packing adds it; uint16 when the vocabulary
fits, else uint32), `offsets` (int64, document d is input_ids[offsets[d]:offsets[d + 1]]), `doc_keys`
(int64 hash of each document's text, so the held-out choice equals the one made from the text itself)
and `metadata` (JSON text: the tokenizer fingerprint; reading with another tokenizer is refused).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .packing import DocumentTokens


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def write_token_file(path: Path, documents: list[list[int]], doc_keys: list[int], vocab_size: int,
                     metadata: dict) -> int:
    """Write the documents' token ids; returns the file size in bytes."""
    lengths = np.array([len(ids) for ids in documents], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.fromiter((t for ids in documents for t in ids), dtype=token_dtype(vocab_size), count=int(offsets[-1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:      # a file object: savez would otherwise append ".npz" to the name
        np.savez_compressed(out, input_ids=values, offsets=offsets, doc_keys=np.array(doc_keys, dtype=np.int64),
                            metadata=np.array(json.dumps(metadata, sort_keys=True)))
    return path.stat().st_size


def read_token_file(path: Path) -> tuple[DocumentTokens, dict]:
    """The documents and the metadata of a `*.tokens.npz` (KeyError names a missing array)."""
    with np.load(path, allow_pickle=False) as archive:
        docs = DocumentTokens(values=archive["input_ids"].astype(np.int32), offsets=archive["offsets"],
                              keys=archive["doc_keys"])
        return docs, json.loads(str(archive["metadata"]))
