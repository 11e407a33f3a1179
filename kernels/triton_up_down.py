"""Sparse up (optionally with the gate) fused with the multiply, then sparse down on W_down^T rows.

`up_kernel`: each program owns a balanced range of a neuron list (GRID_PER_SM programs per SM) and walks it
BLOCK_J neurons at a time; it reads their up rows (and, with a predicted set, their gate rows in the same K
steps), computes full dot products over d_model and writes `x1 = act(gate) * up` compactly: x1c[t, i]
belongs to the i-th entry of token t's list (per-token mode) or of the shared list (union mode). The list
is built on the GPU (its length read from `counts`) or given by the caller (its length passed from the host).
`down_kernel`: output columns split in BLOCK_D blocks; SPLITS programs share the listed neurons of one
column block in balanced ranges; each reads the W_down^T row segments of its neurons (with SKIP_ZERO only
those whose x1 is non-zero for some token, so dReLU's up <= 0 neurons cost no down bytes), and the last of
the SPLITS programs to finish (ticket counter) adds the partial sums in a fixed order and writes the output:
one launch, deterministic for a given list order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .configs import DOWN_CONFIGS, DOWN_FIXED, UP_CONFIGS, UP_FIXED, tuned
from .pdl import gdc_start, launch_options
from .triton_gate import ACT_CODES, dot_acc, gate_act, gate_up_of_rows, token_block, up_of_rows


@tuned(UP_CONFIGS, UP_FIXED, key=["d_model", "d_ff", "BLOCK_T", "FUSE_GATE", "PER_TOKEN"])
@triton.jit
def up_kernel(x_ptr, wu_ptr, bu_ptr, wg_ptr, bg_ptr, gact_ptr, mask_ptr, counts_ptr, idx_ptr, x1c_ptr,
              n_tokens, d_model, d_ff, threshold, n_given, ACT: tl.constexpr, FUSE_GATE: tl.constexpr,
              HAS_BU: tl.constexpr, HAS_BG: tl.constexpr, MASK_PER_TOKEN: tl.constexpr,
              PER_TOKEN: tl.constexpr, N_GIVEN: tl.constexpr, IEEE: tl.constexpr, USE_GDC: tl.constexpr,
              BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, GRID_PER_SM: tl.constexpr):
    gdc_start(USE_GDC)
    lst = tl.program_id(1)
    if N_GIVEN:  # the caller's index list, its length known on the host
        n_listed = n_given
    else:
        n_listed = tl.load(counts_ptr + lst)
    if PER_TOKEN:
        tokens = lst + tl.arange(0, BLOCK_T)
        t_mask = tokens < lst + 1
    else:
        tokens = tl.arange(0, BLOCK_T)
        t_mask = tokens < n_tokens
    # Balanced ranges: program p owns list positions [p n / P, (p + 1) n / P), so the slowest program walks
    # ceil(n / P / BLOCK_J) blocks. (A grid-stride walk over BLOCK_J blocks gave some programs two blocks, i.e. two
    # dependent DRAM round trips, while others had none: 1100 listed neurons at BLOCK_J 2 are 550 blocks for 528
    # programs.) GRID_PER_SM only sizes the grid (launch_up).
    lo = (tl.program_id(0) * n_listed) // tl.num_programs(0)
    hi = ((tl.program_id(0) + 1) * n_listed) // tl.num_programs(0)
    for i0 in range(lo, hi, BLOCK_J):
        offs_i = i0 + tl.arange(0, BLOCK_J)
        i_mask = offs_i < hi
        rows = tl.load(idx_ptr + lst * d_ff + offs_i, mask=i_mask, other=0)
        valid = t_mask[:, None] & i_mask[None, :]
        if FUSE_GATE:  # gate and up tiles in the same K steps
            g, up = gate_up_of_rows(wg_ptr, bg_ptr, wu_ptr, bu_ptr, rows, i_mask, x_ptr, tokens, t_mask, d_model,
                                    ACT, HAS_BG, HAS_BU, IEEE, BLOCK_T, BLOCK_J, BLOCK_K)
            a = gate_act(g, threshold, ACT)
            if MASK_PER_TOKEN:
                # Union of per-token predictions: each token keeps only its own predicted neurons.
                keep = tl.load(mask_ptr + tokens[:, None] * d_ff + rows[None, :], mask=valid, other=0)
                a = tl.where(keep != 0, a, 0.0)
        else:
            up = up_of_rows(wu_ptr, bu_ptr, rows, i_mask, x_ptr, tokens, t_mask, d_model, ACT, HAS_BU, IEEE, BLOCK_T,
                            BLOCK_J, BLOCK_K)
            a = tl.load(gact_ptr + tokens[:, None] * d_ff + rows[None, :], mask=valid, other=0.0)
        tl.store(x1c_ptr + tokens[:, None] * d_ff + offs_i[None, :], a * up, mask=valid)


@triton.jit
def down_acc_init(BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """The down kernels' fp32 accumulator: [BLOCK_J, BLOCK_D] products summed at the end at batch 1 (no tensor
    cores), [BLOCK_T, BLOCK_D] through tl.dot otherwise."""
    if BLOCK_T == 1:
        acc = tl.zeros([BLOCK_J, BLOCK_D], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    return acc


@triton.jit
def down_rows_tile(wdt_ptr, rows, live, offs_d, d_mask, d_model):
    """The [BLOCK_J, BLOCK_D] W_down^T row segments of `rows` (only `live` rows are read)."""
    return tl.load(wdt_ptr + rows.to(tl.int64)[:, None] * d_model + offs_d[None, :],
                   mask=live[:, None] & d_mask[None, :], other=0.0)


@triton.jit
def down_acc_fma(acc, x1, w, IEEE: tl.constexpr, BLOCK_T: tl.constexpr):
    """acc + x1 [BLOCK_T, BLOCK_J] times the row segments w [BLOCK_J, BLOCK_D]."""
    if BLOCK_T == 1:
        acc += tl.sum(x1, 0)[:, None] * w.to(tl.float32)
    else:
        acc = dot_acc(acc, x1.to(w.dtype), w, IEEE)
    return acc


@triton.jit
def down_acc_add(acc, x1, wdt_ptr, rows, live, offs_d, d_mask, d_model, IEEE: tl.constexpr, BLOCK_T: tl.constexpr):
    """acc + x1 [BLOCK_T, BLOCK_J] times the W_down^T row segments of `rows` (only `live` rows are read)."""
    return down_acc_fma(acc, x1, down_rows_tile(wdt_ptr, rows, live, offs_d, d_mask, d_model), IEEE, BLOCK_T)


@triton.jit
def down_acc_result(acc, BLOCK_T: tl.constexpr):
    """[BLOCK_T, BLOCK_D] fp32 from `down_acc_init`'s accumulator."""
    if BLOCK_T == 1:
        res = tl.sum(acc, 0)[None, :]
    else:
        res = acc
    return res


