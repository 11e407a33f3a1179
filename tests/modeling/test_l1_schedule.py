"""ProgressiveL1Schedule against ProSparse Algorithm 1 written out independently."""
import pytest

from actsparse.modeling import ConstantL1Schedule, LinearL1Schedule, ProgressiveL1Schedule
from prosparse_reference import algorithm_1

# ProSparse-LLaMA2-7B stages (PAPERS.md (c) stage table): (lambda_i, accumulated T_i)
STAGES_7B = [(0.0, 5000), (5e-3, 6000), (5e-2, 10000), (5e-2, 12000), (2e-1, 16000), (2e-1, 16500)]


def test_matches_algorithm_1_at_every_step():
    schedule = ProgressiveL1Schedule(STAGES_7B)
    for step in range(0, 17001):
        assert schedule(step) == pytest.approx(algorithm_1(step, STAGES_7B), abs=1e-15), step


def test_key_points_of_the_7b_schedule():
    s = ProgressiveL1Schedule(STAGES_7B)
    assert s(0) == 0.0 and s(5000) == 0.0           # stage 0: ReLU only
    assert s(5001) == 5e-3 and s(6000) == 5e-3     # warm-up stage: constant lambda_1
    assert s(8000) == pytest.approx((5e-3 + 5e-2) / 2)   # half-way through a sine ramp
    assert s(10000) == pytest.approx(5e-2)         # ramp ends exactly at lambda_2
    assert s(11000) == 5e-2                        # equal lambdas: constant stage
    assert s(16000) == pytest.approx(2e-1) and s(16500) == 2e-1 and s(10**6) == 2e-1


def test_ramp_has_zero_slope_at_both_ends():
    s = ProgressiveL1Schedule(STAGES_7B)
    assert s(6001) - s(6000) < 1e-7 and s(10000) - s(9999) < 1e-7
    assert s(8001) - s(8000) > 1e-5


@pytest.mark.parametrize("bad, match", [
    ([(0.0, 10)], "at least one L1 stage"),
    ([(0.1, 10), (0.2, 20)], "stage 0 must have lambda 0.0"),
    ([(0.0, 10), (0.1, 10)], "must increase"),
    ([(0.0, 10), (0.2, 20), (0.1, 30)], "must not decrease"),
])
def test_bad_stages(bad, match):
    with pytest.raises(ValueError, match=match):
        ProgressiveL1Schedule(bad)


def test_constant_and_linear():
    c = ConstantL1Schedule(0.05, start_step=10)
    assert c(10) == 0.0 and c(11) == 0.05
    lin = LinearL1Schedule(0.2, start_step=100, end_step=200)
    assert lin(100) == 0.0 and lin(150) == pytest.approx(0.1) and lin(200) == 0.2 and lin(999) == 0.2
