"""Every kernel compiles for sm_90 (no GPU needed) with 16-byte global loads of the weights and no spills."""
import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # eight real compilations, ~10 s on a loaded machine


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_quick_compile_report(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "actsparse.kernels.compile_report", "--quick"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [l for l in res.stdout.splitlines() if l.startswith("kernel=")]
    assert len(lines) == 9 and not any("FAILED" in l for l in lines), res.stdout
    for line in lines:
        assert " local 0 " in line, line  # no local-memory spills
        if not line.startswith("kernel=compact_kernel"):
            assert " ld.v4 0 " not in line and " ld.b16 0" in line, line  # weights read 16 bytes at a time
        assert line.endswith(" griddepcontrol 0"), line   # USE_GDC off: no PDL instructions


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_pdl_variants_wait_and_trigger(tmp_path):
    """USE_GDC (pdl.py) adds exactly griddepcontrol.wait and .launch_dependents and changes nothing else."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "actsparse.kernels.compile_report", "--kernels", "compact_kernel"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {}
    for line in res.stdout.splitlines():
        if line.startswith("kernel="):
            head, tail = line.split(" | ")
            rows[head] = tail
    on = {h: t for h, t in rows.items() if "USE_GDC=True" in h}
    assert on and all(t.endswith(" griddepcontrol 2") for t in on.values()), on
    for head, tail in on.items():
        off = rows[head.replace("USE_GDC=True", "USE_GDC=False")]
        assert tail.rsplit(" griddepcontrol", 1)[0] == off.rsplit(" griddepcontrol", 1)[0]


def test_autotune_pruning_keeps_wide_down_blocks_for_batch_one_only():
    """The batch-1 down configs with BLOCK_D > 256 would overflow shared memory with token tiles (compile_report:
    256 KB at BLOCK_T=64); tl.dot also needs neuron blocks >= 16."""
    from actsparse.kernels import configs
    wide = [c for c in configs.DOWN_CONFIGS if c.kwargs["BLOCK_D"] > 256]
    assert wide
    assert configs._prune_for_tokens(configs.DOWN_CONFIGS, {}, BLOCK_T=1) == configs.DOWN_CONFIGS
    for block_t in (16, 64):
        kept = configs._prune_for_tokens(configs.DOWN_CONFIGS, {}, BLOCK_T=block_t)
        assert kept and not any(c in kept for c in wide)
        assert all(c.kwargs["BLOCK_J"] >= 16 for c in kept)
    assert max(c.kwargs["SPLITS"] for c in wide) <= configs.MAX_SPLITS   # the partials buffer covers them


def test_autotune_caches_reset_between_bench_cases(monkeypatch):
    """`tuned` registers each GPU autotuner; reset_autotune_caches empties their chosen configs (bench.py calls it
    before every case, since the keys do not hold the sparsity)."""
    import triton
    import triton.language as tl

    from actsparse.kernels import configs
    monkeypatch.setattr(configs, "INTERPRET", False)
    monkeypatch.setattr(configs, "AUTOTUNERS", [])

    @configs.tuned(configs.COMPACT_CONFIGS, configs.COMPACT_FIXED, key=["n"])
    @triton.jit
    def kernel(x_ptr, n, BLOCK_N: tl.constexpr):
        pass

    assert configs.AUTOTUNERS == [kernel]
    kernel.cache[(64,)] = configs.COMPACT_CONFIGS[1]
    configs.reset_autotune_caches()
    assert kernel.cache == {}