@tuned(DOWN_CONFIGS, DOWN_FIXED, key=["d_model", "d_ff", "BLOCK_T", "PER_TOKEN", "SKIP_ZERO", "PREFETCH"],
       restore_value=["counts_ptr"])
@triton.jit
def down_kernel(x1c_ptr, wdt_ptr, bd_ptr, counts_ptr, idx_ptr, partial_ptr, tickets_ptr, out_ptr, done_ptr,
                n_tokens, d_model, d_ff, n_given, HAS_BIAS: tl.constexpr, PER_TOKEN: tl.constexpr,
                N_GIVEN: tl.constexpr, SKIP_ZERO: tl.constexpr, PREFETCH: tl.constexpr,
                IEEE: tl.constexpr, FENCE: tl.constexpr, USE_GDC: tl.constexpr, BLOCK_T: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_J: tl.constexpr, SPLITS: tl.constexpr):
    if not PREFETCH:
        gdc_start(USE_GDC)
    col_blk = tl.program_id(0)
    split = tl.program_id(1)
    lst = tl.program_id(2)
    offs_d = col_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < d_model
    if PER_TOKEN:
        tokens = lst + tl.arange(0, BLOCK_T)
        t_mask = tokens < lst + 1
    else:
        tokens = tl.arange(0, BLOCK_T)
        t_mask = tokens < n_tokens
    # Balanced ranges of list positions per split, [s n / SPLITS, (s + 1) n / SPLITS): with n / SPLITS <= BLOCK_J
    # every split reads its rows in one step. (Ranges of whole BLOCK_J blocks gave 1100 neurons at BLOCK_J 32 and
    # SPLITS 32 two steps in 18 splits and none in 14.)
    if N_GIVEN:
        n_listed = n_given
    else:
        n_listed = tl.load(counts_ptr + lst)
    lo = (split * n_listed) // SPLITS
    hi = ((split + 1) * n_listed) // SPLITS
    acc = down_acc_init(BLOCK_T, BLOCK_J, BLOCK_D)
    first = lo
    if PREFETCH:
        # PDL with the caller's list (launch_down): this kernel starts while the up kernel still runs. The list
        # and the weights are not the up kernel's output, so the first block's W_down^T rows are loaded before
        # waiting for it; only x1 is read after the wait. (No SKIP_ZERO for that block: it would need x1.)
        tl.extra.cuda.gdc_launch_dependents()
        offs_i = lo + tl.arange(0, BLOCK_J)
        i_mask = offs_i < hi
        rows = tl.load(idx_ptr + lst * d_ff + offs_i, mask=i_mask, other=0)
        w = down_rows_tile(wdt_ptr, rows, i_mask, offs_d, d_mask, d_model)
        tl.extra.cuda.gdc_wait()
        x1 = tl.load(x1c_ptr + tokens[:, None] * d_ff + offs_i[None, :],
                     mask=t_mask[:, None] & i_mask[None, :], other=0.0)
        acc = down_acc_fma(acc, x1, w, IEEE, BLOCK_T)
        first = lo + BLOCK_J
    for i0 in range(first, hi, BLOCK_J):
        offs_i = i0 + tl.arange(0, BLOCK_J)
        i_mask = offs_i < hi
        rows = tl.load(idx_ptr + lst * d_ff + offs_i, mask=i_mask, other=0)
        x1 = tl.load(x1c_ptr + tokens[:, None] * d_ff + offs_i[None, :],
                     mask=t_mask[:, None] & i_mask[None, :], other=0.0)
        if SKIP_ZERO:  # rows with x1 == 0 for every token are not read (dReLU's up <= 0, a predictor's misses)
            live = i_mask & (tl.max(tl.abs(x1), 0) != 0.0)
        else:  # a listed ReLU neuron has x1 != 0 unless up is exactly 0: the row loads need not wait for x1
            live = i_mask
        acc = down_acc_add(acc, x1, wdt_ptr, rows, live, offs_d, d_mask, d_model, IEEE, BLOCK_T)
    res = down_acc_result(acc, BLOCK_T)
    out_mask = t_mask[:, None] & d_mask[None, :]
    tl.debug_barrier()  # every warp of this program has read the list length before the program counts as done
    if SPLITS == 1:
        if HAS_BIAS:
            res += tl.load(bd_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + tokens[:, None] * d_model + offs_d[None, :], res, mask=out_mask)
        reducer = True
    else:
        reducer = reduce_splits(res, split, tokens, offs_d, out_mask, d_mask, n_tokens, d_model, partial_ptr,
                                out_ptr, bd_ptr, tickets_ptr + lst * tl.num_programs(0) + col_blk, HAS_BIAS, FENCE,
                                BLOCK_T, BLOCK_D, SPLITS)
    # The last column-block reducer to finish zeroes the list lengths for the next call, so they need no memset
    # launch (the buffer lives on the SparseFFN, zeroed once). When it counts, every program of the grid has taken
    # its ticket, so every program has read its list length. Only reducers count: one atomic per column block, not
    # one per program on a single address. (A list given by the caller has no length to reset.)
    if not N_GIVEN:
        if reducer:
            if tl.atomic_add(done_ptr, 1, sem="acq_rel") == tl.num_programs(0) * tl.num_programs(2) - 1:
                lists = tl.arange(0, 64)
                tl.store(counts_ptr + lists, tl.zeros([64], dtype=tl.int32), mask=lists < tl.num_programs(2))
                tl.atomic_xchg(done_ptr, 0)


