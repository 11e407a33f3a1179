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


def test_rows_probe_cli_needs_a_gpu():
    from actsparse.kernels import bench_rows_probe
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert bench_rows_probe.main(["--active", "0.1"]) == 2


def _listed_ffn(d, f, n, seed):
    """Random gate, up and W_down^T [f, d], one token x, a list of n neurons, and the float64 FFN over that list."""
    g = torch.Generator().manual_seed(seed)
    wg, wu, wdt = (torch.randn(f, d, generator=g) for _ in range(3))
    x = torch.randn(1, d, generator=g)
    idx = torch.randperm(f, generator=g)[:n].to(torch.int32)
    i = idx.long()
    x1 = torch.relu(x.double() @ wg[i].double().t()) * (x.double() @ wu[i].double().t())
    return wg, wu, wdt, x, idx, x1 @ wdt[i].double()


PLAIN_ROWS = next(c for c in configs.ROWS_CONFIGS if not c.kwargs["PIPELINE"] and c.kwargs["BLOCK_K"] <= 1024)
PIPELINED = {depth: next(c for c in configs.ROWS_CONFIGS if c.kwargs["PIPELINE"] == depth and c.kwargs["BLOCK_J"] > 1)
             for depth in (1, 2)}


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
@pytest.mark.parametrize("config,n_sms", [(PLAIN_ROWS, 1), (PIPELINED[1], 1), (PIPELINED[2], 1), (PIPELINED[2], 3)],
                         ids=["plain", "pipelined1", "pipelined2", "pipelined2_3_programs"])
def test_rows_kernel_at_a_given_config_matches_float64(config, n_sms):
    """launch_rows(config=...) (the probe's per-config launches) runs that config, not the interpreter's fixed one:
    the plain loop (one block after another) and the software-pipelined ones (loads issued one or two blocks
    ahead), one program (n_sms=1) walking the whole list, or three programs."""
    from actsparse.kernels.triton_ffn import list_state
    from actsparse.kernels.triton_rows_ffn import launch_rows
    d, f, n = 40, 100, 23
    wg, wu, wdt, x, idx, ref = _listed_ffn(d, f, n, seed=0)
    out = torch.full((1, d), float("nan"))
    acc, ticket = torch.zeros(d), torch.zeros(1, dtype=torch.int32)
    launch_rows(x, wg, None, wu, None, wdt, None, None, "relu", 0.0, list_state("cpu")[:1], idx, acc, ticket, out,
                n_sms=n_sms, n_given=n, config=config)
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-6
    assert not acc.any() and not ticket.any()


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
def test_up_down_with_a_16_token_block_at_one_token_match_float64():
    """block_t=16 at one token (the probe's lists_dot16): the tl.dot code path with 15 masked tokens."""
    from actsparse.kernels.triton_ffn import list_state
    from actsparse.kernels.triton_up_down import launch_down, launch_up
    d, f, n = 40, 100, 37
    wg, wu, wdt, x, idx, ref = _listed_ffn(d, f, n, seed=1)
    state = list_state("cpu")
    x1c, out = torch.full((1, f), float("nan")), torch.full((1, d), float("nan"))
    launch_up(x, wu, None, wg, None, None, None, False, "relu", 0.0, state[:1], idx, x1c, 1, n_given=n, block_t=16)
    launch_down(x1c, wdt, None, False, state[:1], idx, torch.empty(8 * d), torch.zeros(64, dtype=torch.int32), out,
                state[64:], skip_zero=True, n_given=n, block_t=16)
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-6
