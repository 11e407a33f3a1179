"""`actsparse eval` end to end on a tiny random LLaMA saved to a temp folder with a tiny tokenizer.

The local YAML tasks in data/ stand in for lm-eval's; the Hub and datasets are offline. Sparsity and
dense perplexity in the results JSON are checked against counts and a float64 NLL computed here.
"""
import json
import math
import os

import pytest
import torch
import yaml

pytest.importorskip("lm_eval")

from actsparse.eval.cli import main  # noqa: E402
from actsparse.eval.eval_config import load_eval_config  # noqa: E402
from actsparse.eval.eval_data import calibration_batches  # noqa: E402
from actsparse.modeling import load_pretrained  # noqa: E402
from task_tokenizer import task_words_tokenizer  # noqa: E402
from tiny_models import tiny_llama  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@pytest.fixture(autouse=True, scope="module")
def fast_cpu():
    """One torch thread: on the shared 2-core test machine two threads contend (8 ms -> 200 ms a forward)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_env_report(monkeypatch):
    """lm-eval's per-call environment report runs `collect_env` subprocesses (~2 s); tests do not read it."""
    import lm_eval.evaluator
    monkeypatch.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)


tiny_tokenizer = task_words_tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama")
    tok = tiny_tokenizer()
    model = tiny_llama(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import datasets.config
    import huggingface_hub.constants
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def write_config(tmp_path, checkpoint, **changes):
    cfg = {
        "model": checkpoint, "name": "tiny-relu", "device": "cpu",
        "activation": {"override": "relu"},
        "data": {"source": "jsonl", "path": os.path.join(DATA, "tiny_ppl.jsonl"), "seq_len": 8,
                 "batch_size": 2, "num_batches": 2},
        "quality": {"task_groups": ["tiny", "tiny_ppl"], "task_groups_file": os.path.join(DATA, "task_groups.yaml"),
                    "include_path": [DATA], "batch_size": 4},
        "output": str(tmp_path / "results" / "tiny.json"),
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        (cfg[section].__setitem__(field, value) if field else cfg.__setitem__(section, value))
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def reference_zero_fraction_and_ppl(config_path):
    """Per-layer share of exact zeros in x1 and exp(mean next-token NLL), float64, computed by hand."""
    cfg = load_eval_config(config_path)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(cfg.model)
    batches, _ = calibration_batches(cfg.data, tok, add_bos=True)
    model = load_pretrained(cfg.model).double()
    for layer in model.model.layers:   # ReLU on the gate, as activation.override: relu asks
        layer.mlp.act_fn = torch.nn.ReLU()
    zeros, entries = [0, 0], [0, 0]

    def count(i):
        def hook(module, args):
            zeros[i] += int((args[0] == 0).sum())
            entries[i] += args[0].numel()
        return hook
    handles = [layer.mlp.down_proj.register_forward_pre_hook(count(i)) for i, layer in enumerate(model.model.layers)]
    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in batches:
            logp = torch.log_softmax(model(ids).logits[:, :-1], -1)
            nll -= float(logp.gather(2, ids[:, 1:].unsqueeze(2)).sum())
            count += ids[:, 1:].numel()
    for h in handles:
        h.remove()
    per_layer = [z / e for z, e in zip(zeros, entries)]
    return per_layer, math.exp(nll / count), batches


def test_eval_writes_results_json_matching_references(tmp_path, checkpoint, capsys):
    config_path = write_config(tmp_path, checkpoint)
    assert main([config_path, "--quiet"]) == 0
    results = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert results["schema"] == "actsparse-eval-results/1" and results["name"] == "tiny-relu"
    assert results["model"]["hidden_act"] == "relu" and results["model"]["num_layers"] == 2
    assert results["config"]["source"] == config_path and results["provenance"]["torch"] == torch.__version__
    per_layer, ppl, batches = reference_zero_fraction_and_ppl(config_path)
    assert all(int(b[0, 0]) == 1 for b in batches)          # calibration windows start with BOS
    zero = results["sparsity"]["zero_fraction"]
    assert zero["per_layer"] == pytest.approx(per_layer, abs=1e-9)
    assert zero["sparsity"] == pytest.approx(sum(per_layer) / 2, abs=1e-9)
    assert results["perplexity"]["dense"] == pytest.approx(ppl, rel=1e-4)
    cett, ppl_p = results["sparsity"]["cett"], results["sparsity"]["ppl_p"]
    assert cett["cett"] == 0.2 and len(cett["thresholds"]) == 2 and cett["sparsity"] >= zero["sparsity"] - 1e-9
    assert ppl_p["ppl_ratio"] <= 1.01 + 1e-9 and len(ppl_p["per_layer"]) == 2
    assert results["perplexity"]["ppl_p"] == pytest.approx(ppl * ppl_p["ppl_ratio"], rel=1e-3)
    quality = results["quality"]
    assert set(quality["tasks"]) == {"actsparse_tiny_mc:0shot", "actsparse_tiny_mc:2shot", "actsparse_tiny_ppl:0shot"}
    mc = [quality["tasks"][k]["score"] for k in ("actsparse_tiny_mc:0shot", "actsparse_tiny_mc:2shot")]
    assert quality["groups"]["tiny_mc"]["score"] == pytest.approx(sum(mc) / 2)
    assert quality["suites"]["tiny"]["average"] == pytest.approx(quality["groups"]["tiny_mc"]["score"])
    assert quality["add_bos_token"] is True and results["throughput"] is None
    assert results["wall_time_s"]["total"] > 0 and "quality" in results["wall_time_s"]


def test_kernel_bench_fills_throughput_and_flags_override_config(tmp_path, checkpoint):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"tokens_per_s": {"dense": 100.0, "sparse": 180.0}}))
    out = tmp_path / "r.json"
    config_path = write_config(tmp_path, checkpoint, metrics=["zero_fraction"])
    assert main([config_path, "--quiet", "--kernel-bench", str(bench), "--out", str(out), "--name", "k"]) == 0
    results = json.loads(out.read_text())
    assert results["name"] == "k" and results["quality"] is None and results["sparsity"]["cett"] is None
    assert results["throughput"]["bench"] == {"tokens_per_s": {"dense": 100.0, "sparse": 180.0}}


