"""The predictor's logits and the predicted rows in one launch (triton_logits_rows.py) under TRITON_INTERPRET=1.

Against a float64 reference written out here: the LowRankLogits logits (act(source @ down^T) @ up^T + bias), the
predicted set `>= cut`, act(gate) * up over the predicted neurons, times W_down^T, plus b_down. The weights are
poisoned where the kernel must not read: the up / W_down^T rows and up biases of an unpredicted neuron are NaN and
its gate row (and bias) would make it live (~1e4); the up rows / biases of a predicted neuron with act(gate) == 0
(a false positive) are NaN, its W_down^T row inf. The output row starts NaN (the launcher sets it to b_down or
zero). Each gate pre-activation sits at least MARGIN from the threshold and no logit within 1e-4 of the cut
(low_rank_cases), so fp32 decides every neuron as float64 does.
"""
import pytest
import torch
import triton
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels.triton_logits_rows import launch_logits_rows, logits_rows_state  # noqa: E402

from low_rank_cases import CUTS, make_predictor, predictor_with_cut  # noqa: E402

MARGIN = 0.3
ACTIVATIONS = [("relu", 0.0, False), ("fatrelu", 0.25, True), ("drelu", 0.0, True)]   # (act, threshold, biases)
SHAPES = [(40, 37, 5), (72, 100, 12)]   # d_model, d_ff, rank: odd sizes; rank 12 in fp32: 16-byte rows of up


def act64(g, activation, threshold):
    if activation == "fatrelu":
        return torch.where(g >= threshold, g, torch.zeros_like(g))
    if activation == "relu2":
        return g.clamp(min=0) ** 2
    return g.clamp(min=0)


def ffn_weights(d, f, activation, threshold, biases, x, seed, dtype=torch.float32):
    """(wg, bg, wu, bu, wdt, bd), biases None without; each gate row moved along x so that its pre-activation sits
    MARGIN + U[0, 1) above or below the threshold (about half of the neurons active)."""
    g = torch.Generator().manual_seed(seed)
    wg, wu, wdt = (torch.randn(f, d, generator=g, dtype=torch.float64) / d ** 0.5 for _ in range(3))
    bg, bu, bd = ((torch.randn(n, generator=g, dtype=torch.float64) * 0.5) if biases else None for n in (f, f, d))
    x64 = x[0].double()
    side = torch.where(torch.rand(f, generator=g) < 0.5, 1.0, -1.0).double()
    target = threshold + side * (MARGIN + torch.rand(f, generator=g).double())
    now = wg @ x64 + (bg if biases else 0.0)
    wg = wg + ((target - now) / (x64 @ x64))[:, None] * x64[None, :]
    return tuple(None if t is None else t.to(dtype) for t in (wg, bg, wu, bu, wdt, bd))


def reference(x, weights, predicted, activation, threshold):
    """float64 [1, d]: x1 = act(gate) * up (relu(up) for dReLU) over the predicted neurons, @ W_down^T, + b_down."""
    wg, bg, wu, bu, wdt, bd = (None if t is None else t.double() for t in weights)
    x64 = x[0].double()
    a = act64(wg @ x64 + (0.0 if bg is None else bg), activation, threshold)
    up = wu @ x64 + (0.0 if bu is None else bu)
    if activation == "drelu":
        up = up.clamp(min=0)
    x1 = torch.where(predicted, a * up, torch.zeros_like(a))
    return (x1 @ wdt + (0.0 if bd is None else bd)).unsqueeze(0)


def poisoned(weights, predicted, x, activation, threshold):
    """The weights with poison where the kernel must not read; returns (weights, false positive count). An
    unpredicted neuron's gate row (and bias) give a pre-activation of ~1e4, so that a read of it makes the neuron
    live and its NaN up / W_down^T rows show (a NaN gate would not: relu through tl.maximum drops NaN)."""
    wg, bg, wu, bu, wdt, bd = (None if t is None else t.clone() for t in weights)
    a = act64(wg.double() @ x[0].double() + (0.0 if bg is None else bg.double()), activation, threshold)
    false_pos = predicted & (a == 0)
    x64 = x[0].double()
    wg[~predicted] = (1e4 * x64 / (x64 @ x64)).to(wg.dtype)
    if bg is not None:
        bg[~predicted] = 1e4
    for t, bad in ((wu, ~predicted | false_pos), (bu, ~predicted | false_pos), (wdt, ~predicted)):
        if t is not None:
            t[bad] = float("nan")
    wdt[false_pos] = float("inf")
    return (wg, bg, wu, bu, wdt, bd), int(false_pos.sum())


