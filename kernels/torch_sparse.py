"""The sparse FFN algorithm in plain PyTorch (index_select gathers): the `backend="torch"` path on CPU and
the `index_select` baseline of the benchmark. Same lists as the Triton kernels, same results up to the
summation order."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _take(t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.index_select(0, rows)


def union_ffn(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, act_fn, relu_on_up, mask=None):
    """One neuron list for all tokens: gate dense (mask None) or only over the predicted rows."""
    if mask is None:
        gate_act = act_fn(F.linear(x, w_gate, b_gate))
        rows = torch.nonzero((gate_act != 0).any(0)).flatten()
        gate_act = gate_act.index_select(1, rows)
    else:
        rows = torch.nonzero(mask.any(0)).flatten()
        gate_act = act_fn(F.linear(x, w_gate.index_select(0, rows), _take(b_gate, rows)))
        gate_act = gate_act * mask.index_select(1, rows).to(gate_act.dtype)
    up = F.linear(x, w_up.index_select(0, rows), _take(b_up, rows))
    if relu_on_up:
        up = F.relu(up)
    out = (gate_act * up) @ w_down_t.index_select(0, rows)
    return out if b_down is None else out + b_down


def sparse_ffn_torch(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, act_fn, relu_on_up, mask=None,
                     per_token=False):
    """mask: None, [1, d_ff] or [tokens, d_ff] bool; per_token: one list per token (a loop here)."""
    args = (w_gate, w_up, w_down_t, b_gate, b_up, b_down, act_fn, relu_on_up)
    if not per_token:
        return union_ffn(x, *args, mask=mask)
    rows = [union_ffn(x[t:t + 1], *args, mask=None if mask is None else mask[t % mask.shape[0]][None])
            for t in range(x.shape[0])]
    return torch.cat(rows, 0)
