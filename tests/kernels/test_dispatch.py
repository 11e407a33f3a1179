"""Dispatch: expected fractions from the per-neuron probabilities (formulas written out), path choices."""
import pytest
import torch

from actsparse.kernels.dispatch import DispatchConfig, byte_ratio, choose_plan, expected_fraction


def test_expected_fraction_formulas():
    p = torch.tensor([0.5, 0.1, 0.0, 1.0])
    assert expected_fraction(p, 1, False) == pytest.approx(0.4)
    # union of 3 independent tokens: 1 - (1 - p)^3 per neuron
    assert expected_fraction(p, 3, False) == pytest.approx((0.875 + 0.271 + 0.0 + 1.0) / 4)
    assert expected_fraction(p, 3, True) == pytest.approx(3 * 0.4)
    assert byte_ratio(0.1, predicted=False) == pytest.approx(1.2 / 3)
    assert byte_ratio(0.1, predicted=True) == pytest.approx(0.1)


def test_choose_plan():
    cfg = DispatchConfig(max_byte_ratio=0.8)
    sparse_p, dense_p = torch.full((100,), 0.1), torch.full((100,), 0.9)
    assert choose_plan(cfg, 1, sparse_p, False, 1).path == "sparse"
    assert choose_plan(cfg, 1, dense_p, False, 1).path == "dense"
    assert choose_plan(cfg, 65, sparse_p, False, 1).path == "dense"  # prefill
    assert choose_plan(cfg, 1, None, False, 1).path == "sparse"  # uncalibrated: no fallback (logged)
    # union of 32 tokens at p = 0.1 reads ~97% of the rows: dense
    assert choose_plan(cfg, 32, sparse_p, False, 1).path == "dense"
    auto = DispatchConfig(batch_mode="auto", per_token_max_batch=4)
    assert choose_plan(auto, 4, sparse_p, False, 4).per_token
    assert not choose_plan(auto, 8, torch.full((100,), 0.01), False, 8).per_token
    assert not choose_plan(DispatchConfig(batch_mode="per_token"), 4, None, True, 1).per_token  # shared set
    with pytest.raises(ValueError, match="batch_mode"):
        DispatchConfig(batch_mode="fast")


def test_predicted_kernel_choice():
    """Version 1 ("lists") stays the default; "fused" runs per-token masks in union mode."""
    assert DispatchConfig().predicted_kernel == "lists"
    per_token = DispatchConfig(batch_mode="per_token")
    assert choose_plan(per_token, 4, None, True, 4).per_token
    fused = DispatchConfig(batch_mode="per_token", predicted_kernel="fused")
    assert not choose_plan(fused, 4, None, True, 4).per_token
    assert choose_plan(fused, 4, None, False, 1).per_token  # no predictor: unchanged
    with pytest.raises(ValueError, match="predicted_kernel"):
        DispatchConfig(predicted_kernel="persistent")
