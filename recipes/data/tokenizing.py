"""Documents -> token ids with the model's tokenizer, cached by `datasets` between runs.

The cache file of the batched `map` is named by a fingerprint of (the loaded files' dataset fingerprint,
the tokenizer's content, the text column, TOKENIZE_VERSION): a second run over the same files with the
same tokenizer loads `cache-<fingerprint>.arrow` and calls the tokenizer not once. seq_len is not part of
the key on purpose: packing is a cheap reshape done on every build, so a new seq_len reuses the tokens.
"""
from __future__ import annotations

import hashlib
import json

TOKENIZE_VERSION = "1"  # bump when the stored columns change meaning


def doc_key(text: str) -> int:
    """A document's identity, from its text alone: picks the held-out split independently of file order."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1   # 63 bits: an int64 column holds it


# What the fingerprint tokenizes: words, code, digits, runs of spaces and newlines, accents, CJK, emoji.
FINGERPRINT_PROBE = ("The quick brown fox jumps over the lazy dog.\n\n    def f(x):  return x ** 2  # 3.14159\n"
                     "naïve café, Straße; 東京は晴れ。 🙂 <|endoftext|> \t\tend")


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does: its vocabulary, its EOS id and its ids for a probe text.

    Behaviour, not serialization: the same tokenizer files loaded by another transformers / tokenizers
    version (another class name, another JSON layout) give the same fingerprint, so a corpus tokenized on
    one machine is accepted on another. (The GPU image rejected a corpus tokenized here under the earlier,
    serialization-based fingerprint; why its tokenizer differed was not established.)"""
    vocab = sorted(tokenizer.get_vocab().items())
    backend = getattr(tokenizer, "backend_tokenizer", None)   # the Rust tokenizer: what the mapping really is
    probe = (backend.encode(FINGERPRINT_PROBE, add_special_tokens=False).ids if backend is not None
             else tokenizer.encode(FINGERPRINT_PROBE, add_special_tokens=False))
    content = json.dumps([tokenizer.eos_token_id, vocab, probe])
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


def eos_id_of(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token: packing separates documents with it")
    return int(eos)


def _tokenize_batch(batch: dict, tokenizer, text_field: str) -> dict:
    texts = [text if text is not None else "" for text in batch[text_field]]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return {"input_ids": ids, "doc_key": [doc_key(text) for text in texts]}


def tokenize_documents(documents, tokenizer, text_field: str, label: str):
    """`documents` (a datasets.Dataset) as rows of `input_ids` (no EOS; packing adds it) and `doc_key`,
    from the cache when present."""
    import datasets   # only text sources come here (see sources.py)

    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")), "doc_key": datasets.Value("int64")})
    key = "|".join([documents._fingerprint, tokenizer_fingerprint(tokenizer), text_field, TOKENIZE_VERSION])
    return documents.map(
        _tokenize_batch, batched=True, batch_size=1000, remove_columns=documents.column_names,
        fn_kwargs={"tokenizer": tokenizer, "text_field": text_field}, features=features,
        new_fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16], desc=f"tokenize {label}",
    )
