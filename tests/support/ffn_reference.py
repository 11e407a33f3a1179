"""SparseFFN test helpers: the float64 reference FFN, NaN-poisoned workspaces, a random FFN and the tolerance check."""
import torch

from actsparse.kernels import SparseFFN


def reference_ffn(x, w_gate, w_up, w_down, activation, threshold=0.0, b_gate=None, b_up=None, b_down=None,
                  mask=None):
    """down(x1) with x1 = act(gate) * up computed densely in float64; x1 = 0 outside a predicted mask.

    w_down is the nn.Linear layout [d_model, d_ff]."""
    x = x.double()
    g = x @ w_gate.double().T + (0 if b_gate is None else b_gate.double())
    u = x @ w_up.double().T + (0 if b_up is None else b_up.double())
    if activation == "fatrelu":
        a = torch.where(g >= threshold, g, torch.zeros_like(g))
    elif activation == "relu2":
        a = torch.clamp(g, min=0) ** 2
    else:
        a = torch.clamp(g, min=0)
    if activation == "drelu":
        u = torch.clamp(u, min=0)
    x1 = a * u
    if mask is not None:
        x1 = x1 * mask.double()
    return x1 @ w_down.double().T + (0 if b_down is None else b_down.double())


def rms_norm64(h, weight, eps):
    """The RMSNorm of h in float64, unrounded: what the NORM kernels' sums take as x (they scale by rstd after the sum;
    triton_gate_tma.tma_row_dots_norm)."""
    h64 = h.double()
    return weight.double() * h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + eps)


def poisoned_empty(*shape, dtype=None, device=None):
    """torch.empty stand-in: float buffers start as NaN, so any element a kernel fails to write shows."""
    t = torch.empty(*shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7)


def rel_err(y, ref):
    return float((y.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def random_ffn(d, f, activation, threshold, dispatch, gate_bias, seed, biases=False):
    """A SparseFFN of random weights (gate bias shifted by `gate_bias`: -50 none active, 0 about half, 50 all) with
    its workspaces poisoned, and its float64 reference `ref(x, mask=None)`."""
    g = torch.Generator().manual_seed(seed)
    w_gate, w_up = (torch.randn(f, d, generator=g) / d ** 0.5 for _ in range(2))
    w_down = torch.randn(d, f, generator=g) / f ** 0.5
    b_gate = gate_bias + torch.randn(f, generator=g) * 0.5
    b_up = torch.randn(f, generator=g) * 0.5 if biases else None
    b_down = torch.randn(d, generator=g) if biases else None
    ffn = SparseFFN(w_gate, w_up, w_down.T.contiguous(), b_gate, b_up, b_down, activation, threshold,
                    dispatch=dispatch)
    ffn.workspace_alloc = poisoned_empty
    ref = lambda x, mask=None: reference_ffn(x, w_gate, w_up, w_down, activation, threshold,  # noqa: E731
                                             b_gate, b_up, b_down, mask)
    return ffn, ref


def check(y, ref):
    assert torch.isfinite(y).all(), "an output element was never written (NaN poison survived)"
    assert rel_err(y, ref) < 1e-5
