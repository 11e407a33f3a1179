"""The rows kernel's GATE_FIRST mode (launch_rows(gate_first=True), triton_rows_ffn.py) under TRITON_INTERPRET=1.

A predicted list holds true actives and false positives (act(gate) == 0: gate pre-activation below the threshold,
negative or, for FATReLU, between 0 and the threshold). The false positives' up rows and up biases are NaN and their
W_down^T rows inf, and every unlisted neuron's rows and biases are NaN: a read of any of them shows in the output
(NaN * 0 = NaN), as the same launch without GATE_FIRST shows. The output is checked against float64 over the clean
weights, and against the launch without GATE_FIRST on the clean weights bit for bit (the same sum, in the same
order: a false positive adds zeros), for the plain loop, its W_down^T column steps, and the pipelined paths.
"""
import pytest
import torch
import triton
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels.triton_ffn import list_state  # noqa: E402
from actsparse.kernels.triton_rows_ffn import launch_rows  # noqa: E402

# The launches without GATE_FIRST on the poisoned weights multiply NaN / inf by 0 (numpy warns).
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
D, F = 24, 37
MARGIN = 0.3  # every gate pre-activation is at least this far from the threshold: fp32 cannot flip a neuron


def _rows_config(block_j, pipeline, block_k=8):
    return triton.Config(dict(BLOCK_J=block_j, BLOCK_K=block_k, GRID_PER_SM=1, PIPELINE=pipeline), num_warps=8,
                         num_stages=1)


# (config (None: the interpreter's ROWS_FIXED, two blocks ahead), programs, block_d (None: whole W_down^T rows)).
# BLOCK_K 8 walks D = 24 in three K steps in the plain loop; block_d 8 makes any config take the plain loop's
# W_down^T column steps (the path of d_model > MAX_ONE_STEP_D).
CONFIGS = {"plain": (_rows_config(2, 0), 2, None), "plain_columns": (_rows_config(2, 1), 2, 8),
           "pipelined1_j1": (_rows_config(1, 1), 1, None), "pipelined1_j2_3": (_rows_config(2, 1), 3, None),
           "pipelined2_j2": (_rows_config(2, 2), 1, None), "pipelined2_j1_3": (_rows_config(1, 2), 3, None),
           "fixed": (None, 1, None)}
ACTIVATIONS = [("relu", 0.0), ("fatrelu", 1.0), ("drelu", 0.0)]


def _act64(gate, activation, threshold):
    if activation == "fatrelu":
        return torch.where(gate >= threshold, gate, torch.zeros_like(gate))
    return torch.relu(gate)


