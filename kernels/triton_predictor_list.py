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
With PDL (a decode step's predictor path behind an o projection launched with PDL) the GEMV loads its programs' whole
rows before it waits for the o projection (`prefetch`): H100, 4-layer decode profile (session 18), the predictor step
485.9 -> 469.8 µs.
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
from .pdl import launch_options
from .triton_gate import append_union
from .triton_gate_tma import init_sum_row


@triton.jit
def behind_gemv(USE_GDC: tl.constexpr):
    """Where a list kernel launched with PDL behind the GEMV that writes h waits for it: the weights' first tile is
    loaded before this (the GEMV leaves it alone), h and everything that writes after it."""
    if USE_GDC:
        tl.extra.cuda.gdc_wait()


@triton.jit
def plain_row_dots(h_ptr, up_ptr, offs_n, n_mask, rank, USE_GDC: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """h . up[offs_n] in fp32 [BLOCK_N], BLOCK_K of the rank per step by plain loads; the first step's tile is
    loaded before `behind_gemv`."""
    row_ptrs = up_ptr + offs_n.to(tl.int64)[:, None] * rank
    offs_k = tl.arange(0, BLOCK_K)
    w = tl.load(row_ptrs + offs_k[None, :], mask=n_mask[:, None] & (offs_k < rank)[None, :], other=0.0)
    behind_gemv(USE_GDC)
    acc = w.to(tl.float32) * tl.load(h_ptr + offs_k, mask=offs_k < rank, other=0.0).to(tl.float32)[None, :]
    for k0 in range(BLOCK_K, rank, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < rank
        w = tl.load(row_ptrs + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        h = tl.load(h_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * h[None, :]
    return tl.sum(acc, 1)


@triton.jit
def tma_row_dots_behind_gemv(h_ptr, w_desc, n0, rank, USE_GDC: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """`tma_row_dots` of the list kernel: the first [BLOCK_N, BLOCK_K] tile through TMA before `behind_gemv`, the
    rest (ranks above BLOCK_K) pipelined after it."""
    w = w_desc.load([n0, 0])
    behind_gemv(USE_GDC)
    offs_k = tl.arange(0, BLOCK_K)
    acc = w.to(tl.float32) * tl.load(h_ptr + offs_k, mask=offs_k < rank, other=0.0).to(tl.float32)[None, :]
    for k0 in tl.range(BLOCK_K, rank, BLOCK_K, num_stages=STAGES):
        w = w_desc.load([n0, k0])
        offs_k = k0 + tl.arange(0, BLOCK_K)
        acc += w.to(tl.float32) * tl.load(h_ptr + offs_k, mask=offs_k < rank, other=0.0).to(tl.float32)[None, :]
    return tl.sum(acc, 1)


@triton.jit
def list_and_sum_row(logit, offs_n, n_mask, b_ptr, cut, counts_ptr, idx_ptr, out_ptr, bout_ptr, d_model,
                     HAS_BIAS: tl.constexpr, INIT_OUT: tl.constexpr, HAS_BOUT: tl.constexpr):
    """After the dots: + bias, the neurons at or above the cut appended to the union list, and (INIT_OUT) the fp32
    output row the rows kernel sums into set to b_down or 0."""
    if HAS_BIAS:
        logit += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    append_union((n_mask & (logit >= cut)).to(tl.int32), offs_n, counts_ptr, idx_ptr)
    if INIT_OUT:
        init_sum_row(out_ptr, bout_ptr, d_model, HAS_BOUT)


@tuned(PREDICTOR_LIST_CONFIGS, PREDICTOR_LIST_FIXED, key=["rank", "d_ff", "INIT_OUT"], reset_to_zero=["counts_ptr"])
@triton.jit
def predictor_list_kernel(h_ptr, up_ptr, b_ptr, counts_ptr, idx_ptr, out_ptr, bout_ptr, rank, d_ff, d_model, cut,
                          HAS_BIAS: tl.constexpr, INIT_OUT: tl.constexpr, HAS_BOUT: tl.constexpr,
                          USE_GDC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    if USE_GDC:  # the rows kernel after this one may take the SMs' free slots from now on
        tl.extra.cuda.gdc_launch_dependents()
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < d_ff
    logit = plain_row_dots(h_ptr, up_ptr, offs_n, n_mask, rank, USE_GDC, BLOCK_N, BLOCK_K)
    list_and_sum_row(logit, offs_n, n_mask, b_ptr, cut, counts_ptr, idx_ptr, out_ptr, bout_ptr, d_model, HAS_BIAS,
                     INIT_OUT, HAS_BOUT)


@tuned(PREDICTOR_LIST_TMA_CONFIGS, PREDICTOR_LIST_TMA_FIXED, key=["rank", "d_ff", "INIT_OUT"],
       reset_to_zero=["counts_ptr"])
@triton.jit
def predictor_list_tma_kernel(h_ptr, w_desc, b_ptr, counts_ptr, idx_ptr, out_ptr, bout_ptr, rank, d_ff, d_model, cut,
                              HAS_BIAS: tl.constexpr, INIT_OUT: tl.constexpr, HAS_BOUT: tl.constexpr,
                              USE_GDC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                              STAGES: tl.constexpr):
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
    n0 = tl.program_id(0) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    logit = tma_row_dots_behind_gemv(h_ptr, w_desc, n0, rank, USE_GDC, BLOCK_N, BLOCK_K, STAGES)
    list_and_sum_row(logit, offs_n, offs_n < d_ff, b_ptr, cut, counts_ptr, idx_ptr, out_ptr, bout_ptr, d_model,
                     HAS_BIAS, INIT_OUT, HAS_BOUT)


def predictor_hidden(x: torch.Tensor, down: torch.Tensor, relu: bool, pdl: bool = False,
                     norm: tuple | None = None, prefetch: bool = False) -> torch.Tensor:
    """act(x @ down^T) for one token [1, d_model] -> [1, rank] in down's dtype: the TMA GEMV where usable (with
    `pdl`, launched so that the list kernel's programs start during it; with `prefetch`, the GEMV whose programs load
    their whole rows before waiting for the kernel before it, triton_gemv_prefetch.py, where it can run), else F.linear
    (said once with the reason). `norm` (triton_gemv.gemv; the caller checked `gemv_unusable`): the GEMV computes x
    and writes it."""
    from .dispatch import warn_once
    from .triton_gemv import gemv, gemv_unusable
    from .triton_gemv_prefetch import gemv_rows_first
    x = x.reshape(1, -1) if norm is not None else x.reshape(1, -1).to(down.dtype)
    reason = gemv_unusable(x, down)
    if norm is not None and reason is not None:
        raise ValueError(f"predictor_hidden: norm needs the TMA GEMV, unavailable for {reason}")
    if reason is None:
        return (gemv_rows_first if prefetch else gemv)(x, down, relu=relu, pdl=pdl, norm=norm)
    warn_once(f"predictor list: the Triton GEMV is unavailable for the predictor's first layer ({reason}); F.linear")
    h = F.linear(x, down)
    return torch.relu(h) if relu else h


def launch_predictor_list(x: torch.Tensor, logits, counts: torch.Tensor, idx: torch.Tensor,
                          init_out: tuple | None = None, pdl: bool = False, norm: tuple | None = None,
                          prefetch: bool | None = None) -> None:
    """Append the neurons `logits` (a LowRankLogits) predicts active for the one token x [1, d_model] (or its
    `source`) to the union list (counts[0], idx), which must be empty; the list's order is arbitrary.
    `init_out` = (out, b_down or None): the list kernel also sets the fp32 row `out` [d_model] to b_down (or 0), for a
    rows kernel that adds its sums into it (launch_rows with sum_is_out), as the gate kernel does on the exact path.
    `pdl` (the caller checked `pdl_usable`): the GEMV lets the list kernel start at once; the list kernel's programs
    load their first tile of `up` while the GEMV runs and wait for it only to read h (`behind_gemv`), and let the
    kernel after them (the rows kernel, launched with PDL too) start at once.
    `norm` (no `source`): the GEMV computes x from the decoder layer's residual and attention output and writes it to
    x [1, d_model] (triton_gemv.gemv), for the rows kernel after it.
    `prefetch` (None: as `pdl`): the GEMV's programs load their whole rows before they wait for the kernel before them
    (triton_gemv_prefetch.py): behind an o projection launched with PDL (GemvLinear(pdl=True)) its weights stream while
    that runs. (The list kernel loading its whole rows first as well measured no faster: session 18, in history at
    `1e4d905`.)"""
    from .triton_gate_tma import tma_unusable
    down, up = logits.down, logits.up
    if up.stride(1) != 1 or up.stride(0) != up.shape[1]:
        up = up.contiguous()
    d_ff, rank = up.shape
    if norm is not None and logits.source is not None:
        raise ValueError("launch_predictor_list: norm with a predictor `source` (its GEMV would not read x)")
    prefetch = pdl if prefetch is None else prefetch
    h = predictor_hidden(x if logits.source is None else logits.source, down, bool(logits.relu_hidden), pdl, norm,
                         prefetch)
    bias = logits.bias if logits.bias is not None else up
    grid = lambda meta: (triton.cdiv(d_ff, meta["BLOCK_N"]),)  # noqa: E731
    out, b_out = init_out if init_out is not None else (counts, None)   # not written without INIT_OUT
    row = (out, b_out if b_out is not None else out)
    flags = dict(HAS_BIAS=logits.bias is not None, INIT_OUT=init_out is not None, HAS_BOUT=b_out is not None,
                 **launch_options(pdl))
    if tma_unusable(h, up) is None:
        from triton.tools.tensor_descriptor import TensorDescriptor
        desc = TensorDescriptor.from_tensor(up, [PREDICTOR_LIST_TMA_FIXED["BLOCK_N"],
                                                 PREDICTOR_LIST_TMA_FIXED["BLOCK_K"]])  # configs' hook sets it
        predictor_list_tma_kernel[grid](h, desc, bias, counts, idx, *row, rank, d_ff, out.shape[-1], float(logits.cut),
                                        **flags)
        return
    predictor_list_kernel[grid](h, up, bias, counts, idx, *row, rank, d_ff, out.shape[-1], float(logits.cut), **flags)
