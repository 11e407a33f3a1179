"""Every kernel compiles for sm_90 (no GPU needed) with 16-byte global loads of the weights and no spills."""
import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # seven real compilations, ~10 s on a loaded machine


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_quick_compile_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "actsparse.kernels.compile_report", "--quick"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [l for l in res.stdout.splitlines() if l.startswith("kernel=")]
    assert len(lines) == 7 and not any("FAILED" in l for l in lines), res.stdout
    for line in lines:
        assert " local 0 " in line, line  # no local-memory spills
        if not line.startswith("kernel=compact_kernel"):
            assert " ld.v4 0 " not in line and " ld.b16 0" in line, line  # weights read 16 bytes at a time
