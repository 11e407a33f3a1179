"""read_floor.py: the reader sums what it reads (interpreter, against float64), the line fit through two reads, the
best config chosen, and its refusals."""
import importlib.util

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install triton)", allow_module_level=True)

from actsparse.kernels import configs, read_floor  # noqa: E402
from actsparse.kernels.read_floor import ReadFloor, fit_read_floor  # noqa: E402


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
@pytest.mark.parametrize("n, block, programs", [(10_000, 1024, 3), (777, 256, 8), (4096, 512, 2)])
def test_read_sum_reads_every_element_once(n, block, programs):
    buf = torch.randn(n, generator=torch.Generator().manual_seed(n)).half()
    out = torch.full((16,), float("nan"))
    read_floor.read_sum(buf, out, block, 4, programs, 2)
    grid = min(programs, -(-n // block))
    assert float(out[:grid].double().sum()) == pytest.approx(float(buf.double().sum()), abs=1e-3)
    assert torch.isnan(out[grid:]).all()   # programs past the grid write nothing


def test_fit_recovers_the_line_and_floor_us_follows_it():
    truth = ReadFloor(t0_us=2.1, gbs=3100.0)
    small, large = 90.2e6, 270.5e6
    fit = fit_read_floor(small, truth.floor_us(small), large, truth.floor_us(large))
    assert fit.gbs == pytest.approx(3100.0) and fit.t0_us == pytest.approx(2.1)
    # session 20's H100 reads (probe_read_roofline): 108.2 MB in 37.01 µs sits on the line through the other two
    h100 = fit_read_floor(90.2e6, 31.10, 270.5e6, 89.35)
    assert h100.floor_us(108.2e6) == pytest.approx(37.01, rel=0.01)


def test_fit_never_gives_a_negative_fixed_part():
    assert fit_read_floor(1e6, 1.0, 2e6, 3.0).t0_us == 0.0


@pytest.mark.parametrize("small_us, large_us", [(5.0, 5.0), (5.0, 4.0)])
def test_fit_refuses_reads_that_do_not_grow(small_us, large_us):
    with pytest.raises(ValueError, match="larger read to take longer"):
        fit_read_floor(1e6, small_us, 2e6, large_us)


@pytest.mark.skipif(not configs.INTERPRET, reason="needs TRITON_INTERPRET=1 (set by conftest.py)")
def test_best_read_us_takes_the_fastest_config_and_rotates_buffers(monkeypatch):
    monkeypatch.setattr(read_floor, "ROTATE_BYTES", 5000)
    seen = []

    def timer(calls, reps):
        for call in calls:
            call()
        seen.append(len(calls))
        return {"us": [7.0, 3.0, 5.0][len(seen) - 1]}

    assert read_floor.best_read_us(2048, 1, timer=timer, device="cpu") == 3.0
    assert seen == [3] * len(read_floor.READ_CONFIGS)   # ceil(5000 / 2048) buffers, every config timed
