"""build_datasets against references written out here: the exact token stream, the held-out rule, the
mixture rule, seeds, the tokenization cache, and one-line errors for bad data files.

The tokenizer is a WordLevel one over a fixed vocabulary, so the reference tokenization of a document is
just `[VOCAB[w] for w in text.split()]`, independent of the code under test.
"""
import hashlib
import json
import math
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from actsparse.recipes.data import ConfigError, DataConfig, build_datasets

WORDS_A = [f"a{i}" for i in range(40)]
WORDS_B = [f"b{i}" for i in range(40)]
VOCAB = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS_A + WORDS_B)}}
EOS = 1
WHERE = "t.yaml:data"


def tiny_tokenizer(vocab=VOCAB) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")


def random_docs(seed: int, words: list[str], count: int, low: int = 3, high: int = 40) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(low, high))) for _ in range(count)]


def reference_stream(texts: list[str]) -> list[int]:
    """Tokenized documents, each followed by EOS, back to back."""
    return [t for text in texts for t in [VOCAB[w] for w in text.split()] + [EOS]]


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def config(tmp_path, sources, **fields) -> DataConfig:
    heldout = {} if "heldout_sequences" in fields else {"heldout_fraction": 0.0}
    raw = {"sources": sources, "seq_len": 16, **heldout, "cache_dir": str(tmp_path / "cache"), **fields}
    return DataConfig.from_dict(raw, where=WHERE)


def build(tmp_path, sources, **fields):
    return build_datasets(config(tmp_path, sources, **fields), tiny_tokenizer())


def flat(rows) -> list[int]:
    return np.asarray(rows).reshape(-1).tolist()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "txt"])
