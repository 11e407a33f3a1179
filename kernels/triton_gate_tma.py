"""The one-token gate kernel with its weight tiles loaded through TMA (Hopper's tensor memory accelerator).

Same work as `gate_kernel` at one token (triton_gate.py): act(x . w_gate[j] + b[j]) for BLOCK_N neurons per program,
written to the act(gate) buffer, the active neurons appended to the list with one atomic. The gate rows come as
[BLOCK_N, BLOCK_K] tiles through a host tensor descriptor, `STAGES` tiles in flight in shared memory, instead of
per-thread 16-byte loads into registers. H100, 7B (90 MB, bench_gate_probe, session 9): a TMA GEMV read the matrix
in 32.2-32.4 µs where the gate kernel took ~33.5 µs and cuBLAS 35.1 µs.

TMA needs compute capability 9.0+, a Triton with `triton.tools.tensor_descriptor`, and rows whose byte stride and
start are multiples of 16 (d_model a multiple of 8 in fp16 / bf16); `tma_unusable` says why not, and the caller runs
the plain kernel then (said once in the log). Under the interpreter the descriptor is emulated, so CPU tests run it.

NORM (this kernel and the GEMV, triton_gemv.py): x is not read but computed, the decoder layer's residual add and
RMSNorm before the FFN fused in (fused_ffn_norm.py): every program sums w[row] . (weight * h) for h = residual +
attn_out chunk by chunk, with the squares of h beside it, and scales the sums by rstd at the end
(`tma_row_dots_norm`); program 0 then writes h and x = weight * (h * rstd) as LlamaRMSNorm rounds it (x_ptr), which
the kernels after it and the layer's last residual add read.
"""
from __future__ import annotations

import functools
import importlib.util

import torch
import triton
import triton.language as tl

from . import configs
from .configs import GATE_TMA_CONFIGS, GATE_TMA_FIXED, tuned
from .pdl import gdc_start, launch_options
from .triton_gate import ACT_CODES, append_union, gate_act, reserve_union
from .triton_up_down import writes_done


