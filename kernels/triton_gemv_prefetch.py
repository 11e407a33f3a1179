"""The predictor's first layer as a one-token GEMV whose weights are loaded before it waits for the kernel before it.

In a decode step with `--fuse-ffn-norm` the predictor path runs the o projection (triton_gemv.py), then the
predictor's first layer `act(x @ down^T)` with the post-attention add + RMSNorm computed in it (NORM), then the list
and rows kernels. The first layer reads only 2.9 MB (rank 360 x 4096, fp16) but took ~4 µs per layer (profile_decode,
H100, session 17): one DRAM round trip per tile, behind the o projection's tail. With programmatic dependent launch
(pdl.py) this kernel's programs are scheduled while the o projection still runs (it lets them launch as it starts),
so each program loads its whole rows here (BLOCK_N rows x d_in, in registers) before `griddepcontrol.wait`; what is
left after the o projection ends is reading h (residual + attn_out, in L2), the norm and the sums.

Program p computes rows p * BLOCK_N .. of y = W x (+ b), relu with RELU; x read (NORM off) or computed from the
decoder layer's residual and attention output (NORM: x = RMSNorm(residual + attn_out) scaled by the norm weight,
rstd taken out of the sums as in triton_gate_tma.tma_row_dots_norm; program 0 writes h and the rounded x). It lets the
next kernel (the list kernel) launch as it starts. d_in up to MAX_PREFETCH_D (a whole row per load); wider models
keep the TMA GEMV.

The o projection launched with PDL (GemvLinear(pdl=True), triton_gemv.gemv_op) runs as this kernel too: the decode
attention kernel lets it launch as it starts, so its programs that fit beside the attention's load their rows of W_o
while the attention runs. H100, 32-layer 7B decode (session 18): predictor path 1.88x -> 1.96x with the first piece,
1.97x with both (the second took 1.8 µs per layer off the dense step as well).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import GEMV_PREFETCH_CONFIGS, GEMV_PREFETCH_FIXED, tuned
from .triton_gate_tma import norm_args, normed_x, residual_sum, row_bias

MAX_PREFETCH_D = 8192   # whole rows in registers: BLOCK_N x 8192 fp16 at the configs' warps


@tuned(GEMV_PREFETCH_CONFIGS, GEMV_PREFETCH_FIXED, key=["n_out", "d_in", "HAS_BIAS", "RELU", "NORM"])
@triton.jit
def gemv_prefetch_kernel(x_ptr, w_ptr, b_ptr, out_ptr, n_out, d_in, res_ptr, attn_ptr, nw_ptr, h_ptr, eps,
                         HAS_BIAS: tl.constexpr, RELU: tl.constexpr, NORM: tl.constexpr,
                         NORM_BLOCK: tl.constexpr,   # norm_args' flag for the TMA kernels; whole rows here
                         USE_GDC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    if USE_GDC:   # the list kernel after this one may be scheduled from now on (it waits for this one's end)
        tl.extra.cuda.gdc_launch_dependents()
    n0 = tl.program_id(0) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < d_in
    w = tl.load(w_ptr + offs_n.to(tl.int64)[:, None] * d_in + offs_d[None, :],
                mask=(offs_n < n_out)[:, None] & d_mask[None, :], other=0.0)
    if USE_GDC:   # the weights are in flight; x (or residual and attn_out) is written by the kernel before this one
        tl.extra.cuda.gdc_wait()
    if NORM:
        h16 = residual_sum(res_ptr, attn_ptr, offs_d, d_mask)
        h = h16.to(tl.float32)
        weight = tl.load(nw_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(h * h, 0) / d_in + eps)
        y = tl.sum(w.to(tl.float32) * (weight * h)[None, :], 1) * rstd
        if tl.program_id(0) == 0:   # for the kernels after this one and the layer's last residual add
            tl.store(h_ptr + offs_d, h16, mask=d_mask)
            tl.store(x_ptr + offs_d, normed_x(h16, weight, rstd), mask=d_mask)
    else:
        xv = tl.load(x_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
        y = tl.sum(w.to(tl.float32) * xv[None, :], 1)
    y, _, n_mask = row_bias(y, b_ptr, n0, n_out, HAS_BIAS, BLOCK_N)
    if RELU:
        y = tl.maximum(y, 0.0)
    tl.store(out_ptr + offs_n, y, mask=n_mask)


def gemv_prefetch_unusable(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Why `gemv_prefetch(x, weight)` cannot run (None: it can)."""
    from .triton_gemv import gemv_unusable
    if weight.shape[1] > MAX_PREFETCH_D:
        return f"d_in {weight.shape[1]} (whole rows up to {MAX_PREFETCH_D})"
    if weight.stride(1) != 1 or weight.stride(0) != weight.shape[1]:
        return "a weight whose rows are not contiguous"
    return gemv_unusable(x, weight)


def gemv_prefetch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False,
                  pdl: bool = False, norm: tuple | None = None) -> torch.Tensor:
    """triton_gemv.gemv's contract (x [..., d_in] of one token -> [..., n_out]; `norm` = (residual, attn_out, norm
    weight, eps, h_out) computes and writes x) with each program's rows loaded before it waits for the previous
    kernel (`pdl`: launched with programmatic dependent launch; the caller checked `pdl_usable` and
    `gemv_prefetch_unusable`)."""
    from .pdl import launch_options
    n_out, d_in = weight.shape
    if norm is not None and not x.is_contiguous():
        raise ValueError("gemv_prefetch with norm writes x: x must be contiguous")
    out = torch.empty(*x.shape[:-1], n_out, dtype=x.dtype, device=x.device)
    norm_ptrs, norm_flags = norm_args(x, norm)
    grid = lambda meta: (triton.cdiv(n_out, meta["BLOCK_N"]),)  # noqa: E731
    gemv_prefetch_kernel[grid](x.contiguous(), weight, bias if bias is not None else weight, out, n_out, d_in,
                               *norm_ptrs, HAS_BIAS=bias is not None, RELU=relu, **norm_flags,
                               BLOCK_D=triton.next_power_of_2(d_in), **launch_options(pdl))
    return out


def gemv_rows_first(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False,
                    pdl: bool = False, norm: tuple | None = None) -> torch.Tensor:
    """`gemv_prefetch` where it can run, else triton_gemv.gemv with the same arguments, said once with the reason
    (the caller checked `gemv_unusable`): the o projection with PDL and the predictor's first layer take it."""
    from .dispatch import warn_once
    from .triton_gemv import gemv
    reason = gemv_prefetch_unusable(x, weight)
    if reason is None:
        return gemv_prefetch(x, weight, bias, relu=relu, pdl=pdl, norm=norm)
    warn_once(f"the GEMV loading its rows before the wait is unavailable for {reason}; the TMA GEMV")
    return gemv(x, weight, bias, relu=relu, pdl=pdl, norm=norm)
