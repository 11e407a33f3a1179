"""`actsparse predictors collect -> train -> eval` on a tiny ReLU LLaMA saved with a WordLevel tokenizer."""
import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from actsparse.modeling.predictors import load_predictors
from actsparse.modeling.predictors.cli import main
from actsparse.modeling.predictors.config import ConfigError, load_config
from tiny_models import random_ids, tiny_llama

WORDS = [f"w{i}" for i in range(94)]


def save_tiny_checkpoint(folder):
    tiny_llama(hidden_act="relu").save_pretrained(folder)
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}   # 97 ids
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


def write_text(path, seed, lines=12):
    g = torch.Generator().manual_seed(seed)
    with path.open("w") as f:
        for _ in range(lines):
            f.write(json.dumps({"text": " ".join(WORDS[int(i)] for i in torch.randint(0, 94, (20,), generator=g))}))
            f.write("\n")


def test_collect_train_eval_round_trip(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    save_tiny_checkpoint(ckpt)
    write_text(tmp_path / "calib.jsonl", seed=0)
    torch.save(random_ids(batch=4, seq=16, seed=9), tmp_path / "heldout.pt")
    common = [f"model={ckpt}", "collect.seq_len=16", "collect.batch_size=4", "collect.store_dtype=float32"]
    assert main(["collect", *common, f"collect.data={tmp_path / 'calib.jsonl'}", "collect.flush_tokens=64"]) == 0
    manifest = json.loads((ckpt / "predictor_data" / "manifest.json").read_text())
    assert manifest["tokens"] == 12 * 21 and manifest["activation"] == "relu"
    assert main(["collect", *common, f"collect.data={tmp_path / 'heldout.pt'}",
                 f"collect.out_dir={tmp_path / 'heldout'}"]) == 0
    assert main(["train", *common, "train.rank=8", "train.max_epochs=3", "train.batch_size=64",
                 "train.lr=1e-2"]) == 0
    assert sorted(p.name for p in (ckpt / "predictors").iterdir()) == [
        "config.json", "layer_00.safetensors", "layer_01.safetensors"]
    predictors, pcfg = load_predictors(ckpt / "predictors")
    assert pcfg.rank == 8 and pcfg.input_location == "pre_norm" and len(predictors) == 2
    assert main(["eval", *common, f"eval.data_dir={tmp_path / 'heldout'}",
                 f"eval.ppl_data={tmp_path / 'heldout.pt'}", "eval.rule=threshold", "eval.threshold=0.3",
                 "eval.sweep_thresholds=[0.1, 0.5, 0.9]"]) == 0
    report = json.loads((ckpt / "predictors" / "eval.json").read_text())
    assert len(report["layers"]) == 2 and report["rule"] == "sigmoid>=0.3"
    assert 0 <= report["overall"]["recall"] <= 1 and 0 <= report["overall"]["predicted_sparsity"] <= 1
    sweep = report["sweep"]
    assert [r["rule"] for r in sweep] == ["sigmoid>=0.1", "sigmoid>=0.5", "sigmoid>=0.9"]
    assert sweep[0]["recall"] >= sweep[1]["recall"] >= sweep[2]["recall"]           # lower threshold: more kept
    assert sweep[0]["predicted_sparsity"] <= sweep[1]["predicted_sparsity"] <= sweep[2]["predicted_sparsity"]
    assert report["perplexity"]["exact"] > 1 and report["perplexity"]["predicted"] > 1
    assert report["size"]["reference_fraction"] == pytest.approx((4096 * 8 + 8 * 11008) / (3 * 4096 * 11008))
    out = capsys.readouterr().out
    assert "recall" in out and "held-out perplexity" in out


def test_config_errors_name_file_and_field(tmp_path):
    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text("model: m\ntrain:\n  rank: big\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: train\.rank: expected int"):
        load_config(cfg_file)
    with pytest.raises(ConfigError, match=r"collect\.input_location: 'post' is not one of"):
        load_config(None, ["collect.input_location=post"])
    with pytest.raises(ConfigError, match=r"unknown field"):
        load_config(None, ["train.rnak=3"])
    cfg = load_config(cfg_file, ["train.rank=16", "train.lr=1e-3", "eval.rule=topk"])
    assert cfg.train.rank == 16 and cfg.train.lr == 1e-3 and cfg.eval.rule == "topk"


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["collect", f"model={tmp_path}"]) == 2
    assert "collect.data" in capsys.readouterr().err


def test_shipped_configs_load():
    from importlib.resources import files
    configs = sorted(p for p in files("actsparse.modeling.predictors").joinpath("configs").iterdir()
                     if p.name.endswith(".yaml"))
    assert configs
    for path in configs:
        cfg = load_config(path, ["model=somewhere"])
        assert cfg.train.rank > 0 and cfg.train.device == cfg.device
