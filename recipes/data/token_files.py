"""Pre-tokenized corpora (`*.tokens.parquet`): what `actsparse prepare-data` writes and `format: tokens` reads.

One row per document: `input_ids` (uint16 when the vocabulary fits, else uint32; no EOS, packing adds
it) and `doc_key` (the hash of the document text, so the held-out choice matches the text source's).
The parquet schema metadata `actsparse` holds the tokenizer fingerprint; reading with another
tokenizer is refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

METADATA_KEY = b"actsparse"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def write_token_file(path: Path, documents: list[list[int]], doc_keys: list[int], vocab_size: int,
                     metadata: dict) -> int:
    """Write the documents' token ids; returns the file size in bytes."""
    dtype = token_dtype(vocab_size)
    lengths = np.array([len(ids) for ids in documents], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.fromiter((t for ids in documents for t in ids), dtype=dtype, count=int(offsets[-1]))
    input_ids = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    table = pa.table({"input_ids": input_ids, "doc_key": pa.array(doc_keys, type=pa.int64())})
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return path.stat().st_size


def read_token_file_metadata(path: Path) -> dict:
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(METADATA_KEY, b"{}"))
