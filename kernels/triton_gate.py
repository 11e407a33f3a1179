"""Dense gate GEMV/GEMM fused with the activation and active-index compaction (no predictor).

One program owns BLOCK_N gate rows (neurons) and computes their full dot products over d_model, so
each gate row is read once, with wide contiguous loads, by many programs splitting d_ff. The epilogue
applies the activation, writes `act(gate)` (fp32, [tokens, d_ff]) and appends the neurons with a
non-zero activation to index lists through one atomic counter per list:
- union mode: one list (a neuron is listed if any token activates it);
- per-token mode: one list per token.
List order depends on which program reaches the counter first; the kernels that follow do not care.
The same compaction turns a predicted active mask into lists (`compact_mask`).
With FUSE_UP (union mode; `DispatchConfig(exact_kernel="gate_up")`) each program also reads the up rows of
its own active neurons right away and writes x1 = act(gate) * up at their list positions, so the separate
up kernel, its launch and the act(gate) buffer are not needed (the down kernel follows as before).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import COMPACT_CONFIGS, COMPACT_FIXED, GATE_CONFIGS, GATE_FIXED, tuned
from .pdl import gdc_start, launch_options

# Activation codes shared by all kernels (constexpr ints).
ACT_CODES = {"relu": 0, "fatrelu": 1, "drelu": 2, "relu2": 3}


@triton.jit
def gate_act(g, threshold, ACT: tl.constexpr):
    """act(gate): relu (also dReLU's gate), FATReLU (keep g >= threshold), or relu(g)^2."""
    if ACT == 1:
        return tl.where(g >= threshold, g, 0.0)
    r = tl.maximum(g, 0.0)
    if ACT == 3:
        return r * r
    return r


@triton.jit
def up_act(up, ACT: tl.constexpr):
    """The up projection as x1 uses it: through relu for dReLU (ACT 2), else as is."""
    if ACT == 2:
        return tl.maximum(up, 0.0)
    return up


@triton.jit
def dot_acc(acc, a, b, IEEE: tl.constexpr):
    """acc + a @ b; fp32 operands in exact IEEE fp32 (Triton would use tf32 by default)."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def rows_times_x(w_ptr, rows, i_mask, x_ptr, tokens, t_mask, d_model, IEEE: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_T, BLOCK_J] fp32: x[tokens] . w[rows] over the full d_model."""
    row_ptrs = w_ptr + rows.to(tl.int64)[:, None] * d_model
    if BLOCK_T == 1:
        acc = tl.zeros([BLOCK_J, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, d_model, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < d_model
            w = tl.load(row_ptrs + offs_k[None, :], mask=i_mask[:, None] & k_mask[None, :], other=0.0)
            xv = tl.load(x_ptr + tokens * d_model + offs_k, mask=k_mask & t_mask, other=0.0)
            acc += w.to(tl.float32) * xv.to(tl.float32)[None, :]
        return tl.sum(acc, 1)[None, :]
    else:
        res = tl.zeros([BLOCK_T, BLOCK_J], dtype=tl.float32)
        for k0 in range(0, d_model, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < d_model
            w = tl.load(row_ptrs + offs_k[None, :], mask=i_mask[:, None] & k_mask[None, :], other=0.0)
            xt = tl.load(x_ptr + tokens[:, None] * d_model + offs_k[None, :],
                         mask=t_mask[:, None] & k_mask[None, :], other=0.0)
            res = dot_acc(res, xt, tl.trans(w), IEEE)
        return res


@triton.jit
def pair_tiles(a_ptrs, b_ptrs, offs_k, i_mask, k_mask):
    """The [rows, BLOCK_K] tiles of two matrices at columns offs_k, both loads issued before either is used."""
    w_mask = i_mask[:, None] & k_mask[None, :]
    return (tl.load(a_ptrs + offs_k[None, :], mask=w_mask, other=0.0),
            tl.load(b_ptrs + offs_k[None, :], mask=w_mask, other=0.0))


@triton.jit
def pair_rows_times_x(wa_ptr, wb_ptr, rows, i_mask, x_ptr, tokens, t_mask, d_model, IEEE: tl.constexpr,
                      BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """(x . wa[rows], x . wb[rows]), each [BLOCK_T, BLOCK_J] fp32, with both matrices' tiles loaded in the same K
    step: twice the bytes in flight per step, and one chain of dependent DRAM round trips instead of two (two
    `rows_times_x` calls in a row wait for the first one's loads and reduction before the second one's loads)."""
    a_ptrs = wa_ptr + rows.to(tl.int64)[:, None] * d_model
    b_ptrs = wb_ptr + rows.to(tl.int64)[:, None] * d_model
    if BLOCK_T == 1:
        acc_a = tl.zeros([BLOCK_J, BLOCK_K], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_J, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, d_model, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < d_model
            wa, wb = pair_tiles(a_ptrs, b_ptrs, offs_k, i_mask, k_mask)
            xv = tl.load(x_ptr + tokens * d_model + offs_k, mask=k_mask & t_mask, other=0.0).to(tl.float32)[None, :]
            acc_a += wa.to(tl.float32) * xv
            acc_b += wb.to(tl.float32) * xv
        return tl.sum(acc_a, 1)[None, :], tl.sum(acc_b, 1)[None, :]
    else:
        res_a = tl.zeros([BLOCK_T, BLOCK_J], dtype=tl.float32)
        res_b = tl.zeros([BLOCK_T, BLOCK_J], dtype=tl.float32)
        for k0 in range(0, d_model, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < d_model
            wa, wb = pair_tiles(a_ptrs, b_ptrs, offs_k, i_mask, k_mask)
            xt = tl.load(x_ptr + tokens[:, None] * d_model + offs_k[None, :],
                         mask=t_mask[:, None] & k_mask[None, :], other=0.0)
            res_a = dot_acc(res_a, xt, tl.trans(wa), IEEE)
            res_b = dot_acc(res_b, xt, tl.trans(wb), IEEE)
        return res_a, res_b


@triton.jit
def gate_up_of_rows(wg_ptr, bg_ptr, wu_ptr, bu_ptr, rows, r_mask, x_ptr, tokens, t_mask, d_model, ACT: tl.constexpr,
                    HAS_BG: tl.constexpr, HAS_BU: tl.constexpr, IEEE: tl.constexpr, BLOCK_T: tl.constexpr,
                    BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """(gate pre-activation, up) of neurons `rows`, [BLOCK_T, BLOCK_J] fp32 each, as `gate_of_rows` and `up_of_rows`
    compute them, but reading the gate and up tiles in the same K steps (`pair_rows_times_x`)."""
    g, up = pair_rows_times_x(wg_ptr, wu_ptr, rows, r_mask, x_ptr, tokens, t_mask, d_model, IEEE, BLOCK_T, BLOCK_J,
                              BLOCK_K)
    if HAS_BG:
        g += tl.load(bg_ptr + rows, mask=r_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BU:
        up += tl.load(bu_ptr + rows, mask=r_mask, other=0.0).to(tl.float32)[None, :]
    return g, up_act(up, ACT)


@triton.jit
def gate_of_rows(wg_ptr, bg_ptr, rows, r_mask, x_ptr, tokens, t_mask, d_model, HAS_BG: tl.constexpr,
                 IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gate pre-activation [BLOCK_T, BLOCK_J] fp32 of neurons `rows` (only rows with r_mask are read), bias added."""
    g = rows_times_x(wg_ptr, rows, r_mask, x_ptr, tokens, t_mask, d_model, IEEE, BLOCK_T, BLOCK_J, BLOCK_K)
    if HAS_BG:
        g += tl.load(bg_ptr + rows, mask=r_mask, other=0.0).to(tl.float32)[None, :]
    return g


@triton.jit
def up_of_rows(wu_ptr, bu_ptr, rows, r_mask, x_ptr, tokens, t_mask, d_model, ACT: tl.constexpr,
               HAS_BU: tl.constexpr, IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """Up projection [BLOCK_T, BLOCK_J] fp32 of neurons `rows`, bias added, through relu for dReLU (ACT 2)."""
    up = rows_times_x(wu_ptr, rows, r_mask, x_ptr, tokens, t_mask, d_model, IEEE, BLOCK_T, BLOCK_J, BLOCK_K)
    if HAS_BU:
        up += tl.load(bu_ptr + rows, mask=r_mask, other=0.0).to(tl.float32)[None, :]
    return up_act(up, ACT)


@triton.jit
def reserve_union(flags, counts_ptr):
    """Reserve list positions for the set `flags` ([BLOCK_N] int32, 0/1) with one atomic on the length: (base, rank),
    the i-th flagged neuron's position is base + i - 1 (rank = i)."""
    return tl.atomic_add(counts_ptr, tl.sum(flags, 0)), tl.cumsum(flags, 0)


@triton.jit
def append_union(flags, offs_n, counts_ptr, idx_ptr):
    """Append the neurons `offs_n` where `flags` ([BLOCK_N] int32, 0/1) is set to the one union list: one atomic
    reserves their positions. Returns (base, rank): the i-th flagged neuron sits at base + i - 1 (rank = i)."""
    base, rank = reserve_union(flags, counts_ptr)
    tl.store(idx_ptr + base + rank - 1, offs_n, mask=flags > 0)
    return base, rank


@triton.jit
def append_active(active, tokens, offs_n, counts_ptr, idx_ptr, d_ff, PER_TOKEN: tl.constexpr):
    """Append the neurons `offs_n` where `active` ([BLOCK_T, BLOCK_N] bool) to the index lists."""
    if PER_TOKEN:
        flags = active.to(tl.int32)
        base = tl.atomic_add(counts_ptr + tokens, tl.sum(flags, 1), mask=tl.max(flags, 1) > 0)
        pos = base[:, None] + tl.cumsum(flags, 1) - 1
        tl.store(idx_ptr + tokens[:, None] * d_ff + pos, offs_n[None, :] + 0 * pos, mask=active)
    else:
        append_union(tl.max(active.to(tl.int32), 0), offs_n, counts_ptr, idx_ptr)


@tuned(GATE_CONFIGS, GATE_FIXED, key=["d_model", "d_ff", "BLOCK_T", "PER_TOKEN", "FUSE_UP"],
       reset_to_zero=["counts_ptr"])
@triton.jit
def gate_kernel(x_ptr, wg_ptr, bg_ptr, gact_ptr, counts_ptr, idx_ptr, wu_ptr, bu_ptr, x1c_ptr,
                n_tokens, d_model, d_ff, threshold,
                ACT: tl.constexpr, HAS_BIAS: tl.constexpr, PER_TOKEN: tl.constexpr, IEEE: tl.constexpr,
                FUSE_UP: tl.constexpr, HAS_BU: tl.constexpr, USE_GDC: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    gdc_start(USE_GDC)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < d_ff
    tokens = tl.arange(0, BLOCK_T)
    t_mask = tokens < n_tokens
    # Batch 1: elementwise products and one reduction (no tensor cores needed); else tl.dot.
    g = gate_of_rows(wg_ptr, bg_ptr, offs_n, n_mask, x_ptr, tokens, t_mask, d_model, HAS_BIAS, IEEE, BLOCK_T,
                     BLOCK_N, BLOCK_K)
    a = gate_act(g, threshold, ACT)
    valid = t_mask[:, None] & n_mask[None, :]
    if FUSE_UP:  # union list; x1 of the listed neurons written compactly, as up_kernel would
        live = tl.max((valid & (a != 0.0)).to(tl.int32), 0)
        base, rank = append_union(live, offs_n, counts_ptr, idx_ptr)
        if tl.sum(live, 0) > 0:  # most programs at high sparsity: no up bytes, no up loop
            up = up_of_rows(wu_ptr, bu_ptr, offs_n, live > 0, x_ptr, tokens, t_mask, d_model, ACT, HAS_BU, IEEE,
                            BLOCK_T, BLOCK_N, BLOCK_K)
            tl.store(x1c_ptr + tokens[:, None] * d_ff + (base + rank - 1)[None, :], a * up,
                     mask=t_mask[:, None] & (live > 0)[None, :])
    else:
        tl.store(gact_ptr + tokens[:, None] * d_ff + offs_n[None, :], a, mask=valid)
        append_active(valid & (a != 0.0), tokens, offs_n, counts_ptr, idx_ptr, d_ff, PER_TOKEN)


# PER_TOKEN in the key: its [BLOCK_T, BLOCK_N] int32 scan needs BLOCK_T * BLOCK_N * 4 bytes of shared memory
# (256 KB at 64 rows x 1024, over Hopper's 227 KB), which the union list does not; a block size tuned for the
# union was reused for per-token lists and failed to launch (H100, session 5, batch 64).
@tuned(COMPACT_CONFIGS, COMPACT_FIXED, key=["d_ff", "BLOCK_T", "PER_TOKEN"], reset_to_zero=["counts_ptr"])
@triton.jit
def compact_kernel(mask_ptr, counts_ptr, idx_ptr, n_rows, d_ff, PER_TOKEN: tl.constexpr, USE_GDC: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """Predicted active mask ([n_rows, d_ff], uint8) -> index lists (union of rows, or one per row)."""
    gdc_start(USE_GDC)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_T)
    valid = (rows < n_rows)[:, None] & (offs_n < d_ff)[None, :]
    m = tl.load(mask_ptr + rows[:, None] * d_ff + offs_n[None, :], mask=valid, other=0)
    append_active(valid & (m != 0), rows, offs_n, counts_ptr, idx_ptr, d_ff, PER_TOKEN)


def token_block(n_tokens: int) -> int:
    """BLOCK_T: 1 selects the GEMV code path; otherwise a power of two >= 16 (tl.dot's minimum)."""
    return 1 if n_tokens == 1 else max(16, triton.next_power_of_2(n_tokens))


def launch_gate(x: torch.Tensor, w_gate: torch.Tensor, b_gate: torch.Tensor | None, act: str, threshold: float,
                per_token: bool, gate_act_out: torch.Tensor | None, counts: torch.Tensor, idx: torch.Tensor,
                up: tuple | None = None, pdl: bool = False, config=None, tma: bool = False,
                prefetch: tuple | None = None, init_out: tuple | None = None, norm: tuple | None = None) -> None:
    """gate_act_out[t, j] = act(x[t] . w_gate[j] + b[j]); active neurons appended to (counts, idx).
    `up` = (w_up, b_up, x1c): union mode only; x1c[t, i] = act * up of the i-th listed neuron, no gate_act_out.
    `pdl`: launched with programmatic dependent launch (pdl.py; the caller checked `pdl_usable`).
    `config`: a `triton.Config` run as given, not autotuned (bench_gate_probe times each).
    `tma` (one token, no fused up): the gate rows through TMA (triton_gate_tma.py) where usable, else said once;
    `prefetch` = (w_up, w_down_t): that kernel also sends its active neurons' rows towards L2 (a GPU only).
    `init_out` = (out, b_down or None), one token: the fp32 row `out` [d_model] is set to b_down (or 0) for the rows
    kernel that sums into it: by the TMA kernel itself, else by one more launch here (said once).
    `norm` (the TMA kernel only, which the caller checked is usable): x is computed from the decoder layer's residual
    and attention output (launch_gate_tma)."""
    from .dispatch import warn_once
    n_tokens, d_model = x.shape
    d_ff = w_gate.shape[0]
    if tma and up is None and config is None and n_tokens == 1:
        from .triton_gate_tma import launch_gate_tma, tma_unusable
        reason = tma_unusable(x, w_gate)
        if reason is None:
            return launch_gate_tma(x, w_gate, b_gate, act, threshold, gate_act_out, counts, idx, pdl=pdl,
                                   prefetch=prefetch, init_out=init_out, norm=norm)
        warn_once(f"gate kernel: TMA loads unavailable for {reason}; plain loads")
    if norm is not None:
        raise ValueError("launch_gate: norm needs the TMA gate kernel (one token, tma=True, TMA usable)")
    if init_out is not None:
        warn_once("gate kernel: only the TMA gate kernel sets the rows kernel's fp32 output row; one more launch does")
        out, b_out = init_out
        if b_out is None:
            out.zero_()
        else:
            out.copy_(b_out)
    if prefetch is not None:
        warn_once("gate kernel: the L2 prefetch of the active rows comes with the TMA gate kernel only; not prefetched")
    if up is not None and per_token:
        raise ValueError("launch_gate: the fused up (up=...) writes one union list; per_token must be False")
    w_up, b_up, x1c = up if up is not None else (w_gate, None, counts)
    grid = lambda meta: (triton.cdiv(d_ff, (config.kwargs if config is not None else meta)["BLOCK_N"]),)  # noqa: E731
    kernel, extra = gate_kernel, {}
    if config is not None:
        kernel, extra = gate_kernel.fn, dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    kernel[grid](x, w_gate, b_gate if b_gate is not None else w_gate,
                 gate_act_out if gate_act_out is not None else counts, counts, idx,
                 w_up, b_up if b_up is not None else w_up, x1c,
                 n_tokens, d_model, d_ff, float(threshold), ACT=ACT_CODES[act], HAS_BIAS=b_gate is not None,
                 PER_TOKEN=per_token, IEEE=x.dtype == torch.float32, FUSE_UP=up is not None,
                 HAS_BU=b_up is not None, BLOCK_T=token_block(n_tokens), **launch_options(pdl), **extra)


def compact_mask(mask: torch.Tensor, per_token: bool, counts: torch.Tensor, idx: torch.Tensor, pdl: bool = False) -> None:
    """Index lists of a [rows, d_ff] bool mask: one union list, or one list per row (per_token)."""
    n_rows, d_ff = mask.shape
    grid = lambda meta: (triton.cdiv(d_ff, meta["BLOCK_N"]),)  # noqa: E731
    compact_kernel[grid](mask.view(torch.uint8), counts, idx, n_rows, d_ff, PER_TOKEN=per_token,
                         BLOCK_T=triton.next_power_of_2(n_rows), **launch_options(pdl))