@triton.jit
def prefetch_rows_to_l2(w_ptr, rows, flags, d_model):
    """One bulk L2 prefetch (Hopper `cp.async.bulk.prefetch.L2`) of row `rows[i]` of `w` ([*, d_model], rows of a
    multiple of 16 bytes) where flags[i] != 0; nothing waits for it, and no value is read here. The [BLOCK_N]
    vectors are widened to [BLOCK_N, 64] with only column 0 issuing, so that a layout replicating a short vector
    over the threads does not send the same prefetch several times."""
    cols = tl.arange(0, 64)[None, :]
    ptrs = w_ptr + rows.to(tl.int64)[:, None] * d_model + 0 * cols
    issue = ((flags[:, None] != 0) & (cols == 0)).to(tl.int32)
    row_bytes = d_model * (w_ptr.dtype.element_ty.primitive_bitwidth // 8) + 0 * issue
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $3; mov.u32 $0, 0; }",
        "=r,l,r,r", [ptrs, issue, row_bytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def publish_entries(live, offs_n, a, n_covered, counts_ptr, entries_ptr, done_ptr, FENCE: tl.constexpr):
    """STREAM mode: append the live neurons as packed int64 entries (act(gate) bits << 32 | neuron id; one 8-byte
    store each, so a reader that sees an entry sees both halves), then add the neurons this program covered to
    `done`, released after every thread's stores (the stream consumer, triton_stream_rows.py, waits for done = d_ff
    before it trusts the list length)."""
    base, rank = reserve_union(live, counts_ptr)
    packed = (a.to(tl.int32, bitcast=True).to(tl.int64) << 32) | offs_n.to(tl.int64)
    tl.store(entries_ptr + base + rank - 1, packed, mask=live > 0)
    writes_done(FENCE)
    tl.atomic_add(done_ptr, n_covered, sem="release")


@triton.jit
def tma_row_dots(x_ptr, w_desc, n0, d_in, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """x . w[n0 + i] for i < BLOCK_N, fp32 [BLOCK_N]: [BLOCK_N, BLOCK_K] tiles of w through the TMA descriptor, STAGES
    in flight (rows past the matrix and columns past d_in arrive as zeros)."""
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in tl.range(0, d_in, BLOCK_K, num_stages=STAGES):
        w = w_desc.load([n0, k0])
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xv = tl.load(x_ptr + offs_k, mask=offs_k < d_in, other=0.0).to(tl.float32)
        acc += w.to(tl.float32) * xv[None, :]
    return tl.sum(acc, 1)


@triton.jit
def row_bias(y, b_ptr, n0, n_rows, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr):
    """(y + b[rows] where HAS_BIAS, rows n0 + i for i < BLOCK_N, rows < n_rows)."""
    rows = n0 + tl.arange(0, BLOCK_N)
    r_mask = rows < n_rows
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=r_mask, other=0.0).to(tl.float32)
    return y, rows, r_mask


@triton.jit
def tma_row_dots_bias(x_ptr, w_desc, b_ptr, n0, n_rows, d_in, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """(y, rows, row mask) for rows n0 + i, i < BLOCK_N, of w [n_rows, d_in]: y = x . w[row] (+ b[row]) in fp32, as
    `tma_row_dots` reads them. The one-token TMA kernels (gate, GEMV, predictor list) each start with this."""
    return row_bias(tma_row_dots(x_ptr, w_desc, n0, d_in, BLOCK_N, BLOCK_K, STAGES), b_ptr, n0, n_rows, HAS_BIAS,
                    BLOCK_N)


@triton.jit
def residual_sum(res_ptr, attn_ptr, offs, mask):
    """h = residual + attn_out at `offs` in the residual's dtype: the sum in fp32, rounded once (as torch adds fp16 /
    bf16). An fp32 attn_out (the sparse FFN's sum, fused_qkv_norm.py) is rounded to that dtype first, as the layer's
    cast before its add rounds it."""
    r = tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(attn_ptr + offs, mask=mask, other=0.0).to(res_ptr.dtype.element_ty).to(tl.float32)
    return (r + a).to(res_ptr.dtype.element_ty)


@triton.jit
def normed_x(h, weight, rstd):
    """x = weight * (h * rstd) in h's dtype with LlamaRMSNorm's roundings (h * rstd in fp32 rounded to the input
    dtype, then the product with the fp32 weight rounded again)."""
    return (weight * (h.to(tl.float32) * rstd).to(h.dtype).to(tl.float32)).to(h.dtype)


@triton.jit
def write_h_and_x(res_ptr, attn_ptr, nw_ptr, rstd, d_model, x_ptr, h_ptr, BLOCK: tl.constexpr):
    """Store h = `residual_sum` and x = `normed_x` over all of d_model, BLOCK columns per step: what the kernels after
    the first one, and the layer's last residual add, read."""
    for k0 in range(0, d_model, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        mask = offs < d_model
        h = residual_sum(res_ptr, attn_ptr, offs, mask)
        weight = tl.load(nw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(h_ptr + offs, h, mask=mask)
        tl.store(x_ptr + offs, normed_x(h, weight, rstd), mask=mask)


@triton.jit
def tma_row_dots_norm(res_ptr, attn_ptr, nw_ptr, h_ptr, eps, x_ptr, w_desc, n0, d_in, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, STAGES: tl.constexpr, NORM_BLOCK: tl.constexpr):
    """`tma_row_dots` of x = RMSNorm(residual + attn_out) (NORM), with the norm's scalar taken out of the sum:
    rstd * sum_k w[row, k] * (weight[k] * h[k]) in fp32, the squares of h summed in the same loop. No program waits
    for a reduction before its weight tiles stream (session 16's form, the whole row reduced first, cost 1.7-1.9 µs
    per kernel at the 7B shape). x is not rounded to the input dtype inside the sums (the float64 norm, not
    LlamaRMSNorm's rounded one, within fp32). Program 0 then writes h and the rounded x (`write_h_and_x`,
    NORM_BLOCK columns per step)."""
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    squares = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in tl.range(0, d_in, BLOCK_K, num_stages=STAGES):
        w = w_desc.load([n0, k0])
        offs = k0 + tl.arange(0, BLOCK_K)
        mask = offs < d_in
        h = residual_sum(res_ptr, attn_ptr, offs, mask).to(tl.float32)
        weight = tl.load(nw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        squares += h * h
        acc += w.to(tl.float32) * (weight * h)[None, :]
    rstd = tl.math.rsqrt(tl.sum(squares, 0) / d_in + eps)
    if tl.program_id(0) == 0:
        write_h_and_x(res_ptr, attn_ptr, nw_ptr, rstd, d_in, x_ptr, h_ptr, NORM_BLOCK)
    return tl.sum(acc, 1) * rstd


@triton.jit
def tma_row_dots_x(x_ptr, res_ptr, attn_ptr, nw_ptr, h_ptr, eps, w_desc, b_ptr, n0, n_rows, d_in,
                   HAS_BIAS: tl.constexpr, NORM: tl.constexpr, NORM_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """`tma_row_dots_bias` with x read (NORM off) or computed by the fused add + RMSNorm (NORM: `tma_row_dots_norm`)."""
    if NORM:
        y = tma_row_dots_norm(res_ptr, attn_ptr, nw_ptr, h_ptr, eps, x_ptr, w_desc, n0, d_in, BLOCK_N, BLOCK_K, STAGES,
                              NORM_BLOCK)
    else:
        y = tma_row_dots(x_ptr, w_desc, n0, d_in, BLOCK_N, BLOCK_K, STAGES)
    return row_bias(y, b_ptr, n0, n_rows, HAS_BIAS, BLOCK_N)


MAX_NORM_BLOCK = 8192   # program 0 writes h and x in steps of up to this many columns


def norm_args(x: torch.Tensor, norm: tuple | None) -> tuple[tuple, dict]:
    """((res, attn, norm weight, h, eps) kernel arguments, dict(NORM, NORM_BLOCK)) for `norm` = (residual, attn_out,
    norm weight, eps, h_out): residual / attn_out / h_out [1, d_model] and the weight [d_model], contiguous, in x's
    dtype (attn_out also float32: the sparse FFN's sum, rounded to x's dtype in the kernel); x [1, d_model] is then
    where program 0 writes the normed x. None: NORM off, x stands in for the pointers not read."""
    if norm is None:
        return (x, x, x, x, 0.0), dict(NORM=False, NORM_BLOCK=1)
    residual, attn_out, weight, eps, h_out = norm
    for t in (residual, attn_out, weight, h_out):
        if (t.dtype != x.dtype and (t is not attn_out or t.dtype != torch.float32)) or t.numel() != x.numel() \
                or not t.is_contiguous():
            raise ValueError(f"norm: residual, attn_out, weight and h_out contiguous with {x.numel()} elements in "
                             f"{x.dtype} (attn_out also float32); got {tuple(t.shape)} {t.dtype}")
    return (residual, attn_out, weight, h_out, float(eps)), dict(
        NORM=True, NORM_BLOCK=min(triton.next_power_of_2(x.numel()), MAX_NORM_BLOCK))


@triton.jit
def init_sum_row(out_ptr, b_ptr, d_model, HAS_B: tl.constexpr):
    """out[:d_model] = b (fp32), or 0 without a bias: the first programs take 512 columns each (grid-strided), so the
    rows kernel that follows can add its sums straight into `out` (triton_rows_ffn.py, SUM_IS_OUT)."""
    offs = tl.arange(0, 512)
    for c0 in range(tl.program_id(0) * 512, d_model, tl.num_programs(0) * 512):
        cols = c0 + offs
        c_mask = cols < d_model
        if HAS_B:
            tl.store(out_ptr + cols, tl.load(b_ptr + cols, mask=c_mask, other=0.0).to(tl.float32), mask=c_mask)
        else:
            tl.store(out_ptr + cols, tl.zeros([512], dtype=tl.float32), mask=c_mask)


@tuned(GATE_TMA_CONFIGS, GATE_TMA_FIXED, key=["d_model", "d_ff", "PREFETCH", "STREAM", "INIT_OUT", "NORM"],
       reset_to_zero=["counts_ptr", "done_ptr"], restore_value=["entries_ptr"])
@triton.jit
def gate_tma_kernel(x_ptr, wg_desc, bg_ptr, gact_ptr, counts_ptr, idx_ptr, wu_ptr, wdt_ptr, entries_ptr, done_ptr,
                    out_ptr, bout_ptr, res_ptr, attn_ptr, nw_ptr, h_ptr, eps, d_model, d_ff, threshold,
                    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, USE_GDC: tl.constexpr, PREFETCH: tl.constexpr,
                    STREAM: tl.constexpr, INIT_OUT: tl.constexpr, HAS_BOUT: tl.constexpr, NORM: tl.constexpr,
                    NORM_BLOCK: tl.constexpr, FENCE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    STAGES: tl.constexpr):
    gdc_start(USE_GDC)
    if INIT_OUT:  # the fp32 output row the rows kernel sums into: b_down, or 0
        init_sum_row(out_ptr, bout_ptr, d_model, HAS_BOUT)
    n0 = tl.program_id(0) * BLOCK_N
    g, offs_n, n_mask = tma_row_dots_x(x_ptr, res_ptr, attn_ptr, nw_ptr, h_ptr, eps, wg_desc, bg_ptr, n0, d_ff,
                                       d_model, HAS_BIAS, NORM, NORM_BLOCK, BLOCK_N, BLOCK_K, STAGES)
    a = gate_act(g, threshold, ACT)
    live = (n_mask & (a != 0.0)).to(tl.int32)
    if STREAM:  # no act(gate) buffer, no id list: packed entries for the concurrent consumer
        publish_entries(live, offs_n, a, tl.minimum(BLOCK_N, d_ff - n0), counts_ptr, entries_ptr, done_ptr, FENCE)
    else:
        tl.store(gact_ptr + offs_n, a, mask=n_mask)
        append_union(live, offs_n, counts_ptr, idx_ptr)
    if PREFETCH:  # the rows kernel reads these up and W_down^T rows next: start them towards L2 now
        prefetch_rows_to_l2(wu_ptr, offs_n, live, d_model)
        prefetch_rows_to_l2(wdt_ptr, offs_n, live, d_model)


@functools.lru_cache(maxsize=None)
def _device_reason(device: torch.device) -> str | None:
    """Why no call on `device` can use TMA (None: the device and this Triton can); asked once per device, not on
    every call (as pdl.py does)."""
    if not configs.INTERPRET and (device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9):
        return "a device below compute capability 9.0"
    if importlib.util.find_spec("triton.tools.tensor_descriptor") is None:
        return f"triton {triton.__version__} (no triton.tools.tensor_descriptor)"
    return None


def tma_unusable(x: torch.Tensor, w_gate: torch.Tensor) -> str | None:
    """Why this call cannot load the gate rows through TMA (None: it can)."""
    if x.shape[0] != 1:
        return f"{x.shape[0]} tokens (the TMA gate kernel serves one)"
    reason = _device_reason(x.device)
    if reason is not None:
        return reason
    row_bytes = w_gate.stride(0) * w_gate.element_size()
    if w_gate.stride(1) != 1 or row_bytes % 16 or w_gate.data_ptr() % 16:
        return f"gate rows of {row_bytes} bytes (TMA needs 16-byte aligned rows: d_model a multiple of 8 in fp16)"
    return None


def launch_gate_tma(x: torch.Tensor, w_gate: torch.Tensor, b_gate: torch.Tensor | None, act: str, threshold: float,
                    gate_act_out: torch.Tensor | None, counts: torch.Tensor, idx: torch.Tensor | None, pdl: bool = False,
                    prefetch: tuple | None = None, stream: tuple | None = None, init_out: tuple | None = None,
                    norm: tuple | None = None):
    """As launch_gate at one token (list 0 in `counts` / `idx`); the caller checked `tma_unusable`.
    `prefetch` = (w_up, w_down_t), fp16 / bf16 [d_ff, d_model] on a GPU: each program sends its active neurons' rows
    of both towards L2 (bulk prefetches, nothing waits on them) for the rows kernel that follows.
    `stream` = (entries, done): STREAM mode for the concurrent consumer (triton_stream_rows.py): the active neurons
    go to `entries` (int64 [d_ff], -1 where empty) as packed (act(gate) bits, id) at positions reserved in counts[0],
    and each program adds the neurons it covered to `done` (int32 [1]); `gate_act_out` and `idx` are not written.
    `init_out` = (out, b_down or None): the kernel also sets the fp32 row `out` [d_model] to b_down (or 0), for a rows
    kernel that adds its sums into it (launch_rows with sum_is_out).
    `norm` = (residual, attn_out, norm weight, eps, h_out): NORM (`norm_args`): x is the decoder layer's
    post-attention RMSNorm of h = residual + attn_out, computed here; program 0 writes h to h_out and x to `x`.
    Returns the launched CompiledKernel."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    d_ff, d_model = w_gate.shape
    block = [GATE_TMA_FIXED["BLOCK_N"], GATE_TMA_FIXED["BLOCK_K"]]   # on a GPU each config's pre-hook sets it
    desc = TensorDescriptor.from_tensor(w_gate, block)
    grid = lambda meta: (triton.cdiv(d_ff, meta["BLOCK_N"]),)  # noqa: E731
    w_up, w_down_t = prefetch if prefetch is not None else (w_gate, w_gate)
    entries, done = stream if stream is not None else (x, counts[:1])  # not read or written without STREAM
    out, b_out = init_out if init_out is not None else (counts, None)
    norm_ptrs, norm_flags = norm_args(x, norm)
    return gate_tma_kernel[grid](x, desc, b_gate if b_gate is not None else w_gate,
                                 gate_act_out if gate_act_out is not None else counts, counts,
                                 idx if idx is not None else counts, w_up, w_down_t, entries, done, out,
                                 b_out if b_out is not None else out, *norm_ptrs, d_model, d_ff, float(threshold),
                                 ACT=ACT_CODES[act], HAS_BIAS=b_gate is not None, PREFETCH=prefetch is not None,
                                 STREAM=stream is not None, INIT_OUT=init_out is not None, HAS_BOUT=b_out is not None,
                                 FENCE=not configs.INTERPRET, **norm_flags, **launch_options(pdl))
