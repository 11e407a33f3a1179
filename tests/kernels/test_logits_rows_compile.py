"""logits_rows_kernel compiles for sm_90 (no GPU needed) in every LOGITS_ROWS_CONFIGS config at the 7B shape (fp16,
d_model 4096, rank 360 in 16-byte rows): no spills, 16-byte loads, and GRID_PER_SM programs fit an SM's registers
together (the grid runs in one wave: a persistent program of a second wave would start after the first finished)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # 22 real compilations, ~15 s

SCRIPT = """
import json
from actsparse.kernels import configs
from actsparse.kernels.compile_report import compile_one, resources
from actsparse.kernels.triton_logits_rows import logits_rows_kernel
args = dict(x_ptr="*fp16", h_ptr="*fp16", w2_ptr="*fp16", b2_ptr="*fp16", wg_ptr="*fp16", bg_ptr="*fp16",
            wu_ptr="*fp16", bu_ptr="*fp16", wdt_ptr="*fp16", out_ptr="*fp32", state_ptr="*i32", d_model="i32",
            d_ff="i32", rank_units="i32", cut="fp32", threshold="fp32")
for cfg in configs.LOGITS_ROWS_CONFIGS:
    for dynamic in (True, False):
        flags = dict(ACT=0, HAS_B2=True, HAS_BG=False, HAS_BU=False, DYNAMIC=dynamic, USE_GDC=False, RANK_ALIGN=8,
                     ONE_STEP_R=True, BLOCK_R=512, BLOCK_D=4096, **cfg.kwargs)
        res = resources(compile_one(logits_rows_kernel, args, flags, cfg.num_warps, cfg.num_stages, 90))
        print(json.dumps(dict(cfg.kwargs, num_warps=cfg.num_warps, dynamic=dynamic, **res)))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_every_config_compiles_without_spills_in_one_wave(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 22, res.stdout
    for row in rows:
        assert row["local"] == 0 and row["stack"] == 0, row   # no spills
        assert row["ld_v4"] > 0, row                          # 16-byte loads of the weights
        regs_per_warp = -(-row["regs"] // 8) * 8 * 32           # allocated in 8-register steps per thread
        assert row["GRID_PER_SM"] * row["num_warps"] * regs_per_warp <= 65536, row
