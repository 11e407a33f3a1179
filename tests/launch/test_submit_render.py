"""`actsparse submit` / `submit-eval` rendering (--dry-run): directives, run directory, syntax, and the
eval array's per-index command (run with stand-ins for srun and actsparse)."""
import os
import subprocess
from pathlib import Path

import pytest

from actsparse.launch import submit, submit_eval


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("output_dir: runs/exp1\nmodel: {tiny: {hidden_size: 8}, tokenizer: bytes}\n")
    return path


@pytest.fixture
def cpu_profile(tmp_path):
    path = tmp_path / "cpu.yaml"
    path.write_text("accelerator: cpu\nenv: {DS_ACCELERATOR: cpu}\nsignal_grace_s: 30\n")
    return path


def dry_run(capsys, module, argv) -> str:
    assert module.main([*argv, "--dry-run"]) == 0
    return capsys.readouterr().out


def sbatch_flags(script: str) -> list[str]:
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def assert_bash_syntax(script: str, tmp_path: Path) -> None:
    path = tmp_path / "check.sbatch"
    path.write_text(script)
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_submit_directives_and_command(capsys, config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = dry_run(capsys, submit, [str(config), "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
                                      "--account", "proj", "--time", "24:00:00", "--qos", "high",
                                      "--job-name", "prosparse", "--signal-grace", "600", "train.steps=10"])
    run_dir = tmp_path / "runs" / "exp1"
    assert sbatch_flags(script) == [
        "--job-name=prosparse", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu",
        "--account=proj", "--time=24:00:00", "--qos=high", f"--output={run_dir}/slurm-%j.out",
        "--open-mode=append", "--signal=B:USR1@600", "--requeue"]
    assert f"actsparse train {config} train.steps=10 output_dir={run_dir} &" in script
    assert "export NPROC_PER_NODE=8" in script and "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in script
    assert 'scancel --signal=USR1 "$SLURM_JOB_ID"' in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert not run_dir.exists()          # --dry-run writes nothing
    assert_bash_syntax(script, tmp_path)


def test_cpu_profile_requests_cores_not_gpus_and_override_sets_run_dir(capsys, config, cpu_profile, tmp_path):
    script = dry_run(capsys, submit, [str(config), "--gpus-per-node", "2", "--profile", str(cpu_profile),
                                      f"output_dir={tmp_path}/other"])
    flags = sbatch_flags(script)
    assert "--cpus-per-task=2" in flags and not any(f.startswith("--gpus") for f in flags)
    assert "--signal=B:USR1@30" in flags and f"--output={tmp_path}/other/slurm-%j.out" in flags
    assert "export DS_ACCELERATOR=cpu" in script
    assert script.count("output_dir=") == 1   # the pinned absolute one only


def test_shipped_config_name_resolves(capsys):
    script = dry_run(capsys, submit, ["tiny", "--nodes", "1"])
    assert "recipes/configs/tiny.yaml" in script and "/runs/tiny/slurm-%j.out" in script


def test_missing_run_dir_is_an_error_naming_the_field(capsys, tmp_path):
    path = tmp_path / "no_dir.yaml"
    path.write_text("model: {}\n")
    assert submit.main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "output_dir" in err


def test_unknown_config(capsys):
    assert submit.main(["no_such_recipe", "--dry-run"]) == 2
    assert "no_such_recipe" in capsys.readouterr().err


def test_submit_writes_script_and_parses_job_id(config, tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/args\"\necho '4242;cluster'\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert submit.main([str(config), f"output_dir={tmp_path}/run", "--parsable"]) == 0
    assert capsys.readouterr().out.strip() == "4242"
    assert (bin_dir / "args").read_text().split() == ["--parsable", f"{tmp_path}/run/submit.sbatch"]
    assert (tmp_path / "run" / "submit.sbatch").read_text().startswith("#!/bin/bash")


def test_eval_array_script(capsys, tmp_path):
    ckpts = [tmp_path / "runs" / name / "export" for name in ("dense", "prosparse")]
    for c in ckpts:
        c.mkdir(parents=True)
    out_dir = tmp_path / "results"
    script = dry_run(capsys, submit_eval, [*map(str, ckpts), "some-org/hub-model", "--tasks", "commonsense,reading",
                                           "--dependency", "afterok:77", "--out-dir", str(out_dir),
                                           "--max-parallel", "2", "quality.limit=5"])
    flags = sbatch_flags(script)
    assert "--array=0-2%2" in flags and "--dependency=afterok:77" in flags
    assert f"--output={out_dir}/slurm-%A_%a.out" in flags
    assert_bash_syntax(script, tmp_path)

    # Run array index 1 with srun and actsparse replaced by recorders: it must evaluate checkpoint 1.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == -* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "actsparse").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$RECORD"\n')
    for tool in ("srun", "actsparse"):
        (bin_dir / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_ARRAY_TASK_ID="1",
               SLURM_ARRAY_JOB_ID="9", RECORD=str(tmp_path / "argv"))
    (tmp_path / "eval.sbatch").write_text(script)
    subprocess.run(["bash", str(tmp_path / "eval.sbatch")], env=env, check=True, capture_output=True)
    assert (tmp_path / "argv").read_text().splitlines() == [
        "eval", str(ckpts[1]), "--name", "prosparse-export", "--out", f"{out_dir}/prosparse-export.json",
        "quality.task_groups=[commonsense,reading]", "quality.limit=5"]


@pytest.mark.parametrize("argv, message", [
    (["m", "--tasks", "a;rm -rf /"], "--tasks"),
    (["m", "--tasks", "a", "--dependency", "whenever"], "--dependency"),
])
def test_eval_rejects_bad_arguments(capsys, argv, message):
    assert submit_eval.main([*argv, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_eval_names_stay_unique():
    names = submit_eval.unique_names([Path("a/run/export"), Path("b/run/export")])
    assert names == ["run-export-0", "run-export-1"]
