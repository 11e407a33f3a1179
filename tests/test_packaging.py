"""Install layout: one `actsparse` namespace; no top-level `kernels` / `eval` package anywhere on sys.path."""
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_subpackages_import_from_the_namespace():
    for name in ("modeling", "kernels", "eval", "launch", "recipes"):
        spec = importlib.util.find_spec(f"actsparse.{name}")
        assert spec is not None, name


def test_no_top_level_kernels_or_eval_from_this_repo():
    for name in ("kernels", "eval", "modeling", "recipes", "launch"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            assert not Path(spec.origin).resolve().is_relative_to(REPO), f"top-level {name} resolves into the repo"


def test_cli_help_lists_commands():
    out = subprocess.run(["actsparse", "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: actsparse" in out and "commands:" in out


@pytest.mark.slow
def test_wheel_contains_only_the_namespace(tmp_path):
    """`pip install .` builds this wheel: every module lives under actsparse/, none at top level."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("actsparse-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if not n.startswith("actsparse-") ]
    assert code and all(n.startswith("actsparse/") for n in code), [n for n in code if not n.startswith("actsparse/")]
    assert "actsparse/modeling/sparsify.py" in names and "actsparse/kernels/__init__.py" in names
    assert not any(n == "actsparse/__init__.py" for n in names)   # PEP 420 namespace
