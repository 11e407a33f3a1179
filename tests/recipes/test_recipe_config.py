"""Recipe configs: every shipped YAML loads and validates; overrides; each bad input's one-line error.

Bad inputs go through the real command (`actsparse.launch.cli.main(["train", ...])`): exit code != 0,
one line on stderr naming the file and the field, and a completed checkpoint already in the run
directory is left exactly as it was.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from actsparse.launch.cli import main as actsparse_main
from actsparse.recipes.config import SHIPPED_CONFIGS_DIR, load_recipe
from actsparse.recipes.errors import ConfigError

SHIPPED = sorted(SHIPPED_CONFIGS_DIR.glob("*.yaml"))
EXPECTED = {"prosparse_llama2_7b", "prosparse_llama2_13b", "prosparse_minicpm_1b", "prosparse_minicpm_1b_sft",
            "turbosparse_mistral_7b", "relu_baseline_llama2_7b", "smollm2_135m_silu", "smollm2_135m_relu",
            "smollm2_135m_prosparse", "smollm2_135m_drelu", "tiny", "demo_smollm2_135m_cpu"}


def make_standin_data(config_path: Path, root: Path) -> None:
    """Create a small file for each local data path the config names (the corpora live on clusters)."""
    raw = yaml.safe_load(config_path.read_text())
    for source in raw["data"]["sources"]:
        if "path" in source:
            path = root / source["path"].replace("**/", "").replace("*", "standin")
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq
                pq.write_table(pa.table({"text": ["a stand-in document"]}), path)
            elif path.name.endswith(".tokens.npz"):
                path.write_bytes(b"stand-in")   # only existence and size are checked on load
            else:
                path.write_text('{"text": "a stand-in document"}\n')


def test_all_expected_configs_ship():
    assert {p.stem for p in SHIPPED} == EXPECTED


@pytest.mark.parametrize("config_path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_validates(config_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_standin_data(config_path, tmp_path)
    cfg = load_recipe(config_path)
    assert cfg.train.steps >= 1 and cfg.optim.lr > 0
    schedule = cfg.l1.build()
    if cfg.l1.schedule == "progressive":
        assert schedule.total_steps <= cfg.train.steps     # the run covers the whole schedule
    assert (schedule is None) == (cfg.l1.schedule == "none")
    assert cfg.to_dict()["train"]["zero_stage"] == cfg.train.zero_stage


def test_paper_values_in_the_7b_config():
    raw = yaml.safe_load((SHIPPED_CONFIGS_DIR / "prosparse_llama2_7b.yaml").read_text())
    assert raw["l1"]["stages"] == [[0.0, 5000], [5e-3, 6000], [5e-2, 10000], [5e-2, 12000], [0.2, 16000], [0.2, 16500]]
    assert raw["optim"]["lr"] == 3e-5 and raw["data"]["seq_len"] == 4096
    assert raw["train"]["micro_batch_size"] * raw["train"]["grad_accum"] * 8 == 512


def test_overrides_are_parsed_as_yaml():
    cfg = load_recipe("tiny", ["train.steps=7", "optim.betas=[0.8, 0.9]", "optim.lr=1e-3", "l1.schedule=none",
                               "model.tiny.hidden_size=32", "train.deepspeed_json=null", "output_dir=x/y"])
    assert cfg.train.steps == 7 and cfg.optim.betas == [0.8, 0.9] and cfg.optim.lr == 1e-3
    assert cfg.l1.build() is None and cfg.model.tiny["hidden_size"] == 32 and cfg.output_dir == "x/y"
    assert cfg.model.tiny["num_hidden_layers"] == 2          # the rest of the mapping is kept


def test_yaml_1_1_exponents_without_a_dot_are_floats(tmp_path):
    text = (SHIPPED_CONFIGS_DIR / "tiny.yaml").read_text().replace("lr: 3.0e-3", "lr: 3e-3")
    path = tmp_path / "t.yaml"
    path.write_text(text)
    assert load_recipe(path).optim.lr == 3e-3


@pytest.mark.parametrize("override, field", [
    ("train.stepz=3", "train.stepz"), ("train.steps=abc", "train.steps"), ("train.steps=2.5", "train.steps"),
    ("optim.lr_schedule=linear", "optim.lr_schedule"), ("l1.stages=[[0.1, 5], [0.0, 9]]", "l1.stages"),
    ("model.activation=gelu", "model.activation"), ("bogus.x=1", "bogus"), ("train.micro_batch_size=0", "train.micro_batch_size"),
])
def test_bad_overrides_name_the_field(override, field):
    with pytest.raises(ConfigError, match=f"tiny.yaml: {field.replace('[', '.').replace(']', '.')}"):
        load_recipe("tiny", [override])


# ------------------------------------------------------------------ bad input through `actsparse train`
@pytest.fixture
def completed_run(tmp_path):
    """A run directory holding a completed checkpoint (what a bad restart must not touch)."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "global_step4"
    ckpt.mkdir(parents=True)
    (ckpt / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    (run / "checkpoints" / "latest").write_text("global_step4")
    (run / "metrics.jsonl").write_text('{"step": 4}\n')
    return run


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_config(tmp_path: Path, run: Path, data_lines: str | None = None, replace=()) -> Path:
    text = (SHIPPED_CONFIGS_DIR / "tiny.yaml").read_text().replace("output_dir: runs/tiny", f"output_dir: {run}")
    if data_lines is not None:
        start, end = text.index("data:"), text.index("l1:")
        text = text[:start] + data_lines + "\n" + text[end:]
    for old, new in replace:
        text = text.replace(old, new)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def run_bad(argv, capsys, completed_run, *expected):
    before = snapshot(completed_run)
    code = actsparse_main(["train", *argv])
    err = capsys.readouterr().err.strip()
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("actsparse train:")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    assert snapshot(completed_run) == before
    return lines[0]


def test_malformed_yaml(tmp_path, capsys, completed_run):
    path = write_config(tmp_path, completed_run, replace=[("  steps: 30", "  steps: [30")])
    run_bad([str(path)], capsys, completed_run, str(path), "malformed YAML", "line")


def test_unknown_field_in_file(tmp_path, capsys, completed_run):
    path = write_config(tmp_path, completed_run, replace=[("  steps: 30", "  stepz: 30")])
    run_bad([str(path)], capsys, completed_run, str(path), "train.stepz", "unknown field")


def test_mistyped_field_in_file_and_override(tmp_path, capsys, completed_run):
    path = write_config(tmp_path, completed_run, replace=[("  grad_accum: 2", "  grad_accum: two")])
    run_bad([str(path)], capsys, completed_run, str(path), "train.grad_accum", "expected int")
    run_bad(["tiny", f"output_dir={completed_run}", "optim.lr=fast"], capsys, completed_run, "tiny.yaml", "optim.lr")


def test_missing_data_file(tmp_path, capsys, completed_run):
    data = f"data:\n  sources:\n    - {{path: {tmp_path / 'nope.jsonl'}}}\n  seq_len: 64\n"
    path = write_config(tmp_path, completed_run, data)
    run_bad([str(path)], capsys, completed_run, str(path), "data.sources[0].path", "not found")


def test_empty_data_file(tmp_path, capsys, completed_run):
    (tmp_path / "empty.txt").write_text("")
    data = f"data:\n  sources:\n    - {{path: {tmp_path / 'empty.txt'}}}\n  seq_len: 64\n"
    path = write_config(tmp_path, completed_run, data)
    run_bad([str(path)], capsys, completed_run, str(path), "data.sources[0].path", "empty")


def test_non_utf8_text(tmp_path, capsys, completed_run, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me, a document in Latin-1\n".encode("latin-1") * 50)
    data = (f"data:\n  sources:\n    - {{path: {tmp_path / 'latin1.txt'}}}\n  seq_len: 16\n"
            f"  heldout_sequences: 1\n  cache_dir: {tmp_path / 'cache'}\n")
    path = write_config(tmp_path, completed_run, data)
    run_bad([str(path)], capsys, completed_run, "latin1.txt", "UTF-8")


def test_missing_config_file(tmp_path, capsys, completed_run):
    run_bad([str(tmp_path / "none.yaml")], capsys, completed_run, "none.yaml", "not found")