def test_checkpoint_folder_with_overrides(tmp_path, checkpoint):
    out = tmp_path / "c.json"
    assert main([checkpoint, "--quiet", f"output={out}", "metrics=[quality]", "device=cpu",
                 f"quality.task_groups_file={DATA}/task_groups.yaml", f"quality.include_path=[{DATA}]",
                 "quality.task_groups=[tiny_ppl]", "quality.thresholds=none", "quality.limit=2"]) == 0
    results = json.loads(out.read_text())
    assert results["quality"]["tasks"]["actsparse_tiny_ppl:0shot"]["samples"] == 2
    assert results["model"]["hidden_act"] == "silu"


def test_missing_task_data_is_one_line(tmp_path, checkpoint, capsys):
    groups = tmp_path / "groups.yaml"
    groups.write_text(yaml.safe_dump({"groups": {"gone": {"tasks": [
        {"task": "actsparse_tiny_missing", "num_fewshot": 0, "metric": "acc,none"}]}}}))
    config_path = write_config(tmp_path, checkpoint, metrics=["quality"],
                               quality__task_groups=["gone"], quality__task_groups_file=str(groups))
    assert main([config_path, "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("actsparse eval:")]
    assert len(err) == 1 and "actsparse_tiny_missing" in err[0] and "no-such-dataset" in err[0]
    assert "Traceback" not in err[0]


def test_config_errors_name_file_and_field(tmp_path, checkpoint, capsys):
    config_path = write_config(tmp_path, checkpoint, quality__thresholds="sometimes")
    assert main([config_path, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert config_path in err and "quality.thresholds" in err
    assert main([config_path, "--quiet", "data.seq_len=many"]) == 2
    assert "data.seq_len" in capsys.readouterr().err


SHIPPED_CONFIGS = os.path.normpath(os.path.join(DATA, "..", "..", "..", "eval", "configs"))


@pytest.mark.parametrize("name", sorted(os.listdir(SHIPPED_CONFIGS)))
def test_shipped_eval_configs_load(name):
    path = os.path.join(SHIPPED_CONFIGS, name)
    cfg = load_eval_config(path, ["device=cpu"])
    assert cfg.model and cfg.output_path.endswith(".json") and cfg.source == path


def test_calibration_windows_follow_the_token_stream(tmp_path):
    from actsparse.eval.eval_config import DataConfig
    tok = tiny_tokenizer()
    text = tmp_path / "heldout.txt"
    text.write_text("the cat sat on the mat\n\nbirds can fly and fish live in the sea\n\nwe drink tea\n")
    cfg = DataConfig(source="txt", path=str(text), seq_len=5, batch_size=2, num_batches=2, skip_tokens=1)
    batches, info = calibration_batches(cfg, tok, add_bos=True)
    stream = []
    for doc in ("the cat sat on the mat", "birds can fly and fish live in the sea", "we drink tea"):
        stream += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stream = stream[1:]
    expected = [[tok.bos_token_id] + stream[i * 4:(i + 1) * 4] for i in range(4)]
    assert torch.cat(batches).tolist() == expected
    assert info["documents"] == 3 and info["tokens"] == 20 and info["name"] == f"txt:{text}"
    with pytest.raises(ValueError, match="need num_batches"):
        calibration_batches(DataConfig(source="txt", path=str(text), seq_len=5, batch_size=4, num_batches=3), tok, True)


def test_yaml_data_source_is_read_not_the_stdlib_default(tmp_path):
    """A config's `data.source: txt` must reach the loader (a section's `source` is a field, not the
    config-file name the top level keeps in its own `source`): once it was dropped and stdlib used."""
    text = tmp_path / "heldout.txt"
    text.write_text("some held-out text\n")
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"model": str(tmp_path), "data": {"source": "txt", "path": str(text)}}))
    cfg = load_eval_config(str(config))
    assert (cfg.data.source, cfg.data.path, cfg.source) == ("txt", str(text), str(config))
    with pytest.raises(Exception, match="data.source"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({"model": str(tmp_path), "data": {"source": "parquet-ish", "path": str(text)}}))
        load_eval_config(str(bad))