@triton.jit
def writes_done(FENCE: tl.constexpr):
    """Every thread's global writes (and atomics) are visible GPU-wide (FENCE: a `fence.acq_rel.gpu` per thread; not
    in the interpreter) and done (CTA barrier) before what follows, e.g. one thread's releasing atomic."""
    if FENCE:
        tl.inline_asm_elementwise("fence.acq_rel.gpu; mov.u32 $0, $1;", "=r,r", [tl.full([1], 0, tl.int32)],
                                  dtype=tl.int32, is_pure=False, pack=1)
    tl.debug_barrier()


@triton.jit
def last_ticket(ticket_ptr, n_takers, FENCE: tl.constexpr):
    """Take a ticket after this program's global writes (and atomics) are visible GPU-wide: whether it was the last
    of `n_takers`, the one that may then read everybody's writes. FENCE: a `fence.acq_rel.gpu` per thread first
    (not in the interpreter)."""
    writes_done(FENCE)
    return tl.atomic_add(ticket_ptr, 1, sem="acq_rel") == n_takers - 1


@triton.jit
def reduce_splits(res, split, tokens, offs_d, out_mask, d_mask, n_tokens, d_model, partial_ptr, out_ptr, bd_ptr,
                  ticket_ptr, HAS_BIAS: tl.constexpr, FENCE: tl.constexpr, BLOCK_T: tl.constexpr,
                  BLOCK_D: tl.constexpr, SPLITS: tl.constexpr):
    """Split-K epilogue shared by the down kernels: store this split's partial sums [BLOCK_T, BLOCK_D]; the last
    of the SPLITS programs of a column block (ticket counter) adds them in split order, adds the bias, writes
    the output and resets the ticket. Returns whether this program was that last one."""
    part_ptrs = partial_ptr + tokens[:, None] * d_model + offs_d[None, :]
    part_stride = n_tokens * d_model
    tl.store(part_ptrs + split * part_stride, res, mask=out_mask)
    last = last_ticket(ticket_ptr, SPLITS, FENCE)
    if last:
        total = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        # Unrolled: the SPLITS loads are independent and issue back to back, one L2 round trip in all. (A runtime
        # loop waited for each load before the next: at SPLITS 8 about half of the 10.7 µs down kernel, H100,
        # session 6, and the SPLITS 64 configs timed ~2x slower than SPLITS 8.) Added in a fixed order: the
        # result does not depend on who finished last.
        for s in tl.static_range(SPLITS):
            total += tl.load(part_ptrs + s * part_stride, mask=out_mask, other=0.0, cache_modifier=".cg")
        if HAS_BIAS:
            total += tl.load(bd_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + tokens[:, None] * d_model + offs_d[None, :], total, mask=out_mask)
        tl.atomic_xchg(ticket_ptr, 0)  # ready for the next call
    return last