def case(d, f, rank, activation, threshold, biases, cut_kind, seed, relu_hidden=True, dtype=torch.float32):
    """(x, low_rank, clean weights, poisoned weights, predicted [d_ff], false positive count)."""
    x = torch.randn(1, d, generator=torch.Generator().manual_seed(seed)).to(dtype)
    low_rank, predicted = predictor_with_cut(make_predictor(d, f, rank, relu_hidden, biases, seed + 1, dtype), x,
                                             cut_kind)
    clean = ffn_weights(d, f, activation, threshold, biases, x, seed + 2, dtype)
    bad, n_false = poisoned(clean, predicted[0], x, activation, threshold)
    return x, low_rank, clean, bad, predicted[0], n_false


def run(x, low_rank, weights, activation, threshold, state=None, dynamic=True, **kw):
    """The kernel's output [1, d] fp32 into a NaN row (set to b_down / zero by the launcher); the state left zero."""
    wg, bg, wu, bu, wdt, bd = weights
    state = logits_rows_state("cpu") if state is None else state
    out = torch.full((1, x.shape[1]), float("nan"))
    y = launch_logits_rows(x, low_rank, wg, bg, wu, bu, wdt, bd, activation, threshold, out, state, dynamic=dynamic,
                           **kw)
    assert y is out
    assert not state.any(), state   # the claim counter and the ticket reset for the next call
    return out


def check(y, ref, tol=1e-5):
    assert torch.isfinite(y).all(), y
    assert torch.allclose(y.double(), ref, rtol=tol, atol=tol), (y, ref)


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("cut_kind", list(CUTS))
@pytest.mark.parametrize("activation,threshold,biases", ACTIVATIONS)
@pytest.mark.parametrize("d,f,rank", SHAPES)
def test_matches_float64_and_reads_no_poisoned_row(d, f, rank, activation, threshold, biases, cut_kind, dynamic):
    """0% / some / 100% predicted, strided or claimed chunks, the interpreter's config (CHUNK 8, BLOCK_J 2, 3
    programs), biases (predictor, gate, up, down) with fatrelu / drelu, none with relu."""
    x, low_rank, clean, bad, predicted, n_false = case(d, f, rank, activation, threshold, biases, cut_kind, seed=d + f)
    if cut_kind == "some":
        assert 0 < n_false < int(predicted.sum()) < f   # true actives, false positives and unpredicted neurons
    y = run(x, low_rank, bad, activation, threshold, dynamic=dynamic)
    check(y, reference(x, clean, predicted, activation, threshold))
    if cut_kind == "none":   # nothing predicted: the row is b_down (or zero) exactly
        assert torch.equal(y[0], clean[5] if biases else torch.zeros(d))


def _config(chunk, block_j, grid_per_sm):
    return triton.Config(dict(CHUNK=chunk, BLOCK_J=block_j, GRID_PER_SM=grid_per_sm), num_warps=8, num_stages=1)


# (CHUNK, BLOCK_J, GRID_PER_SM): one neuron per step, steps as wide as a chunk, more programs than chunks (the grid
# stops at the chunk count), one chunk wider than d_ff, chunks of 4 over 5 programs (most programs claim several).
CONFIGS = [(16, 1, 2), (8, 4, 1), (32, 2, 4), (128, 2, 3), (4, 1, 5), (4, 2, 3)]


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("chunk,block_j,grid_per_sm", CONFIGS)
def test_configs(chunk, block_j, grid_per_sm, dynamic):
    x, low_rank, clean, bad, predicted, _ = case(40, 100, 12, "relu", 0.0, True, "some", seed=3)
    y = run(x, low_rank, bad, "relu", 0.0, dynamic=dynamic, config=_config(chunk, block_j, grid_per_sm))
    check(y, reference(x, clean, predicted, "relu", 0.0))


