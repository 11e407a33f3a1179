"""A one-token GEMV (y = W x + b) with the weight tiles loaded through TMA, for the projections a decode step shares
between the dense and the sparse model (`bench_decode --gemv-o`: each attention's o projection).

Why: at one token cuBLAS runs a 4096x4096 fp16 GEMV as split-K plus a reduce kernel, 15.5 µs for 33.5 MB (2.2 TB/s;
profile_decode on an H100, session 9), while the TMA gate kernel (triton_gate_tma.py, the same loop without the
activation) reads an 11008x4096 matrix at ~2.8 TB/s. Program p computes BLOCK_N outputs over whole rows, `STAGES`
[BLOCK_N, BLOCK_K] tiles in flight, the sum in fp32; no split, no second kernel.

`GemvLinear` replaces an nn.Linear: one token on a GPU with TMA (compute capability 9.0+, 16-byte aligned rows)
through this kernel, anything else (prefill, CPU without the interpreter, other devices) through F.linear, said once.
Inside torch.compile it is one opaque custom op (`actsparse::gemv`), like the sparse FFN.
With `norm` (the predictor's first layer after fused_ffn_norm.py), x is computed in the kernel from the decoder
layer's residual and attention output (NORM: triton_gate_tma.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import nn
from torch.nn import functional as F

from . import configs
from .configs import GEMV_CONFIGS, GEMV_FIXED, tuned
from .pdl import gdc_start, launch_options
from .triton_gate_tma import norm_args, tma_row_dots_x


@tuned(GEMV_CONFIGS, GEMV_FIXED, key=["n_out", "d_in", "HAS_BIAS", "RELU", "NORM"])
@triton.jit
def gemv_kernel(x_ptr, w_desc, b_ptr, out_ptr, n_out, d_in, res_ptr, attn_ptr, nw_ptr, h_ptr, eps,
                HAS_BIAS: tl.constexpr, RELU: tl.constexpr, NORM: tl.constexpr, NORM_BLOCK: tl.constexpr,
                USE_GDC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    gdc_start(USE_GDC)  # with PDL the kernel after it (the predictor's list kernel) starts loading its weights now
    y, offs_n, n_mask = tma_row_dots_x(x_ptr, res_ptr, attn_ptr, nw_ptr, h_ptr, eps, w_desc, b_ptr,
                                       tl.program_id(0) * BLOCK_N, n_out, d_in, HAS_BIAS, NORM, NORM_BLOCK, BLOCK_N,
                                       BLOCK_K, STAGES)
    if RELU:
        y = tl.maximum(y, 0.0)
    tl.store(out_ptr + offs_n, y, mask=n_mask)


def gemv_unusable(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Why `gemv(x, weight)` cannot run this kernel (None: it can)."""
    from .triton_gate_tma import tma_unusable
    if x.numel() != weight.shape[1]:
        return f"{x.numel() // max(1, weight.shape[1])} tokens (the GEMV serves one)"
    if not configs.INTERPRET and x.device.type != "cuda":
        return f"a {x.device.type} tensor without TRITON_INTERPRET=1"
    if x.dtype != weight.dtype:
        return f"x in {x.dtype}, weights in {weight.dtype}"
    return tma_unusable(x.reshape(1, -1), weight)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, relu: bool = False,
         pdl: bool = False, norm: tuple | None = None) -> torch.Tensor:
    """x [..., d_in] holding one token, weight [n_out, d_in] -> [..., n_out] in x's dtype, through relu with `relu`
    (the caller checked `gemv_unusable`). `pdl`: launched with programmatic dependent launch, letting the next
    kernel's programs start at once (pdl.py; the caller checked `pdl_usable`). `norm` = (residual, attn_out, norm
    weight, eps, h_out): x (contiguous) is not read but written, the RMSNorm of h = residual + attn_out computed in
    the kernel, and h goes to h_out (triton_gate_tma.norm_args)."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    n_out, d_in = weight.shape
    out = torch.empty(*x.shape[:-1], n_out, dtype=x.dtype, device=x.device)
    desc = TensorDescriptor.from_tensor(weight, [GEMV_FIXED["BLOCK_N"], GEMV_FIXED["BLOCK_K"]])  # configs' hook sets it
    grid = lambda meta: (triton.cdiv(n_out, meta["BLOCK_N"]),)  # noqa: E731
    if norm is not None and not x.is_contiguous():
        raise ValueError("gemv with norm writes x: x must be contiguous")
    norm_ptrs, norm_flags = norm_args(x, norm)
    gemv_kernel[grid](x.contiguous(), desc, bias if bias is not None else weight, out, n_out, d_in, *norm_ptrs,
                      HAS_BIAS=bias is not None, RELU=relu, **norm_flags, **launch_options(pdl))
    return out


def gemv_chained(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, pdl: bool = False,
                 norm: tuple | None = None) -> torch.Tensor:
    """`gemv` (the caller checked `gemv_unusable`) or, with `pdl` where usable (said once where not), the GEMV that
    loads its programs' whole rows before it waits for the kernel before it, launched with PDL
    (triton_gemv_prefetch.gemv_rows_first): the o projection (`gemv_op`) and the q/k/v product with the input norm
    (fused_qkv_norm.py) take it."""
    from .pdl import pdl_usable
    if pdl and pdl_usable(x.device):
        from .triton_gemv_prefetch import gemv_rows_first
        return gemv_rows_first(x, weight, bias, pdl=True, norm=norm)
    return gemv(x, weight, bias, norm=norm)


@torch.library.custom_op("actsparse::gemv", mutates_args=())
def gemv_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pdl: bool = False) -> torch.Tensor:
    """`gemv` as one opaque op for torch.compile; F.linear where the kernel cannot run (said once per reason).
    `pdl`: launched with programmatic dependent launch where usable (said once where not) as the GEMV that loads its
    programs' whole rows before it waits for the kernel before it (triton_gemv_prefetch.py; where that cannot run,
    this TMA GEMV with PDL): behind the decode attention kernel, which lets it launch as it starts, the o projection's
    weights stream during the attention; and the kernel after it (the predictor's first layer) is scheduled while it
    runs."""
    reason = gemv_unusable(x, weight)
    if reason is None:
        return gemv_chained(x, weight, bias, pdl)
    from .dispatch import warn_once
    warn_once(f"GemvLinear: the Triton GEMV is unavailable for {reason}; F.linear")
    return F.linear(x, weight, bias)


@gemv_op.register_fake
def _gemv_fake(x, weight, bias, pdl=False):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class GemvLinear(nn.Module):
    """An nn.Linear's weight and bias (shared, not copied) computed through `gemv` at one token, F.linear otherwise.
    `pdl`: the one-token kernel launched with programmatic dependent launch (`gemv_op`)."""

    def __init__(self, linear: nn.Linear, pdl: bool = False):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.pdl = pdl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() == 1:   # static under torch.compile: the decode step's variant takes the op
            return gemv_op(x, self.weight, self.bias, self.pdl)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, one token through triton_gemv"
                f"{' with PDL' if self.pdl else ''}")


def use_gemv(model: nn.Module, names: tuple[str, ...] = ("o_proj",), pdl: bool = False) -> int:
    """Replace every nn.Linear child called one of `names` by a GemvLinear (in place; `pdl`: launched with PDL).
    Returns how many; raises ValueError if none."""
    swapped = 0
    for module in list(model.modules()):
        for name in names:
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                setattr(module, name, GemvLinear(child, pdl))
                swapped += 1
    if not swapped:
        raise ValueError(f"{type(model).__name__} has no nn.Linear named {', '.join(names)} to run as a GEMV")
    return swapped