def predicted_ffn(activation, threshold, n_listed, biases, seed):
    """(x, clean weights, poisoned weights, idx, float64 output, false positive count). Weights: (wg, bg, wu, bu, wdt,
    bd), biases None without. Each gate row is moved along x so that its pre-activation sits MARGIN + U[0, 1) above
    or below the threshold; n_listed of the F neurons are listed, in random order."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, D, generator=g)
    wg, wu, wdt = (torch.randn(F, D, generator=g) / D ** 0.5 for _ in range(3))
    bg, bu, bd = ((torch.randn(n, generator=g) * 0.5) if biases else None for n in (F, F, D))
    x64 = x[0].double()
    bg64 = bg.double() if biases else torch.zeros(F, dtype=torch.float64)
    side = torch.where(torch.rand(F, generator=g) < 0.5, 1.0, -1.0).double()
    target = threshold + side * (MARGIN + torch.rand(F, generator=g).double())
    wg = (wg.double() + ((target - (wg.double() @ x64 + bg64)) / (x64 @ x64))[:, None] * x64[None, :]).float()
    idx = torch.randperm(F, generator=g)[:n_listed]
    a = _act64(wg.double() @ x64 + bg64, activation, threshold)[idx]
    up = wu.double()[idx] @ x64 + (bu.double()[idx] if biases else 0.0)
    if activation == "drelu":
        up = torch.relu(up)
    ref = (a * up) @ wdt.double()[idx] + (bd.double() if biases else 0.0)
    clean = (wg, bg, wu, bu, wdt, bd)
    wg_p, bg_p, wu_p, bu_p, wdt_p = (t.clone() if t is not None else None for t in (wg, bg, wu, bu, wdt))
    unlisted = torch.ones(F, dtype=torch.bool)
    unlisted[idx] = False
    false_pos = idx[a == 0]
    for t, bad in ((wg_p, unlisted), (bg_p, unlisted), (wu_p, unlisted), (bu_p, unlisted), (wdt_p, unlisted),
                   (wu_p, false_pos), (bu_p, false_pos)):
        if t is not None:
            t[bad] = float("nan")
    wdt_p[false_pos] = float("inf")
    return x, clean, (wg_p, bg_p, wu_p, bu_p, wdt_p, bd), idx.to(torch.int32), ref.unsqueeze(0), false_pos.numel()


def run_rows(x, weights, idx, activation, threshold, case, sum_is_out, gate_first, on_device_count=False):
    """The rows kernel's output [1, D] fp32 over the list `idx`; the list length given (n_given) or on the device
    (counts[0], zeroed by the kernel). Checks that the ticket, the sum row and the list length are left zero."""
    wg, bg, wu, bu, wdt, bd = weights
    config, n_sms, block_d = CONFIGS[case]
    state = list_state("cpu")[:1]
    n = idx.numel()
    if on_device_count:
        state[0] = n
    ticket = torch.zeros(1, dtype=torch.int32)
    list_buf = torch.cat([idx, torch.zeros(F - n, dtype=torch.int32)])   # a list buffer is d_ff long
    if sum_is_out:  # the fp32 output row, set to b_down before (the gate / list kernel's init_out)
        acc = bd.clone() if bd is not None else torch.zeros(D)
        out = torch.full((1, D), float("nan"))   # not written
    else:
        acc, out = torch.zeros(D), torch.full((1, D), float("nan"))
    launch_rows(x, wg, bg, wu, bu, wdt, bd, None, activation, threshold, state, list_buf, acc, ticket, out,
                n_sms=n_sms, n_given=None if on_device_count else n, block_d=block_d, config=config,
                sum_is_out=sum_is_out, gate_first=gate_first)
    assert not ticket.any() and not state.any()
    if sum_is_out:
        assert torch.isnan(out).all()
        return acc.unsqueeze(0)
    assert not acc.any()
    return out


@pytest.mark.parametrize("sum_is_out", [False, True])
@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize("activation,threshold", ACTIVATIONS)
def test_gate_first_skips_false_positives_and_matches_float64(activation, threshold, case, biases, sum_is_out):
    """A list of 15 of the 37 neurons (true actives and false positives), then every neuron, then none."""
    for n_listed, seed in ((15, 1), (F, 2), (0, 3)):
        x, clean, poisoned, idx, ref, n_false = predicted_ffn(activation, threshold, n_listed, biases, seed)
        if n_listed:
            assert 0 < n_false < n_listed   # both kinds listed
        y = run_rows(x, poisoned, idx, activation, threshold, case, sum_is_out, True, on_device_count=seed == 2)
        assert torch.isfinite(y).all(), y
        assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5), (y, ref)
        # The same sum as without GATE_FIRST, bit for bit (the interpreter runs the programs and atomics in order).
        assert torch.equal(y, run_rows(x, clean, idx, activation, threshold, case, sum_is_out, False))
        if n_false and case == "pipelined1_j2_3":   # the poison bites: without GATE_FIRST the false positives are read
            assert not torch.isfinite(run_rows(x, poisoned, idx, activation, threshold, case, sum_is_out, False)).all()


@pytest.mark.parametrize("given", ["gate_act", "x1c"])
def test_gate_first_needs_a_predicted_set(given):
    """act(gate) from the gate kernel (exact path) or x1 from the up kernel (atomic down): no gate rows to read."""
    x, (wg, bg, wu, bu, wdt, bd), _, idx, _, _ = predicted_ffn("relu", 0.0, 5, False, 4)
    other = torch.zeros(1, F)
    with pytest.raises(ValueError, match="gate_first needs a predicted set"):
        launch_rows(x, wg, bg, wu, bu, wdt, bd, other if given == "gate_act" else None, "relu", 0.0,
                    list_state("cpu")[:1], idx, torch.zeros(D), torch.zeros(1, dtype=torch.int32), torch.empty(1, D),
                    n_sms=1, n_given=idx.numel(), x1c=other if given == "x1c" else None, gate_first=True)