def launch_up(x, w_up, b_up, w_gate, b_gate, gate_act_in, mask, per_token, act, threshold, counts, idx, x1c,
              n_sms: int, pdl: bool = False, n_given: int | None = None, block_t: int | None = None) -> None:
    """x1c from listed neurons; with `gate_act_in` None the gate rows are read here too (predicted set).
    The grid holds the config's GRID_PER_SM programs per SM (`n_sms` of them), shared by the lists.
    `n_given`: `idx` is one list of that many entries given by the caller (`counts` is not read). `block_t`: the
    token block (default `token_block`; 16 at one token runs the tl.dot code path, whose loads Triton pipelines)."""
    n_tokens, d_model = x.shape
    d_ff = w_up.shape[0]
    n_lists = n_tokens if per_token else 1
    fuse_gate = gate_act_in is None

    def grid(meta):
        per_list = max(1, meta["GRID_PER_SM"] * n_sms // n_lists)
        return min(per_list, triton.cdiv(d_ff if n_given is None else n_given, meta["BLOCK_J"])), n_lists
    up_kernel[grid](x, w_up, b_up if b_up is not None else w_up, w_gate, b_gate if b_gate is not None else w_gate,
                    x1c if fuse_gate else gate_act_in, mask if mask is not None else counts, counts, idx, x1c,
                    n_tokens, d_model, d_ff, float(threshold), n_given or 0, ACT=ACT_CODES[act], FUSE_GATE=fuse_gate,
                    HAS_BU=b_up is not None, HAS_BG=b_gate is not None,
                    MASK_PER_TOKEN=mask is not None and mask.shape[0] > 1, PER_TOKEN=per_token,
                    N_GIVEN=n_given is not None,
                    IEEE=x.dtype == torch.float32,
                    BLOCK_T=block_t or (1 if per_token else token_block(n_tokens)), **launch_options(pdl))


def launch_down(x1c, w_down_t, b_down, per_token, counts, idx, partials, tickets, out, done, skip_zero: bool,
                pdl: bool = False, n_given: int | None = None, block_t: int | None = None) -> None:
    """out[t] = sum over listed neurons i of x1c[t, i] * W_down^T[idx[i]] (+ bias); then `counts` (<= 64 lists)
    is zeroed by the last column-block reducer to finish, with `done` (one int32, zero between calls) as its
    counter. `skip_zero`: rows whose x1 is 0 for every token are not read (worth it where listed neurons can
    have x1 = 0: dReLU, predicted sets); otherwise the row loads do not wait for x1. `n_given`: as in
    `launch_up` (then nothing is reset); `block_t` as in `launch_up`. `pdl` with `n_given`: the first W_down^T
    rows of each program are loaded before it waits for the up kernel (they depend on the list only)."""
    n_tokens, d_model = out.shape
    d_ff = w_down_t.shape[0]
    n_lists = n_tokens if per_token else 1
    grid = lambda meta: (triton.cdiv(d_model, meta["BLOCK_D"]), meta["SPLITS"], n_lists)  # noqa: E731
    down_kernel[grid](x1c, w_down_t, b_down if b_down is not None else w_down_t, counts, idx, partials, tickets,
                      out, done, n_tokens, d_model, d_ff, n_given or 0, HAS_BIAS=b_down is not None,
                      PER_TOKEN=per_token, N_GIVEN=n_given is not None, SKIP_ZERO=skip_zero,
                      PREFETCH=pdl and n_given is not None, FENCE=not configs.INTERPRET,
                      IEEE=out.dtype == torch.float32,
                      BLOCK_T=block_t or (1 if per_token else token_block(n_tokens)), **launch_options(pdl))
