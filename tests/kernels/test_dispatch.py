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


MB_7B = 3 * 4096 * 11008 * 2 / 1e6  # fp16 weights of one LLaMA2-7B FFN
MB_1B = 3 * 1536 * 3840 * 2 / 1e6   # MiniCPM-1B


def test_choose_plan_byte_rule():
    cfg = DispatchConfig(max_byte_ratio=0.8, cost_model=None)
    sparse_p, dense_p = torch.full((100,), 0.1), torch.full((100,), 0.9)
    assert choose_plan(cfg, 1, sparse_p, False, 1, MB_7B).path == "sparse"
    assert choose_plan(cfg, 1, dense_p, False, 1, MB_7B).path == "dense"
    assert choose_plan(cfg, 65, sparse_p, False, 1, MB_7B).path == "dense"  # prefill
    assert choose_plan(cfg, 1, None, False, 1, MB_7B).path == "sparse"  # uncalibrated: no fallback (logged)
    # union of 32 tokens at p = 0.1 reads ~97% of the rows: dense
    assert choose_plan(cfg, 32, sparse_p, False, 1, MB_7B).path == "dense"
    auto = DispatchConfig(batch_mode="auto", per_token_max_batch=4)
    assert choose_plan(auto, 4, sparse_p, False, 4, MB_7B).per_token
    assert not choose_plan(auto, 8, torch.full((100,), 0.01), False, 8, MB_7B).per_token
    assert not choose_plan(DispatchConfig(batch_mode="per_token"), 4, None, True, 1, MB_7B).per_token  # shared set
    # per-token plans keep the byte rule with the default cost model: 4 x 0.1 of the rows, (1 + 0.8) / 3 < 0.8
    assert choose_plan(DispatchConfig(batch_mode="per_token"), 4, sparse_p, False, 4, MB_1B).path == "sparse"
    with pytest.raises(ValueError, match="batch_mode"):
        DispatchConfig(batch_mode="fast")


def test_predicted_kernel_choice():
    """"auto" (rows at one token, Version 1's lists otherwise) is the default; "fused" runs per-token masks in
    union mode."""
    assert DispatchConfig().predicted_kernel == "auto"
    per_token = DispatchConfig(batch_mode="per_token")
    assert choose_plan(per_token, 4, None, True, 4, MB_7B).per_token
    fused = DispatchConfig(batch_mode="per_token", predicted_kernel="fused")
    assert not choose_plan(fused, 4, None, True, 4, MB_7B).per_token
    assert choose_plan(fused, 4, None, False, 1, MB_7B).per_token  # no predictor: unchanged
    with pytest.raises(ValueError, match="predicted_kernel"):
        DispatchConfig(predicted_kernel="persistent")


def test_cost_model_plan_depends_on_layer_size():
    """Same batch and sparsity, different shapes: the ~20 us fixed cost of the sparse path decides at MiniCPM-1B's
    35 MB but not at the 7B's 271 MB (session 5 on an H100: 0.77x against 1.04x at 32 tokens, 80% sparse)."""
    cfg = DispatchConfig()
    p = torch.full((1000,), 0.2)  # union of 32 tokens: ~0.999 of the rows, so use 8 tokens (0.83) and 1 token
    assert choose_plan(cfg, 1, p, False, 1, MB_7B).path == "sparse"
    assert choose_plan(cfg, 1, p, False, 1, MB_1B).path == "sparse"
    low = torch.full((1000,), 0.0355)  # union of 32 tokens reads 1 - (1 - p)^32 = 0.685 of the rows
    assert expected_fraction(low, 32, False) == pytest.approx(0.685, abs=0.002)
    assert choose_plan(cfg, 32, low, False, 1, MB_1B).path == "dense"
    assert choose_plan(cfg, 32, low, True, 1, MB_1B).path == "dense"
    very_low = torch.full((1000,), 0.0033)  # 32 tokens: 0.10 of the rows
    assert choose_plan(cfg, 32, very_low, False, 1, MB_7B).path == "sparse"
    with pytest.raises(ValueError, match="max_time_ratio"):
        DispatchConfig(max_time_ratio=1.5)


def test_exact_kernel_auto_fuses_up_at_8_to_16_tokens():
    auto = DispatchConfig()
    assert auto.exact_kernel == "auto"
    assert [n for n in range(1, 65) if auto.fuse_up(n)] == list(range(8, 17))
    assert all(DispatchConfig(exact_kernel="gate_up").fuse_up(n) for n in (1, 8, 64))
    assert not any(DispatchConfig(exact_kernel="split").fuse_up(n) for n in (1, 8, 64))


def test_auto_kernels_run_rows_at_one_token_only():
    auto = DispatchConfig()
    assert [n for n in range(1, 65) if auto.rows(n, predicted=False)] == [1]
    assert [n for n in range(1, 65) if auto.rows(n, predicted=True)] == [1]   # predicted "auto" too
    assert DispatchConfig(predicted_kernel="rows").rows(1, predicted=True)
    assert not any(DispatchConfig(predicted_kernel=k).rows(1, predicted=True) for k in ("lists", "lists_inline"))
    assert not any(DispatchConfig(exact_kernel=k).rows(1, predicted=False) for k in ("split", "gate_up"))
    assert not auto.rows(1, predicted=False, activation="drelu")   # split skips dReLU's x1 = 0 down rows
    assert not auto.rows(1, predicted=True, activation="drelu")    # so do the lists kernels
    assert DispatchConfig(exact_kernel="rows").rows(1, predicted=False, activation="drelu")
    fused = DispatchConfig(exact_kernel="gate_rows")
    assert [n for n in range(1, 65) if fused.gate_rows(n, predicted=False)] == [1]
    assert not fused.gate_rows(1, predicted=True) and not auto.gate_rows(1, predicted=False)
    assert fused.rows(1, predicted=False) and fused.fuse_up(8)   # one token: rows family; 8-16 tokens as "auto"


def test_gate_first_is_on_for_predictor_built_lists_unless_set():
    """None: the rows kernel reads gate rows first for the list a low-rank predictor's kernels build (it over-selects),
    not for a caller's mask or index list; True / False apply to both."""
    assert DispatchConfig().gate_first_for(True) and not DispatchConfig().gate_first_for(False)
    for value in (True, False):
        assert DispatchConfig(gate_first=value).gate_first_for(True) is value
        assert DispatchConfig(gate_first=value).gate_first_for(False) is value
