"""`actsparse export SRC OUT ...` end to end through the console entry point (actsparse.launch.cli.main)."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from actsparse.launch.cli import main as actsparse_main
from actsparse.modeling import export_hf, load_pretrained, sparse_mlps, sparsify
from checkpoint_folders import write_prosparse_folder
from tiny_models import random_ids, tiny_llama, tiny_qwen2


def read_config(folder):
    return json.loads((folder / "config.json").read_text())


def test_relu_folder_to_fatrelu_prosparse_step3(tmp_path, capsys):
    """ProSparse step 3: a ReLU checkpoint re-exported with FATReLU(t), no training."""
    model = sparsify(tiny_qwen2(), "relu")
    export_hf(model, tmp_path / "relu")
    assert actsparse_main(["export", str(tmp_path / "relu"), str(tmp_path / "fat"), "--threshold", "0.04"]) == 0
    assert "fatrelu" in capsys.readouterr().out
    config = read_config(tmp_path / "fat")
    assert (config["hidden_act"], config["hidden_act_param"], config["model_type"]) == ("fatrelu", 0.04, "sparseqwen2")
    ids = random_ids()
    with torch.no_grad():
        expected = sparsify(model, "fatrelu", 0.04)(ids).logits
        remote = AutoModelForCausalLM.from_pretrained(tmp_path / "fat", trust_remote_code=True)
        assert torch.equal(remote(ids).logits, expected)


def test_prosparse_release_to_relu_bfloat16(tmp_path):
    """The authors' format in, a plain (no custom code) bf16 ReLU folder out."""
    src = write_prosparse_folder(tiny_llama(), tmp_path / "src", threshold=0.01)
    out = tmp_path / "out"
    assert actsparse_main(["export", str(src), str(out), "--activation", "relu", "--dtype", "bfloat16"]) == 0
    config = read_config(out)
    assert (config["hidden_act"], config["model_type"], config["dtype"]) == ("relu", "llama", "bfloat16")
    assert "auto_map" not in config and not list(out.glob("modeling_*.py"))
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert [m.activation for m in sparse_mlps(load_pretrained(out))] == ["relu", "relu"]


def test_run_directory_goes_through_load_run_model(tmp_path, monkeypatch):
    import actsparse.recipes.consolidate as consolidate

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text("model: {}\n")
    trained = sparsify(tiny_llama(), "drelu")
    monkeypatch.setattr(consolidate, "load_run_model", lambda path: (trained, None))
    assert actsparse_main(["export", str(run_dir), str(tmp_path / "out")]) == 0
    assert read_config(tmp_path / "out")["hidden_act"] == "drelu"


@pytest.mark.parametrize("argv,fragment", [
    (["MISSING", "OUT"], "config.json"),
    (["SRC", "OUT", "--activation", "gelu"], "gelu"),
    (["SRC", "OUT", "--dtype", "float7"], "--dtype"),
    (["SRC", "SRC", "--threshold", "0.1"], "source folder"),
])
def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys, argv, fragment):
    write_prosparse_folder(tiny_llama(), tmp_path / "SRC")
    argv = [str(tmp_path / a) if a in ("SRC", "OUT", "MISSING") else a for a in argv]
    assert actsparse_main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("actsparse export:") and "\n" not in err and fragment in err, err


def test_error_after_loading_is_one_line_too(tmp_path, capsys):
    src = write_prosparse_folder(tiny_llama(), tmp_path / "SRC", weights="none")
    assert actsparse_main(["export", str(src), str(tmp_path / "OUT")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"actsparse export: {src}: no weights file (looked for model.safetensors, " \
                  "model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json)"


def test_usage_error_exit_code(capsys):
    assert actsparse_main(["export"]) == 2
    assert "usage" in capsys.readouterr().err
