"""Low-rank predictors for the kernel tests (test_predictor_list.py): random weights, a cut
with no float64 logit near it, and the float64 predicted set."""
import torch

from actsparse.modeling.predictors import LowRankLogits

CUTS = {"none": 1e4, "some": None, "all": -1e4}   # None: between the 40% and 90% quantiles (10-60% active)


def make_predictor(d, f, rank, relu_hidden, bias, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(rank, d, generator=g) / d ** 0.5
    up = torch.randn(f, rank, generator=g) / rank ** 0.5
    b = torch.randn(f, generator=g) * 0.3 if bias else None
    return down.to(dtype), up.to(dtype), None if b is None else b.to(dtype), relu_hidden


def logits64(pred, src):
    down, up, bias, relu_hidden = pred
    h = src.double() @ down.double().T
    if relu_hidden:
        h = h.clamp(min=0)
    out = h @ up.double().T
    return out if bias is None else out + bias.double()


def predictor_with_cut(pred, src, cut_kind, gap=1e-4):
    """LowRankLogits with a cut per CUTS, and the float64 set; asserts no float64 logit lies within `gap` of the cut
    (so the kernel's fp32 sums decide every neuron the same way)."""
    exact = logits64(pred, src)
    cut = CUTS[cut_kind]
    if cut is None:   # the middle of the widest gap between neighbouring logits of the 40-90% quantiles
        ranked = exact.flatten().sort().values
        lo, hi = int(0.4 * ranked.numel()), int(0.9 * ranked.numel())
        i = lo + int((ranked[lo + 1:hi + 1] - ranked[lo:hi]).argmax())
        cut = float((ranked[i] + ranked[i + 1]) / 2)
    assert ((exact - cut).abs() > gap).all(), "a near-tie in the test data: pick another seed"
    return LowRankLogits(*pred, cut), exact >= cut