def test_rows_are_the_document_stream_with_eos_cut_to_seq_len(tmp_path, fmt):
    texts = random_docs(0, WORDS_A, 30)
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "docs.jsonl", texts)
    elif fmt == "parquet":
        path = tmp_path / "docs.parquet"
        pq.write_table(pa.table({"body": texts, "id": list(range(30))}), path)
    else:
        path = tmp_path / "docs"
        path.mkdir()
        for i, text in enumerate(texts):                      # one file = one document, in path order
            (path / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    source = {"path": str(path), **({"text_field": "body"} if fmt == "parquet" else {})}
    packed = build(tmp_path, [source])
    stream = reference_stream(texts)
    rows = len(stream) // 16
    assert packed.train.rows.shape == (rows, 16) and len(packed.heldout) == 0
    assert flat(packed.train.rows) == stream[: rows * 16]
    assert packed.train[0]["input_ids"].tolist() == stream[:16] and packed.eos_token_id == EOS


def expected_heldout(texts: list[str], fraction: float) -> list[int]:
    """The documented rule, written out: smallest blake2b keys first until the token target is met."""
    keys = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") >> 1 for t in texts]
    spans = [len(t.split()) + 1 for t in texts]
    target, total, held = math.ceil(fraction * sum(spans)), 0, []
    for i in sorted(range(len(texts)), key=lambda i: keys[i]):
        if total >= target:
            break
        held.append(i)
        total += spans[i]
    return sorted(held)


def test_heldout_documents_follow_the_rule_and_never_reach_training(tmp_path):
    texts = random_docs(1, WORDS_A, 60, low=5)
    packed = build(tmp_path, [{"path": str(write_jsonl(tmp_path / "a.jsonl", texts))}], heldout_fraction=0.2)
    held = expected_heldout(texts, 0.2)
    held_stream = reference_stream([texts[i] for i in held])
    train_stream = reference_stream([t for i, t in enumerate(texts) if i not in held])
    assert flat(packed.heldout.rows) == held_stream[: len(held_stream) // 16 * 16]
    assert flat(packed.train.rows) == train_stream[: len(train_stream) // 16 * 16]
    train_text = " " + " ".join(map(str, flat(packed.train.rows))) + " "
    for i in held:                                   # no held-out document appears in the training rows
        assert " " + " ".join(str(VOCAB[w]) for w in texts[i].split()) + " " not in train_text


def test_heldout_sequences_are_split_by_weight(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", random_docs(2, WORDS_A, 80))
    b = write_jsonl(tmp_path / "b.jsonl", random_docs(3, WORDS_B, 80))
    packed = build(tmp_path, [{"path": str(a), "weight": 3}, {"path": str(b), "weight": 2}], heldout_sequences=5)
    assert packed.heldout.source_ids.tolist() == [0, 0, 0, 1, 1]    # largest remainder of 5 * (3/5, 2/5)
    assert packed.heldout.tokens_by_source() == {"a.jsonl": 48, "b.jsonl": 32}


def source_of_rows(rows) -> list[str]:
    """Which corpus each row's words come from, read from the token ids alone."""
    a_ids = {VOCAB[w] for w in WORDS_A}
    return ["a" if set(row) - {EOS} <= a_ids else "b" for row in np.asarray(rows).tolist()]


def test_mixture_shares_by_tokens_without_repeats(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", random_docs(4, WORDS_A, 200))
    b = write_jsonl(tmp_path / "b.jsonl", random_docs(5, WORDS_B, 200))
    packed = build(tmp_path, [{"path": str(a), "weight": 3}, {"path": str(b), "weight": 1}])
    rows_from_a = source_of_rows(packed.train.rows).count("a")
    available = [len(reference_stream(random_docs(seed, words, 200))) // 16 for seed, words in ((4, WORDS_A), (5, WORDS_B))]
    total = len(packed.train)
    assert total == min(math.floor(available[0] / 0.75), math.floor(available[1] / 0.25))   # N = min c_i / p_i
    assert abs(rows_from_a / total - 0.75) <= 1 / total
    assert len({tuple(r) for r in packed.train.rows.tolist()}) == total    # no row repeats


def test_max_tokens_repeats_scarce_sources_to_keep_the_weights(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", random_docs(6, WORDS_A, 40))
    b = write_jsonl(tmp_path / "b.jsonl", random_docs(7, WORDS_B, 40))
    packed = build(tmp_path, [{"path": str(a), "weight": 1}, {"path": str(b), "weight": 1}], max_tokens=16 * 1001)
    sources = source_of_rows(packed.train.rows)
    assert len(sources) == 1001 and sorted(set(sources)) == ["a", "b"]
    assert abs(sources.count("a") - 500.5) <= 0.5               # apportioned: 501 / 500
    assert packed.train.tokens_by_source()["a.jsonl"] == 16 * sources.count("a")


def test_same_seed_same_data_other_seed_other_subsample(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", random_docs(8, WORDS_A, 100))
    b = write_jsonl(tmp_path / "b.jsonl", random_docs(9, WORDS_B, 30))
    sources = [{"path": str(a)}, {"path": str(b)}]
    first = build(tmp_path, sources, seed=1, heldout_fraction=0.1)
    again = build(tmp_path, sources, seed=1, heldout_fraction=0.1)
    other = build(tmp_path, sources, seed=2, heldout_fraction=0.1)
    assert np.array_equal(first.train.rows, again.train.rows)
    assert not np.array_equal(first.train.rows, other.train.rows)          # a is subsampled by seed
    assert np.array_equal(first.heldout.rows, other.heldout.rows)          # held-out ignores the seed


def test_second_build_reads_the_token_cache(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "a.jsonl", random_docs(10, WORDS_A, 50))
    first = build(tmp_path, [{"path": str(path)}])
    assert list((tmp_path / "cache").rglob("cache-*.arrow"))           # datasets' map cache file

    def no_tokenizing(self, *args, **kwargs):
        raise AssertionError("tokenizer called: the cache missed")
    monkeypatch.setattr(PreTrainedTokenizerFast, "__call__", no_tokenizing)
    second = build(tmp_path, [{"path": str(path)}])
    assert np.array_equal(first.train.rows, second.train.rows)
    longer = build(tmp_path, [{"path": str(path)}], seq_len=32)        # seq_len is not part of the key
    assert flat(longer.train.rows) == flat(first.train.rows)[: len(longer.train) * 32]
    write_jsonl(path, random_docs(11, WORDS_A, 50))                    # changed file: must tokenize again
    with pytest.raises(AssertionError, match="the cache missed"):
        build(tmp_path, [{"path": str(path)}])


def build_error(tmp_path, sources, **fields) -> str:
    with pytest.raises(ConfigError) as caught:
        build(tmp_path, sources, **fields)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("t.yaml: data.sources["), message
    return message


def test_non_utf8_text_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert build_error(tmp_path, [{"path": str(bad)}]) == \
        f"t.yaml: data.sources[0].path: not UTF-8 text (byte 28): {bad}"
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"\xff\xfeabc")
    assert "data.sources[0].path: not UTF-8 text (byte 0)" in build_error(tmp_path, [{"path": str(txt)}])


def test_malformed_rows_and_columns_name_file_and_field(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a0"}\n{"text": \n', encoding="utf-8")
    message = build_error(tmp_path, [{"path": str(broken)}])
    assert message.startswith("t.yaml: data.sources[0].path: cannot read as jsonl (") and message.endswith(str(broken))
    other = write_jsonl(tmp_path / "other.jsonl", ["a0 a1"], field="content")
    assert build_error(tmp_path, [{"path": str(other)}]) == \
        f"t.yaml: data.sources[0].text_field: no column 'text' (columns: content) in: {other}"
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"text": 5}\n', encoding="utf-8")
    assert "data.sources[0].text_field: column 'text' holds Value('int64')" in build_error(tmp_path, [{"path": str(numbers)}])
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n", encoding="utf-8")
    message = build_error(tmp_path, [{"path": str(blank)}])
    assert message.startswith("t.yaml: data.sources[0].path: cannot read as jsonl (") and message.endswith(str(blank))


def test_too_little_text_for_a_sequence(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", random_docs(12, WORDS_A, 40))
    tiny = write_jsonl(tmp_path / "tiny.jsonl", ["a0 a1"])
    message = build_error(tmp_path, [{"path": str(a)}, {"path": str(tiny)}])
    assert "data.sources[1].path: too little text for one training sequence of 16 tokens" in message


def test_prepared_token_file_builds_the_same_rows_as_its_text(tmp_path, monkeypatch):
    from actsparse.recipes.data.prepare_cli import main as prepare_main

    texts = random_docs(13, WORDS_B, 40)
    folder = tmp_path / "notes"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i:03d}.md").write_text(text, encoding="utf-8")
    (folder / "latin1.txt").write_bytes(b"caf\xe9")
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    out = tmp_path / "prepared"
    assert prepare_main(["--tokenizer", str(tmp_path / "tok"), "--out", str(out), "--no-stdlib",
                         "--include", f"{folder}=CC-BY-4.0"]) == 0
    manifest = json.loads((out / "SOURCES.json").read_text())
    (source,) = manifest["sources"]
    assert (source["license"], source["documents"], manifest["token_dtype"]) == ("CC-BY-4.0", 40, "uint16")
    assert source["skipped_files"] == [f"{folder / 'latin1.txt'}: not UTF-8 (byte 3)"]
    assert manifest["tokens"] == sum(len(t.split()) for t in texts)
    (folder / "latin1.txt").unlink()
    from_text = build(tmp_path, [{"path": str(folder)}], heldout_fraction=0.25)
    monkeypatch.setitem(sys.modules, "datasets", None)    # a GPU image without datasets reads token files
    from_tokens = build(tmp_path, [{"path": str(out / "corpus.tokens.npz")}], heldout_fraction=0.25)
    assert np.array_equal(from_text.train.rows, from_tokens.train.rows)
    assert np.array_equal(from_text.heldout.rows, from_tokens.heldout.rows)
    other = tiny_tokenizer({**VOCAB, "extra": len(VOCAB)})
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.path: tokenized with another tokenizer"):
        build_datasets(config(tmp_path, [{"path": str(out / "corpus.tokens.npz")}]), other)
    with pytest.raises(ImportError, match="reading text sources needs the datasets package"):
        build(tmp_path, [{"path": str(folder)}])
    fake = tmp_path / "fake.tokens.npz"
    fake.write_bytes(b"not a zip")
    assert "data.sources[0].path: not a tokens file from actsparse prepare-data" in build_error(tmp_path, [{"path": str(fake)}])


def test_prepare_data_respects_the_size_cap(tmp_path):
    from actsparse.recipes.data.prepare_cli import main as prepare_main

    folder = tmp_path / "notes"
    folder.mkdir()
    for i, text in enumerate(random_docs(14, WORDS_A, 30, low=20, high=21)):   # 20 tokens each
        (folder / f"{i:02d}.txt").write_text(text, encoding="utf-8")
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    cap_mib = 250 * 2 / 2**20                                                 # 250 uint16 tokens
    prepare_main(["--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "out"), "--no-stdlib",
                  "--include", str(folder), "--max-mib", str(cap_mib)])
    (source,) = json.loads((tmp_path / "out" / "SOURCES.json").read_text())["sources"]
    assert (source["tokens"], source["details"]["documents_cut_by_size_cap"], source["license"]) == (240, 18, "unknown")
