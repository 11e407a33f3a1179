"""export_hf -> load: every activation x LLaMA / Mistral / Qwen2 gives identical logits three ways.

(1) the converted in-memory model, (2) `load_pretrained(out)`, (3) plain transformers:
`AutoModelForCausalLM.from_pretrained(out)` for silu / relu / relu2 (no custom code), and with
`trust_remote_code=True` for fatrelu / drelu (the rendered sparse<base> files).
"""
import ast
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from actsparse.modeling import SparsityStats, enable_l1, export_hf, l1_penalty, load_pretrained, sparse_mlps, sparsify
from tiny_models import random_ids, tiny_llama, tiny_mistral, tiny_qwen2

BUILDERS = {"llama": tiny_llama, "mistral": tiny_mistral, "qwen2": tiny_qwen2}
SPARSE_NAMES = {"llama": ("sparsellama", "SparseLlama"), "mistral": ("sparsemistral", "SparseMistral"),
                "qwen2": ("sparseqwen2", "SparseQwen2")}
# Gate pre-activations of the tiny models have std ~0.1: t = 0.05 zeroes a visible share beyond ReLU.
CASES = [("silu", 0.0), ("relu", 0.0), ("relu2", 0.0), ("fatrelu", 0.05), ("drelu", 0.0)]
REMOTE = ("fatrelu", "drelu")


def read_config(folder):
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("activation,threshold", CASES)
def test_round_trip_logits_identical(tmp_path, arch, activation, threshold):
    model = sparsify(BUILDERS[arch](), activation, threshold)
    ids = random_ids()
    with torch.no_grad():
        expected = model(ids).logits
        export_hf(model, tmp_path)
        loaded = load_pretrained(tmp_path)
        plain = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=activation in REMOTE)
        assert torch.equal(loaded(ids).logits, expected)
        assert torch.equal(plain(ids).logits, expected)
    assert [(m.activation, m.threshold) for m in sparse_mlps(loaded)] == [(activation, threshold)] * 2
    config = read_config(tmp_path)
    assert config["hidden_act"] == activation
    assert "actsparse_original_act" not in config
    if activation in REMOTE:
        model_type, prefix = SPARSE_NAMES[arch]
        assert type(plain).__name__ == f"{prefix}ForCausalLM"
        assert config["model_type"] == model_type
    else:
        assert type(plain) is type(model)
        assert "auto_map" not in config and "hidden_act_param" not in config


def test_fatrelu_config_is_prosparse_format(tmp_path):
    export_hf(sparsify(tiny_llama(), "fatrelu", 0.01), tmp_path)
    config = read_config(tmp_path)
    assert config["hidden_act"] == "fatrelu"
    assert config["hidden_act_param"] == 0.01
    assert config["architectures"] == ["SparseLlamaForCausalLM"]
    assert config["model_type"] == "sparsellama"
    assert config["auto_map"] == {"AutoConfig": "configuration_sparsellama.SparseLlamaConfig",
                                  "AutoModelForCausalLM": "modeling_sparsellama.SparseLlamaForCausalLM"}
    assert (tmp_path / "model.safetensors").is_file()


def test_remote_code_imports_only_torch_and_transformers(tmp_path):
    export_hf(sparsify(tiny_qwen2(), "drelu"), tmp_path)
    for name in ("configuration_sparseqwen2.py", "modeling_sparseqwen2.py"):
        tree = ast.parse((tmp_path / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {"." if node.level else node.module.split(".")[0]}
            else:
                continue
            assert roots <= {"torch", "transformers", "."}, (name, roots)


def test_fatrelu_threshold_takes_effect_after_reload(tmp_path):
    """Guards against a loader that silently falls back to ReLU: t = 0.05 must change the logits."""
    ids = random_ids()
    relu = sparsify(tiny_llama(), "relu")
    export_hf(sparsify(tiny_llama(), "fatrelu", 0.05), tmp_path)
    with torch.no_grad():
        remote = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)
        assert not torch.allclose(remote(ids).logits, relu(ids).logits)
        loaded = load_pretrained(tmp_path)
        stats = SparsityStats(loaded)
        loaded(ids)
        stats_relu = SparsityStats(relu)
        relu(ids)
    assert stats.overall() > stats_relu.overall() > 0.3


def test_loaded_model_supports_l1_and_silu_restore(tmp_path):
    """load_pretrained's result is a normal converted model: L1 works, silu gives the base SwiGLU back."""
    base = tiny_mistral()
    ids = random_ids()
    with torch.no_grad():
        silu_logits = base(ids).logits
    export_hf(sparsify(base, "drelu"), tmp_path)
    loaded = load_pretrained(tmp_path)
    enable_l1(loaded)
    loaded.train()
    out = loaded(ids, labels=ids)
    (out.loss + 0.1 * l1_penalty(loaded)).backward()
    assert loaded.model.layers[0].mlp.gate_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(sparsify(loaded.eval(), "silu")(ids).logits, silu_logits)


def test_export_leaves_model_unchanged_and_saves_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {f"w{i}": i for i in range(96)} | {"[UNK]": 96}
    backend = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    model = sparsify(tiny_llama(), "fatrelu", 0.02)
    keys = ("model_type", "hidden_act", "hidden_act_param", "actsparse_original_act")
    config_before = {k: getattr(model.config, k) for k in keys}
    export_hf(model, tmp_path, tokenizer=tokenizer)
    assert {k: getattr(model.config, k) for k in keys} == config_before
    assert type(model).__name__ == "LlamaForCausalLM"
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(tmp_path)("w3 w5")["input_ids"] == [3, 5]


def test_tied_embeddings_round_trip(tmp_path):
    model = sparsify(tiny_llama(tie_word_embeddings=True), "relu")
    ids = random_ids()
    export_hf(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(load_pretrained(tmp_path)(ids).logits, model(ids).logits)
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits, model(ids).logits)
