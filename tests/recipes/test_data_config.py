"""DataConfig.from_dict: typed fields, defaults, and one-line errors naming the file and the field."""
import os
from pathlib import Path

import pytest

from actsparse.recipes.data import ConfigError, DataConfig, SourceConfig
from actsparse.recipes.errors import ConfigError as SharedConfigError

WHERE = "recipes/configs/x.yaml:data"


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "hello"}\n', encoding="utf-8")
    return path


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as caught:
        DataConfig.from_dict(raw, where=WHERE)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("recipes/configs/x.yaml: data"), message
    return message


def test_loads_typed_fields_and_infers_format(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("ACTSPARSE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# b", encoding="utf-8")
    (tmp_path / "docs" / "c.rst").write_text("c", encoding="utf-8")
    cfg = DataConfig.from_dict({"sources": [{"path": str(corpus), "weight": 3},
                                            {"path": str(tmp_path / "docs")}, {"name": "stdlib_docs"}],
                                "seq_len": 256, "seed": 7, "max_tokens": 4096}, where=WHERE)
    assert cfg.sources[0] == SourceConfig(path=str(corpus), weight=3.0, format="jsonl")
    assert cfg.sources[1].format == "txt" and [p.name for p in cfg.sources[1].files()] == ["b.md", "c.rst"]
    (tmp_path / "docs" / "d.jsonl").write_text('{"text": "d"}', encoding="utf-8")
    mixed = {"sources": [{"path": str(tmp_path / "docs")}]}
    assert "data.sources[0].format: cannot infer one format from the file suffixes (.jsonl, .md, .rst)" in error_of(mixed)
    only_txt = DataConfig.from_dict({"sources": [{"path": str(tmp_path / "docs"), "format": "txt"}]}, where=WHERE)
    assert [p.name for p in only_txt.sources[0].files()] == ["b.md", "c.rst"]
    assert cfg.sources[2].name == "stdlib_docs" and cfg.sources[2].format is None
    assert (cfg.seq_len, cfg.seed, cfg.max_tokens, cfg.heldout_fraction, cfg.heldout_sequences) == (256, 7, 4096, 0.01, None)
    assert "where" not in cfg.to_dict() and cfg.to_dict()["sources"][0]["weight"] == 3.0
    assert cfg.cache_dir is None and cfg.cache_path() == Path(os.environ["ACTSPARSE_CACHE"]) / "data"
    assert ConfigError is SharedConfigError and issubclass(ConfigError, ValueError)


def test_bare_file_name_means_the_data_section(tmp_path):
    with pytest.raises(ConfigError, match=r"^x\.yaml: data\.sources\[0\]\.path: file not found: "):
        DataConfig.from_dict({"sources": [{"path": str(tmp_path / "missing.jsonl")}]}, where="x.yaml")


def test_missing_file(tmp_path):
    missing = tmp_path / "b.jsonl"
    assert error_of({"sources": [{"path": str(missing)}]}) == \
        f"recipes/configs/x.yaml: data.sources[0].path: file not found: {missing}"


def test_empty_file(corpus, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    message = error_of({"sources": [{"path": str(corpus)}, {"path": str(empty)}]})
    assert message == f"recipes/configs/x.yaml: data.sources[1].path: file is empty: {empty}"


def test_folder_without_data_files(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "image.png").write_bytes(b"\x89PNG")
    assert "data.sources[0].path: no data files match:" in error_of({"sources": [{"path": str(tmp_path / "data")}]})


def test_unknown_and_mistyped_fields(corpus):
    assert "data.seq_length: unknown field; known: cache_dir, heldout_fraction" in \
        error_of({"sources": [{"path": str(corpus)}], "seq_length": 8})
    assert "data.sources[0].weigth: unknown field; known: format, name, path, text_field, weight" in \
        error_of({"sources": [{"path": str(corpus), "weigth": 2}]})
    assert "data.seq_len: expected int, got '256'" in error_of({"sources": [{"path": str(corpus)}], "seq_len": "256"})
    assert "data.seed: expected int, got True" in error_of({"sources": [{"path": str(corpus)}], "seed": True})
    assert "data.seq_len: expected int, got None" in error_of({"sources": [{"path": str(corpus)}], "seq_len": None})
    assert "data.sources[0].weight: expected float, got None" in error_of({"sources": [{"path": str(corpus), "weight": None}]})
    assert "data.sources[0].weight: expected float, got 'high'" in \
        error_of({"sources": [{"path": str(corpus), "weight": "high"}]})


def test_invalid_values(corpus):
    one = [{"path": str(corpus)}]
    assert "data.sources: required field missing" in error_of({"seq_len": 8})
    assert "data.sources: expected a non-empty list" in error_of({"sources": []})
    assert "data.sources[0]: set exactly one of path" in error_of({"sources": [{"path": str(corpus), "name": "stdlib_docs"}]})
    assert "data.sources[0]: set exactly one of path" in error_of({"sources": [{"weight": 1}]})
    assert "data.sources[0].name: unknown built-in source 'wiki'" in error_of({"sources": [{"name": "wiki"}]})
    assert "data.sources[0].weight: must be > 0, got 0" in error_of({"sources": [{"path": str(corpus), "weight": 0}]})
    assert "data.sources[0].format: expected one of jsonl, parquet, txt, tokens, got 'csv'" in \
        error_of({"sources": [{"path": str(corpus), "format": "csv"}]})
    assert "data.heldout_sequences: set heldout_fraction or heldout_sequences, not both" in \
        error_of({"sources": one, "heldout_fraction": 0.1, "heldout_sequences": 4})
    assert "data.heldout_fraction: must be in [0, 1), got 1.0" in error_of({"sources": one, "heldout_fraction": 1})
    assert "data.seq_len: must be >= 2, got 1" in error_of({"sources": one, "seq_len": 1})
    assert "data.max_tokens: must be >= seq_len (64), got 10" in error_of({"sources": one, "seq_len": 64, "max_tokens": 10})
    assert "data: expected a mapping" in error_of(["sources"])


def test_format_not_inferable(tmp_path):
    odd = tmp_path / "corpus.csv"
    odd.write_text("a,b\n", encoding="utf-8")
    message = error_of({"sources": [{"path": str(odd)}]})
    assert "data.sources[0].format: cannot infer one format from the file suffixes (.csv)" in message
    assert DataConfig.from_dict({"sources": [{"path": str(odd), "format": "txt"}]}, where=WHERE).sources[0].format == "txt"