@pytest.mark.parametrize("dynamic", [True, False])
def test_back_to_back_calls_share_one_state(dynamic):
    """Four calls on changing tokens with one state buffer (claim counter and ticket reset by each call's last
    program), each against its own float64 output; the third with nothing predicted, the fourth with everything."""
    state = logits_rows_state("cpu")
    for i, cut_kind in enumerate(("some", "some", "none", "all")):
        x, low_rank, clean, bad, predicted, _ = case(40, 37, 12, "fatrelu", 0.25, True, cut_kind, seed=10 + i)
        y = run(x, low_rank, bad, "fatrelu", 0.25, state=state, dynamic=dynamic, config=_config(4, 2, 3))
        check(y, reference(x, clean, predicted, "fatrelu", 0.25))


@pytest.mark.parametrize("rank,block_r", [(12, 4), (5, 2), (12, 8)])
def test_rank_in_several_tiles(rank, block_r):
    """Ranks above BLOCK_R: the first tile comes a chunk ahead, the rest when the chunk opens (relu2, no relu
    between the predictor's layers)."""
    x, low_rank, clean, bad, predicted, _ = case(40, 37, rank, "relu2", 0.0, True, "some", seed=rank + block_r,
                                                 relu_hidden=False)
    y = run(x, low_rank, bad, "relu2", 0.0, block_r=block_r)
    check(y, reference(x, clean, predicted, "relu2", 0.0))


def test_h_given_source_and_out_set_by_the_caller():
    """A pre_norm predictor (`source`): h computed by the caller from it; `init_out=False`: the caller set the output
    row to b_down, and the launcher does not touch it before the kernel."""
    d, f, rank = 40, 37, 12
    x, _, clean, _, _, _ = case(d, f, rank, "relu", 0.0, True, "some", seed=30)
    source = torch.randn(1, d, generator=torch.Generator().manual_seed(31))
    low_rank, predicted = predictor_with_cut(make_predictor(d, f, rank, True, True, 32), source, "some")
    low_rank = low_rank._replace(source=source)
    bad, _ = poisoned(clean, predicted[0], x, "relu", 0.0)
    h = torch.relu(source @ low_rank.down.T)
    for given_h in (h, None):
        out = clean[5].clone().unsqueeze(0)
        state = logits_rows_state("cpu")
        launch_logits_rows(x, low_rank, *bad[:5], None, "relu", 0.0, out, state, h=given_h, init_out=False)
        check(out, reference(x, clean, predicted[0], "relu", 0.0))


def test_half_precision():
    """fp16 weights, x and predictor (d_model and rank multiples of 8: the GEMV and 16-byte rows of up), against
    float64 over the same fp16 values; the cut with a wide gap (the logits are summed in fp32 from fp16 h)."""
    d, f, rank = 64, 45, 16
    x = torch.randn(1, d, generator=torch.Generator().manual_seed(40)).half()
    low_rank, predicted = predictor_with_cut(make_predictor(d, f, rank, True, True, 41, torch.float16), x, "some",
                                             gap=2e-2)
    clean = ffn_weights(d, f, "relu", 0.0, True, x, 42, torch.float16)
    bad, _ = poisoned(clean, predicted[0], x, "relu", 0.0)
    y = run(x, low_rank, bad, "relu", 0.0)
    ref = reference(x, clean, predicted[0], "relu", 0.0)
    assert torch.isfinite(y).all()
    assert float((y.double() - ref).norm() / ref.norm()) < 2e-3


def test_rejects_what_it_cannot_compute():
    x, low_rank, clean, _, _, _ = case(40, 37, 5, "relu", 0.0, False, "some", seed=50)
    wg, bg, wu, bu, wdt, bd = clean
    with pytest.raises(ValueError, match="one token"):
        launch_logits_rows(torch.cat([x, x]), low_rank, wg, bg, wu, bu, wdt, bd, "relu", 0.0, torch.zeros(40),
                           logits_rows_state("cpu"))
    with pytest.raises(ValueError, match="fp32 row"):
        launch_logits_rows(x, low_rank, wg, bg, wu, bu, wdt, bd, "relu", 0.0, torch.zeros(40).half(),
                           logits_rows_state("cpu"))
