"""`actsparse export RUN_DIR OUT` on a real (2-step, 1-process) training run of recipes/configs/tiny.yaml."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from actsparse.launch.cli import main as actsparse_main
from actsparse.modeling import load_pretrained

TINY_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    pytest.importorskip("deepspeed")
    out = tmp_path_factory.mktemp("run") / "tiny"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "actsparse.launch.cli", "train", str(TINY_RECIPE), f"output_dir={out}",
           "train.steps=2", "train.checkpoint_every=2"]
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_run_directory_exports_the_trained_model(run_dir, tmp_path):
    from actsparse.recipes.consolidate import load_run_model

    assert actsparse_main(["export", str(run_dir), str(tmp_path / "relu")]) == 0
    assert actsparse_main(["export", str(run_dir), str(tmp_path / "fat"), "--threshold", "0.01"]) == 0
    trained, _ = load_run_model(run_dir)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained(ids).logits
        assert torch.equal(load_pretrained(tmp_path / "relu")(ids).logits, expected)
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "relu")(ids).logits, expected)
        fat = AutoModelForCausalLM.from_pretrained(tmp_path / "fat", trust_remote_code=True)
        assert not torch.equal(fat(ids).logits, expected)
    assert (tmp_path / "relu" / "tokenizer.json").is_file()
    config = json.loads((tmp_path / "fat" / "config.json").read_text())
    assert (config["model_type"], config["hidden_act"], config["hidden_act_param"]) == ("sparsellama", "fatrelu", 0.01)
