"""Cluster profiles: the shipped default loads; bad files fail naming the file and the field."""
import pytest

from actsparse.launch.cluster_profile import DEFAULT_PROFILE_PATH, ProfileError, load_profile


def test_default_profile_documents_every_field_and_loads():
    profile = load_profile()
    assert profile.accelerator == "gpu" and profile.signal_grace_s == 300
    assert profile.env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    text = DEFAULT_PROFILE_PATH.read_text()
    for name in ("accelerator", "setup", "env", "container", "srun_args", "sbatch_directives",
                 "cpus_per_task", "signal_grace_s"):
        assert f"\n{name}:" in text


@pytest.mark.parametrize("body, field", [
    ("acclerator: gpu\n", "acclerator"),
    ("accelerator: tpu\n", "accelerator"),
    ("env: [a, b]\n", "env"),
    ("env: {NCCL_IB_HCA: [mlx5]}\n", "env.NCCL_IB_HCA"),
    ("srun_args: --mpi=none\n", "srun_args"),
    ("cpus_per_task: four\n", "cpus_per_task"),
])
def test_bad_profile_names_file_and_field(tmp_path, body, field):
    path = tmp_path / "cluster.yaml"
    path.write_text(body)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_custom_profile(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("accelerator: cpu\nsetup: module load x\nenv: {OMP_NUM_THREADS: 4}\n"
                    "container: apptainer exec img.sif\nsrun_args: [--mpi=none]\ncpus_per_task: 8\n")
    p = load_profile(path)
    assert (p.accelerator, p.env, p.container, p.srun_args, p.cpus_per_task) == (
        "cpu", {"OMP_NUM_THREADS": "4"}, "apptainer exec img.sif", ["--mpi=none"], 8)


def test_missing_profile_file(tmp_path):
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "nope.yaml")
