"""ProSparse's L1 term and the zero count of `x1` in one read of `x1`, and their gradient in one pass.

Forward: sum |x1| (accumulated in fp32) and the number of exact zeros. On CUDA one Triton kernel reads x1
once; each program writes its partial sum and count, and torch adds the partials in a fixed order
(deterministic: no float atomics).
Backward: `L1WithZeroCount` passes x1 through, so it receives both the gradient flowing into x1 from
`down_proj` and the scalar gradient of the sum, and returns `g_x1 + g_sum * sign(x1)` in one elementwise
kernel instead of autograd's sgn, multiply and accumulate (three passes, two temporaries).
Plain PyTorch computes the same on CPU, for fp64, and without Triton (CUDA then logs one warning).
Normalization (mean, per token) stays outside, on the scalar, so autograd scales `g_sum`.
"""
from __future__ import annotations

import logging
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works; CUDA tensors then log one warning
    triton = None

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")
# "auto": Triton for fp16/bf16/fp32 CUDA tensors, torch otherwise. "triton" also takes CPU tensors under
# the interpreter (TRITON_INTERPRET=1), which is how the tests run the kernels without a GPU.
BACKEND = "auto"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Elements per program. Under the interpreter small, so small test tensors still span several programs.
SUM_BLOCK, GRAD_BLOCK = (256, 256) if INTERPRET else (8192, 4096)
SUM_WARPS, GRAD_WARPS = 8, 8

_warned_no_triton = False


def _use_triton(x1: torch.Tensor, backend: str | None) -> bool:
    backend = BACKEND if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown L1 backend {backend!r}; supported: {', '.join(BACKENDS)}")
    if backend == "torch" or x1.dtype not in TRITON_DTYPES:
        return False  # fp64 (and any other dtype) always takes the torch path
    if backend == "triton":
        if triton is None or not (x1.is_cuda or INTERPRET):
            raise RuntimeError("L1 backend 'triton' needs triton, and a CUDA tensor or TRITON_INTERPRET=1")
        return True
    if not x1.is_cuda:
        return False
    if triton is None:
        global _warned_no_triton
        if not _warned_no_triton:
            _warned_no_triton = True
            log.warning("triton is not installed: the L1 term and zero count of x1 run in plain PyTorch "
                        "(several passes over x1 per layer instead of one); pip install triton")
        return False
    return True


def zero_count(x1: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Number of exact zeros in x1 (int64 scalar, on x1's device; no host synchronization)."""
    if _use_triton(x1, backend):
        return _abs_sum_and_zero_count(x1, True, True)[1]  # the sum comes free with the same read
    return (x1 == 0).sum()


def l1_with_zero_count(x1: torch.Tensor, count_zeros: bool, backend: str | None = None):
    """(x1 to use downstream, sum |x1|, zero count or None); gradients flow through the first two."""
    return L1WithZeroCount.apply(x1, count_zeros, _use_triton(x1, backend))


class L1WithZeroCount(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1: torch.Tensor, count_zeros: bool, use_triton: bool):
        abs_sum, zeros = _abs_sum_and_zero_count(x1, count_zeros, use_triton)
        ctx.save_for_backward(x1)  # down_proj saves the same storage: nothing extra stays alive
        ctx.use_triton = use_triton
        ctx.set_materialize_grads(False)  # a missing gradient arrives as None, not as a tensor of zeros
        if zeros is not None:
            ctx.mark_non_differentiable(zeros)
        return x1.view_as(x1), abs_sum, zeros

    @staticmethod
    def backward(ctx, g_x1, g_sum, _g_zeros):
        if g_sum is None:  # the sum was not used in the loss: pass the gradient through untouched
            return g_x1, None, None
        (x1,) = ctx.saved_tensors
        if ctx.use_triton:
            return _triton_grad(g_x1, g_sum, x1), None, None
        grad = x1.sign() * g_sum  # what autograd of vector_norm(x1, 1) computes
        return (grad if g_x1 is None else g_x1 + grad), None, None


def _abs_sum_and_zero_count(x1: torch.Tensor, count_zeros: bool, use_triton: bool):
    """(sum |x1| as an fp32 scalar (fp64 for fp64 x1), number of exact zeros as an int64 scalar or None); no
    autograd (`L1WithZeroCount` is the differentiable form)."""
    if not use_triton:
        acc_dtype = torch.float64 if x1.dtype == torch.float64 else torch.float32
        abs_sum = torch.linalg.vector_norm(x1.detach(), 1, dtype=acc_dtype)
        return abs_sum, ((x1 == 0).sum() if count_zeros else None)
    x = x1.detach().contiguous()
    n = x.numel()
    programs = triton.cdiv(n, SUM_BLOCK)
    sums = torch.empty(programs, dtype=torch.float32, device=x.device)
    zeros = torch.empty(programs if count_zeros else 0, dtype=torch.int32, device=x.device)
    if programs:
        _abs_sum_zero_count_kernel[(programs,)](x, sums, zeros, n, COUNT_ZEROS=count_zeros, BLOCK=SUM_BLOCK,
                                                num_warps=SUM_WARPS)
    return sums.sum(), (zeros.sum(dtype=torch.int64) if count_zeros else None)


def _triton_grad(g_x1: torch.Tensor | None, g_sum: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    x = x1.contiguous()
    g = x if g_x1 is None else g_x1.to(x.dtype).contiguous()  # x: a valid pointer, never read
    out = torch.empty_like(x)
    if x.numel():
        grid = (triton.cdiv(x.numel(), GRAD_BLOCK),)
        _l1_grad_kernel[grid](g, x, g_sum.detach().reshape(()), out, x.numel(), HAS_G=g_x1 is not None,
                              BLOCK=GRAD_BLOCK, num_warps=GRAD_WARPS)
    return out.view_as(x1)


if triton is not None:
    @triton.jit
    def _abs_sum_zero_count_kernel(x_ptr, sums_ptr, zeros_ptr, n, COUNT_ZEROS: tl.constexpr, BLOCK: tl.constexpr):
        """Program p: sum |x| (fp32) and the count of exact zeros over elements [p*BLOCK, (p+1)*BLOCK)."""
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        in_range = offs < n
        x = tl.load(x_ptr + offs, mask=in_range, other=0.0)
        tl.store(sums_ptr + pid, tl.sum(tl.abs(x.to(tl.float32)), axis=0))
        if COUNT_ZEROS:
            tl.store(zeros_ptr + pid, tl.sum(((x == 0) & in_range).to(tl.int32), axis=0))

    @triton.jit
    def _l1_grad_kernel(g_ptr, x_ptr, s_ptr, out_ptr, n, HAS_G: tl.constexpr, BLOCK: tl.constexpr):
        """out = g + s * sign(x), in fp32, rounded once to x's dtype (sign(NaN) stays NaN, as in torch)."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        in_range = offs < n
        x = tl.load(x_ptr + offs, mask=in_range, other=0.0).to(tl.float32)
        sign = tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, x))
        out = tl.load(s_ptr).to(tl.float32) * sign
        if HAS_G:
            out += tl.load(g_ptr + offs, mask=in_range, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=in_range)
