"""The predicted set at one token as a neuron list, built while the predictor's logits are computed.

A low-rank predictor (`LowRankLogits`, modeling/predictors/low_rank_logits.py) marks neuron j active where
`(act(x @ down^T) @ up^T + bias)_j >= cut`. The mask path runs that as two cuBLAS GEMVs, a comparison, and the
compaction kernel that turns the bool mask into the rows kernel's list: at the 7B shape with a rank-358 predictor
that was 4.6 + 9.0 + ~1 + 2.1 µs per layer (profile_decode, H100, session 12). Here:
- `h = act(x @ down^T)` through the one-token TMA GEMV (triton_gemv.py, relu in its epilogue) where it can run,
  else F.linear (and torch.relu), said once;
- the list kernel: BLOCK_N rows of `up` per program, the bias, the cut, and the active neurons appended to the
  union list with one atomic (as the gate kernel appends them); the rows of `up` come through TMA where they are
  16-byte aligned (`predictor_list_tma_kernel`), else by plain loads (`predictor_list_kernel`);
then the rows kernel reads that list (gate, up and down rows of the listed neurons), as after the compaction.
H100 (session 12): plain loads took 8.1 µs for rank-358 rows of 716 bytes and 7.7 µs at rank 360 (told 16-byte
aligned), 7.9 MB at ~1 TB/s; the stand-in predictor pads its rank to a multiple of 8 (bench_predictor.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.nn import functional as F

from .configs import (PREDICTOR_LIST_CONFIGS, PREDICTOR_LIST_FIXED, PREDICTOR_LIST_TMA_CONFIGS,
                      PREDICTOR_LIST_TMA_FIXED, tuned)
from .triton_gate import append_union
from .triton_gate_tma import init_sum_row, tma_row_dots_bias


@tuned(PREDICTOR_LIST_CONFIGS, PREDICTOR_LIST_FIXED, key=["rank", "d_ff", "INIT_OUT"], reset_to_zero=["counts_ptr"])
@triton.jit
def predictor_list_kernel(h_ptr, up_ptr, b_ptr, counts_ptr, idx_ptr, out_ptr, bout_ptr, rank, d_ff, d_model, cut,
                          HAS_BIAS: tl.constexpr, INIT_OUT: tl.constexpr, HAS_BOUT: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    if INIT_OUT:  # the fp32 output row the rows kernel sums into: b_down, or 0
        init_sum_row(out_ptr, bout_ptr, d_model, HAS_BOUT)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < d_ff
    row_ptrs = up_ptr + offs_n.to(tl.int64)[:, None] * rank
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, rank, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < rank
        w = tl.load(row_ptrs + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        h = tl.load(h_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * h[None, :]
    logit = tl.sum(acc, 1)
    if HAS_BIAS:
        logit += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    append_union((n_mask & (logit >= cut)).to(tl.int32), offs_n, counts_ptr, idx_ptr)


@tuned(PREDICTOR_LIST_TMA_CONFIGS, PREDICTOR_LIST_TMA_FIXED, key=["rank", "d_ff", "INIT_OUT"],
       reset_to_zero=["counts_ptr"])
@triton.jit
def predictor_list_tma_kernel(h_ptr, w_desc, b_ptr, counts_ptr, idx_ptr, out_ptr, bout_ptr, rank, d_ff, d_model, cut,
                              HAS_BIAS: tl.constexpr, INIT_OUT: tl.constexpr, HAS_BOUT: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    if INIT_OUT:
        init_sum_row(out_ptr, bout_ptr, d_model, HAS_BOUT)
    logit, offs_n, n_mask = tma_row_dots_bias(h_ptr, w_desc, b_ptr, tl.program_id(0) * BLOCK_N, d_ff, rank, HAS_BIAS,
                                              BLOCK_N, BLOCK_K, STAGES)
    append_union((n_mask & (logit >= cut)).to(tl.int32), offs_n, counts_ptr, idx_ptr)


def predictor_hidden(x: torch.Tensor, down: torch.Tensor, relu: bool) -> torch.Tensor:
    """act(x @ down^T) for one token [1, d_model] -> [1, rank] in down's dtype: the TMA GEMV where usable, else
    F.linear (said once with the reason)."""
    from .dispatch import warn_once
    from .triton_gemv import gemv, gemv_unusable
    x = x.reshape(1, -1).to(down.dtype)
    reason = gemv_unusable(x, down)
    if reason is None:
        return gemv(x, down, relu=relu)
    warn_once(f"predictor list: the Triton GEMV is unavailable for the predictor's first layer ({reason}); F.linear")
    h = F.linear(x, down)
    return torch.relu(h) if relu else h


def launch_predictor_list(x: torch.Tensor, logits, counts: torch.Tensor, idx: torch.Tensor,
                          init_out: tuple | None = None) -> None:
    """Append the neurons `logits` (a LowRankLogits) predicts active for the one token x [1, d_model] (or its
    `source`) to the union list (counts[0], idx), which must be empty; the list's order is arbitrary.
    `init_out` = (out, b_down or None): the list kernel also sets the fp32 row `out` [d_model] to b_down (or 0), for a
    rows kernel that adds its sums into it (launch_rows with sum_is_out), as the gate kernel does on the exact path."""
    from .triton_gate_tma import tma_unusable
    down, up = logits.down, logits.up
    if up.stride(1) != 1 or up.stride(0) != up.shape[1]:
        up = up.contiguous()
    d_ff, rank = up.shape
    h = predictor_hidden(x if logits.source is None else logits.source, down, bool(logits.relu_hidden))
    bias = logits.bias if logits.bias is not None else up
    grid = lambda meta: (triton.cdiv(d_ff, meta["BLOCK_N"]),)  # noqa: E731
    out, b_out = init_out if init_out is not None else (counts, None)   # not written without INIT_OUT
    row = (out, b_out if b_out is not None else out)
    flags = dict(HAS_BIAS=logits.bias is not None, INIT_OUT=init_out is not None, HAS_BOUT=b_out is not None)
    if tma_unusable(h, up) is None:
        from triton.tools.tensor_descriptor import TensorDescriptor
        desc = TensorDescriptor.from_tensor(up, [PREDICTOR_LIST_TMA_FIXED["BLOCK_N"],
                                                 PREDICTOR_LIST_TMA_FIXED["BLOCK_K"]])  # configs' hook sets it
        predictor_list_tma_kernel[grid](h, desc, bias, counts, idx, *row, rank, d_ff, out.shape[-1], float(logits.cut),
                                        **flags)
        return
    predictor_list_kernel[grid](h, up, bias, counts, idx, *row, rank, d_ff, out.shape[-1], float(logits.cut), **flags)
