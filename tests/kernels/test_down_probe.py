"""bench_down_probe: its epilogue-free row kernel against float64 (interpreter), its CLI without a GPU."""
import importlib.util

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from actsparse.kernels import bench_down_probe, configs  # noqa: E402


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
@pytest.mark.parametrize("n,block_j,splits,atomic", [(0, 8, 2, False), (7, 4, 3, False), (37, 8, 2, False),
                                                      (37, 8, 3, True)])
def test_rows_only_partials_sum_to_the_down_projection(n, block_j, splits, atomic):
    g = torch.Generator().manual_seed(n)
    d, f = 40, 100
    w_down_t = torch.randn(f, d, generator=g)
    idx = torch.randperm(f, generator=g)[:n].to(torch.int32)
    x1c = torch.randn(max(n, 1), generator=g)
    partials = torch.full((splits, d), float("nan"))
    if atomic:  # every split adds into row 0
        partials[0] = 0.0
        out = bench_down_probe.rows_only(x1c, w_down_t, idx, partials, 16, block_j, splits, atomic=True)[0]
    else:
        out = bench_down_probe.rows_only(x1c, w_down_t, idx, partials, 16, block_j, splits).sum(0)
    ref = x1c[:n].double() @ w_down_t.double()[idx.long()]
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_cli_needs_a_gpu_and_checks_configs(capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert bench_down_probe.main(["--configs", "128x64x8"]) == 2
    assert bench_down_probe.parse_config("4096x2x132a") == (4096, 2, 132, True)
    with pytest.raises(SystemExit, match="BLOCK_DxBLOCK_JxSPLITS"):
        bench_down_probe.main(["--configs", "128x64"])
