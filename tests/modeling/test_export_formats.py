"""load_pretrained on folders we did not write: the authors' ProSparse release format, a plain HF folder,
a custom-code (MiniCPM-S style) model, and bad inputs (one-line ValueErrors naming file and field)."""
import copy
import json

import pytest
import torch
from torch import nn

from actsparse.modeling import SparsityStats, load_pretrained, sparse_mlps, sparsify
from checkpoint_folders import write_minicpm_like_folder, write_prosparse_folder
from tiny_models import random_ids, tiny_llama

ROPE = {"rope_type": "default", "rope_theta": 500.0}  # not the default: a loader that drops rope_theta fails


class HandFATReLUMLP(nn.Module):
    """x1 = (g if g >= t else 0) * u, written out; x -> W_down x1 (PAPERS.md (b))."""

    def __init__(self, mlp, threshold):
        super().__init__()
        self.w_gate, self.w_up, self.w_down = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
        self.threshold = threshold

    def forward(self, x):
        g, u = x @ self.w_gate.T, x @ self.w_up.T
        x1 = (g >= self.threshold).to(g.dtype) * g * u
        return x1 @ self.w_down.T


def float64_fatrelu_reference(model, threshold, ids):
    """Logits of `model` in float64 with every FFN replaced by `HandFATReLUMLP` (independent of sparsify)."""
    ref = copy.deepcopy(model).double()
    for layer in ref.model.layers:
        layer.mlp = HandFATReLUMLP(layer.mlp, threshold)
    with torch.no_grad():
        return ref(ids).logits


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_prosparse_release_format_matches_float64_reference(tmp_path, weights):
    model, t = tiny_llama(rope_parameters=ROPE), 0.05
    folder = write_prosparse_folder(model, tmp_path / "prosparse", threshold=t, weights=weights)
    assert not (folder / "modeling_sparsellama.py").exists()   # the authors' code is not needed
    ids = random_ids()
    loaded = load_pretrained(folder, dtype=torch.float32)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert [(m.activation, m.threshold) for m in sparse_mlps(loaded)] == [("fatrelu", t)] * 2
    assert loaded.config.hidden_act == "fatrelu" and loaded.config.hidden_act_param == t
    stats = SparsityStats(loaded)
    with torch.no_grad():
        logits = loaded(ids).logits
    torch.testing.assert_close(logits.double(), float64_fatrelu_reference(model, t, ids), rtol=0, atol=1e-5)
    assert stats.overall() > 0.5


def test_prosparse_format_dtype_bfloat16(tmp_path):
    folder = write_prosparse_folder(tiny_llama(), tmp_path / "p")
    loaded = load_pretrained(folder, dtype="bfloat16")
    assert loaded.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16


def test_plain_hf_folder_is_converted(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path)
    ids = random_ids()
    loaded = load_pretrained(tmp_path)
    assert [m.activation for m in sparse_mlps(loaded)] == ["silu", "silu"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_custom_code_model_with_its_code_is_loaded_then_sparsified(tmp_path):
    model, t = tiny_llama(), 0.05
    folder = write_minicpm_like_folder(model, tmp_path / "minicpm", threshold=t)
    ids = random_ids()
    loaded = load_pretrained(folder)
    assert type(loaded).__name__ == "MiniCPMForCausalLM"
    assert [(m.activation, m.threshold) for m in sparse_mlps(loaded)] == [("fatrelu", t)] * 2
    with torch.no_grad():
        logits = loaded(ids).logits
    torch.testing.assert_close(logits.double(), float64_fatrelu_reference(model, t, ids), rtol=0, atol=1e-5)


def assert_one_line_error(path, *fragments):
    with pytest.raises(ValueError) as info:
        load_pretrained(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_custom_code_missing_is_a_clear_error(tmp_path):
    folder = write_minicpm_like_folder(tiny_llama(), tmp_path / "m", with_code=False)
    assert_one_line_error(folder, "config.json", "auto_map", "modeling_minicpm.py")


def test_missing_config_json(tmp_path):
    assert_one_line_error(tmp_path, str(tmp_path / "config.json"), "not found")


def edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_unknown_hidden_act(tmp_path):
    folder = write_prosparse_folder(tiny_llama(), tmp_path / "p")
    edit_config(folder, hidden_act="gelu_new")
    assert_one_line_error(folder, "config.json", "hidden_act", "gelu_new")


def test_fatrelu_without_threshold(tmp_path):
    folder = write_prosparse_folder(tiny_llama(), tmp_path / "p")
    edit_config(folder, hidden_act_param=None)
    assert_one_line_error(folder, "config.json", "hidden_act_param")


def test_missing_weights(tmp_path):
    folder = write_prosparse_folder(tiny_llama(), tmp_path / "p", weights="none")
    assert_one_line_error(folder, str(folder), "no weights file", "model.safetensors")


def test_weights_with_foreign_key_names(tmp_path):
    model = tiny_llama()
    folder = write_prosparse_folder(model, tmp_path / "p", weights="none")
    from safetensors.torch import save_file
    state = {k.replace("mlp.gate_proj", "mlp.w1"): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert_one_line_error(folder, "lack", "gate_proj", "config.json")


def test_unknown_model_type_without_auto_map(tmp_path):
    folder = write_prosparse_folder(tiny_llama(), tmp_path / "p")
    edit_config(folder, model_type="bamboozle", auto_map=None)
    assert_one_line_error(folder, "config.json", "model_type", "bamboozle")


def test_save_pretrained_of_a_converted_model_loads(tmp_path):
    """`model.save_pretrained` (not export_hf) of a fatrelu model: model_type llama, hidden_act fatrelu."""
    model = sparsify(tiny_llama(), "fatrelu", 0.05)
    model.save_pretrained(tmp_path)
    ids = random_ids()
    loaded = load_pretrained(tmp_path)
    assert [(m.activation, m.threshold) for m in sparse_mlps(loaded)] == [("fatrelu", 0.05)] * 2
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
