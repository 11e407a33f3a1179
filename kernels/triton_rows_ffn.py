"""One token's sparse FFN in one kernel over a neuron list: up (and gate) rows, x1, and down rows together; or,
given x1 from the up kernel, the down rows alone (an atomic down kernel).

Each program owns a balanced range of the list (GRID_PER_SM programs per SM) and walks it BLOCK_J neurons at a
time: it issues the loads of their W_down^T rows (whole rows where d_model <= MAX_ONE_STEP_D) together with their
up rows (and gate rows for a predicted set; otherwise act(gate) comes from the gate kernel's buffer), computes
x1 = act(gate) * up, and sums x1 * W_down^T rows in fp32. Its sum goes into one zeroed fp32 row with atomics; the
last program to finish (ticket counter) adds the bias, writes the output in the weights' dtype, zeroes the row
and, for a list built on the GPU, the list length, so the next call needs no memset. With PIPELINE (whole rows) a
program issues the loads of the block PIPELINE blocks ahead before it reduces the current block.

GATE_FIRST (a predicted set): the predictor over-selects, and a false positive (act(gate) == 0) contributes
0 * up * W_down^T row. Its up and W_down^T rows are not read: each block's gate rows arrive first (one pipeline
step earlier with PIPELINE, before its other loads in the plain loop), and its up / W_down^T loads are masked to
the neurons with act(gate) != 0. The sum is the same (dReLU too: act(gate) == 0 gives x1 == 0 whatever up is).

Against up_kernel + down_kernel (triton_up_down.py): one launch instead of two, x1 never leaves the program, the
down rows' loads do not wait for x1 (they need only the list entry), and there is no split-K partial buffer.
The price: fp32 atomics add in the order programs finish, so the last bits of the output may differ from call
to call (the split kernels are deterministic for a given list order). One token only (decode at batch 1);
dReLU's x1 = 0 neurons (up <= 0) still have their down rows read (the split path skips them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .configs import ROWS_CONFIGS, ROWS_FIXED, tuned
from .pdl import gdc_start, launch_options
from .triton_gate import ACT_CODES, gate_act, gate_of_rows, gate_up_of_rows, up_act, up_of_rows
from .triton_up_down import last_ticket

# W_down^T rows are read whole (one load per neuron block, issued with the up rows) up to this d_model; wider
# models walk them MAX_ONE_STEP_D columns at a time, adding each block's sum with atomics.
MAX_ONE_STEP_D = 8192


@triton.jit
def rows_x1(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, gact_ptr, rows, i_mask, d_model, threshold, ACT: tl.constexpr,
            FUSE_GATE: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr, IEEE: tl.constexpr,
            BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """x1 = act(gate) * up of neurons `rows` for token 0, [BLOCK_J] fp32; act(gate) from the gate and up rows read
    in the same K steps (FUSE_GATE), or from the gate kernel's act(gate) buffer."""
    tokens = tl.arange(0, 1)
    t_mask = tokens < 1
    if FUSE_GATE:
        g, up = gate_up_of_rows(wg_ptr, bg_ptr, wu_ptr, bu_ptr, rows, i_mask, x_ptr, tokens, t_mask, d_model, ACT,
                                HAS_BG, HAS_BU, IEEE, 1, BLOCK_J, BLOCK_K)
        a = gate_act(g, threshold, ACT)
    else:
        up = up_of_rows(wu_ptr, bu_ptr, rows, i_mask, x_ptr, tokens, t_mask, d_model, ACT, HAS_BU, IEEE, 1, BLOCK_J,
                        BLOCK_K)
        a = tl.load(gact_ptr + rows, mask=i_mask, other=0.0)[None, :]
    return tl.sum(a * up, 0)


@triton.jit
def list_x1(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, gact_ptr, rows, offs_i, i_mask, d_model, threshold,
            ACT: tl.constexpr, FUSE_GATE: tl.constexpr, X1_GIVEN: tl.constexpr, HAS_BG: tl.constexpr,
            HAS_BU: tl.constexpr, IEEE: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    """x1 [BLOCK_J] of list positions `offs_i` (neurons `rows`): given (X1_GIVEN: the up kernel's compact x1, the
    `gact_ptr` buffer read at list positions), or computed by `rows_x1`."""
    if X1_GIVEN:
        x1 = tl.load(gact_ptr + offs_i, mask=i_mask, other=0.0)
    else:
        x1 = rows_x1(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, gact_ptr, rows, i_mask, d_model, threshold, ACT,
                     FUSE_GATE, HAS_BG, HAS_BU, IEEE, BLOCK_J, BLOCK_K)
    return x1


@triton.jit
def gate_first_x1(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, rows, i_mask, d_model, threshold, ACT: tl.constexpr,
                  HAS_BG: tl.constexpr, HAS_BU: tl.constexpr, IEEE: tl.constexpr, BLOCK_J: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """(x1, live) of neurons `rows` of a predicted set, [BLOCK_J] each: their gate rows read first (BLOCK_K of d per
    step), then the up rows of the neurons with act(gate) != 0 only (`live`, also the W_down^T rows' mask). A false
    positive's x1 is 0 either way (dReLU too: x1 = act(gate) * relu(up))."""
    tokens = tl.arange(0, 1)
    t_mask = tokens < 1
    g = gate_of_rows(wg_ptr, bg_ptr, rows, i_mask, x_ptr, tokens, t_mask, d_model, HAS_BG, IEEE, 1, BLOCK_J, BLOCK_K)
    a = tl.sum(gate_act(g, threshold, ACT), 0)
    live = i_mask & (a != 0.0)
    up = up_of_rows(wu_ptr, bu_ptr, rows, live, x_ptr, tokens, t_mask, d_model, ACT, HAS_BU, IEEE, 1, BLOCK_J, BLOCK_K)
    return a * tl.sum(up, 0), live


@triton.jit
def plain_rows_sum(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, acc_ptr, gact_ptr, idx_ptr, lo, hi, offs_d, d_model,
                   threshold, ACT: tl.constexpr, FUSE_GATE: tl.constexpr, X1_GIVEN: tl.constexpr, HAS_BG: tl.constexpr,
                   HAS_BU: tl.constexpr, ONE_STEP_D: tl.constexpr, GATE_FIRST: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """sum over list positions lo..hi of x1 * W_down^T rows, one block of BLOCK_J neurons after another (each
    block's loads issue after the previous block's reductions): [BLOCK_J, BLOCK_D] fp32 (ONE_STEP_D: whole
    W_down^T rows); otherwise each block's column steps are added to `acc_ptr` with atomics here and the returned
    sum is zero. GATE_FIRST (a predicted set): each block's up and W_down^T rows are read after its gate rows, for
    its neurons with act(gate) != 0 only (`gate_first_x1`)."""
    acc = tl.zeros([BLOCK_J, BLOCK_D], dtype=tl.float32)
    for i0 in range(lo, hi, BLOCK_J):
        offs_i = i0 + tl.arange(0, BLOCK_J)
        i_mask = offs_i < hi
        rows = tl.load(idx_ptr + offs_i, mask=i_mask, other=0)
        down_rows = wdt_ptr + rows.to(tl.int64)[:, None] * d_model
        if GATE_FIRST:
            x1, live = gate_first_x1(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, rows, i_mask, d_model, threshold, ACT,
                                     HAS_BG, HAS_BU, IEEE, BLOCK_J, BLOCK_K)
        else:
            live = i_mask
        if ONE_STEP_D:  # without GATE_FIRST issued before x1's loads: both wait on the list entry only
            w = tl.load(down_rows + offs_d[None, :], mask=live[:, None] & (offs_d < d_model)[None, :], other=0.0)
            if not GATE_FIRST:
                x1 = list_x1(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, gact_ptr, rows, offs_i, i_mask, d_model,
                             threshold, ACT, FUSE_GATE, X1_GIVEN, HAS_BG, HAS_BU, IEEE, BLOCK_J, BLOCK_K)
            acc += x1[:, None] * w.to(tl.float32)
        else:
            if not GATE_FIRST:
                x1 = list_x1(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, gact_ptr, rows, offs_i, i_mask, d_model,
                             threshold, ACT, FUSE_GATE, X1_GIVEN, HAS_BG, HAS_BU, IEEE, BLOCK_J, BLOCK_K)
            for d0 in range(0, d_model, BLOCK_D):
                cols = d0 + offs_d
                w = tl.load(down_rows + cols[None, :], mask=live[:, None] & (cols < d_model)[None, :], other=0.0)
                tl.atomic_add(acc_ptr + cols, tl.sum(x1[:, None] * w.to(tl.float32), 0), mask=cols < d_model,
                              sem="relaxed")
    return acc


@triton.jit
def list_block(idx_ptr, i0, hi, BLOCK_J: tl.constexpr):
    """List positions i0.. of one block (those < hi valid) and their neuron ids (0 where masked)."""
    offs_i = i0 + tl.arange(0, BLOCK_J)
    i_mask = offs_i < hi
    return offs_i, i_mask, tl.load(idx_ptr + offs_i, mask=i_mask, other=0)


@triton.jit
def listed_tiles(wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, gact_ptr, rows, offs_i, i_mask, offs_d, d_model,
                 FUSE_GATE: tl.constexpr, X1_GIVEN: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr,
                 BLOCK_J: tl.constexpr):
    """Issue the loads of one block of listed neurons `rows` (list positions `offs_i`), whole rows: gate (a
    predicted set), up (unless x1 is given) and W_down^T tiles [BLOCK_J, BLOCK_D] in the weights' dtype, and
    [BLOCK_J] fp32 vectors: act(gate) from the gate kernel or the given x1 (`a`), the gate and up biases. A tile a
    mode does not read is the W_down^T tile again (no load), a vector it does not read zeros."""
    r_off = rows.to(tl.int64)[:, None] * d_model + offs_d[None, :]
    w_mask = i_mask[:, None] & (offs_d < d_model)[None, :]
    zeros = tl.zeros([BLOCK_J], dtype=tl.float32)
    a, bg, bu = zeros, zeros, zeros
    if X1_GIVEN:
        wd = tl.load(wdt_ptr + r_off, mask=w_mask, other=0.0)
        wg, wu = wd, wd
        a = tl.load(gact_ptr + offs_i, mask=i_mask, other=0.0)
    else:
        if FUSE_GATE:
            wg = tl.load(wg_ptr + r_off, mask=w_mask, other=0.0)
            if HAS_BG:
                bg = tl.load(bg_ptr + rows, mask=i_mask, other=0.0).to(tl.float32)
        else:
            a = tl.load(gact_ptr + rows, mask=i_mask, other=0.0)
        wu = tl.load(wu_ptr + r_off, mask=w_mask, other=0.0)
        wd = tl.load(wdt_ptr + r_off, mask=w_mask, other=0.0)
        if not FUSE_GATE:
            wg = wd
        if HAS_BU:
            bu = tl.load(bu_ptr + rows, mask=i_mask, other=0.0).to(tl.float32)
    return wg, wu, wd, a, bg, bu


@triton.jit
def tiles_x1(wg, wu, a, bg, bu, xv, threshold, ACT: tl.constexpr, FUSE_GATE: tl.constexpr, X1_GIVEN: tl.constexpr):
    """x1 [BLOCK_J] fp32 of one block of `listed_tiles`: act(gate) * up, x `xv` [BLOCK_D] fp32."""
    if X1_GIVEN:
        return a
    up = up_act(tl.sum(wu.to(tl.float32) * xv[None, :], 1) + bu, ACT)
    if FUSE_GATE:
        a = gate_act(tl.sum(wg.to(tl.float32) * xv[None, :], 1) + bg, threshold, ACT)
    return a * up


@triton.jit
def pipelined_rows_sum(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, gact_ptr, idx_ptr, lo, hi, offs_d, d_model,
                       threshold, ACT: tl.constexpr, FUSE_GATE: tl.constexpr, X1_GIVEN: tl.constexpr,
                       HAS_BG: tl.constexpr, HAS_BU: tl.constexpr, DEPTH: tl.constexpr, BLOCK_J: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    """sum over list positions lo..hi of x1 * W_down^T rows, [BLOCK_J, BLOCK_D] fp32 (whole rows, one token),
    software-pipelined: each step issues the row loads of the block DEPTH (1 or 2) blocks ahead, and the list
    entries of the block after that, before it reduces its own block; a program keeps DEPTH + 1 blocks of rows in
    flight instead of waiting for each block's loads and reductions before the next block's loads issue
    (`plain_rows_sum`). ptxas places each step's new loads after the current block's first multiplies, which wait
    for that block's rows: with DEPTH 1 the next block is in flight only during the reductions, with DEPTH 2 for a
    whole step more."""
    xv = tl.load(x_ptr + offs_d, mask=offs_d < d_model, other=0.0).to(tl.float32)
    offs_i, i_mask, rows = list_block(idx_ptr, lo, hi, BLOCK_J)
    wg, wu, wd, a, bg, bu = listed_tiles(wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, gact_ptr, rows, offs_i, i_mask,
                                         offs_d, d_model, FUSE_GATE, X1_GIVEN, HAS_BG, HAS_BU, BLOCK_J)
    if DEPTH == 2:  # the second block's loads too
        offs_i, i_mask, rows = list_block(idx_ptr, lo + BLOCK_J, hi, BLOCK_J)
        wg2, wu2, wd2, a2, bg2, bu2 = listed_tiles(wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, gact_ptr, rows, offs_i,
                                                   i_mask, offs_d, d_model, FUSE_GATE, X1_GIVEN, HAS_BG, HAS_BU,
                                                   BLOCK_J)
    # The first block not yet loaded: its list entries now, its rows in the loop's first step.
    next_i, next_mask, next_rows = list_block(idx_ptr, lo + DEPTH * BLOCK_J, hi, BLOCK_J)
    acc = tl.zeros([BLOCK_J, BLOCK_D], dtype=tl.float32)
    for i0 in range(lo, hi, BLOCK_J):
        after_i, after_mask, after_rows = list_block(idx_ptr, i0 + (DEPTH + 1) * BLOCK_J, hi, BLOCK_J)
        ng, nu, nd, na, nbg, nbu = listed_tiles(wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, gact_ptr, next_rows, next_i,
                                                next_mask, offs_d, d_model, FUSE_GATE, X1_GIVEN, HAS_BG, HAS_BU,
                                                BLOCK_J)
        x1 = tiles_x1(wg, wu, a, bg, bu, xv, threshold, ACT, FUSE_GATE, X1_GIVEN)
        acc += x1[:, None] * wd.to(tl.float32)
        if DEPTH == 2:
            wg, wu, wd, a, bg, bu = wg2, wu2, wd2, a2, bg2, bu2
            wg2, wu2, wd2, a2, bg2, bu2 = ng, nu, nd, na, nbg, nbu
        else:
            wg, wu, wd, a, bg, bu = ng, nu, nd, na, nbg, nbu
        next_i, next_mask, next_rows = after_i, after_mask, after_rows
    return acc


@triton.jit
def gate_tile(wg_ptr, bg_ptr, rows, i_mask, offs_d, d_model, HAS_BG: tl.constexpr, BLOCK_J: tl.constexpr):
    """Issue the loads of one block's whole gate rows [BLOCK_J, BLOCK_D] (weights' dtype) and gate biases [BLOCK_J]
    fp32 (zeros without)."""
    wg = tl.load(wg_ptr + rows.to(tl.int64)[:, None] * d_model + offs_d[None, :],
                 mask=i_mask[:, None] & (offs_d < d_model)[None, :], other=0.0)
    bg = tl.zeros([BLOCK_J], dtype=tl.float32)
    if HAS_BG:
        bg = tl.load(bg_ptr + rows, mask=i_mask, other=0.0).to(tl.float32)
    return wg, bg


@triton.jit
def live_tiles(wg, bg, xv, wu_ptr, bu_ptr, wdt_ptr, rows, i_mask, offs_d, d_model, threshold, ACT: tl.constexpr,
               HAS_BU: tl.constexpr, BLOCK_J: tl.constexpr):
    """act(gate) [BLOCK_J] fp32 of one block from its `gate_tile` (waits for it), then issue the loads of the up and
    W_down^T rows (and up biases) of its neurons with act(gate) != 0 only: a false positive of the predicted set
    issues no load for them (masked lanes) and adds a * up = 0, as if they were read (dReLU too: relu(up) * 0)."""
    a = gate_act(tl.sum(wg.to(tl.float32) * xv[None, :], 1) + bg, threshold, ACT)
    live = i_mask & (a != 0.0)
    r_off = rows.to(tl.int64)[:, None] * d_model + offs_d[None, :]
    w_mask = live[:, None] & (offs_d < d_model)[None, :]
    wu = tl.load(wu_ptr + r_off, mask=w_mask, other=0.0)
    wd = tl.load(wdt_ptr + r_off, mask=w_mask, other=0.0)
    bu = tl.zeros([BLOCK_J], dtype=tl.float32)
    if HAS_BU:
        bu = tl.load(bu_ptr + rows, mask=live, other=0.0).to(tl.float32)
    return a, wu, wd, bu


@triton.jit
def gate_first_rows_sum(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, idx_ptr, lo, hi, offs_d, d_model, threshold,
                        ACT: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr, DEPTH: tl.constexpr,
                        BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """`pipelined_rows_sum` of a predicted set (FUSE_GATE) with each block's gate rows loaded one step before its up
    and W_down^T rows, which are then read for its neurons with act(gate) != 0 only (`live_tiles`). Step i issues
    the gate loads of block i + DEPTH + 1 (and the list entries of the block after it), computes act(gate) of block
    i + DEPTH from its gate tile and issues that block's masked up / W_down^T loads, then reduces block i.
    Registers ([BLOCK_J, BLOCK_D] tiles in the weights' dtype: 8 per thread at BLOCK_J 1, 8 warps, d_model 4096 fp16):
    the new gate tile and the up / W_down^T tiles of blocks i .. i + DEPTH (the previous gate tile dies at its
    act(gate), before its block's loads issue): 2 * DEPTH + 3 tiles (5, 7) against 3 * DEPTH + 3 (6, 9) in
    `pipelined_rows_sum`, plus x in fp32 (16). sm_90, fp16, 4096, 8 warps, index list with sum_is_out: 92 registers at
    BLOCK_J 1 (94 without GATE_FIRST), 143 at BLOCK_J 2 (145), 112 / 171 two blocks ahead (128 / 194); no spills.
    BLOCK_J 4 doubles the tiles' part: BLOCK_J 1-2 at 8 warps is the range to time."""
    tl.static_assert(DEPTH == 1 or DEPTH == 2, "gate_first_rows_sum: DEPTH (PIPELINE) 1 or 2")
    xv = tl.load(x_ptr + offs_d, mask=offs_d < d_model, other=0.0).to(tl.float32)
    # Prologue: the gate rows of blocks 0 .. DEPTH, then act(gate) and the up / W_down^T loads of blocks 0 .. DEPTH - 1.
    _, i_mask, rows = list_block(idx_ptr, lo, hi, BLOCK_J)
    wg, bg = gate_tile(wg_ptr, bg_ptr, rows, i_mask, offs_d, d_model, HAS_BG, BLOCK_J)
    if DEPTH == 2:
        _, i_mask2, rows2 = list_block(idx_ptr, lo + BLOCK_J, hi, BLOCK_J)
        wg2, bg2 = gate_tile(wg_ptr, bg_ptr, rows2, i_mask2, offs_d, d_model, HAS_BG, BLOCK_J)
    _, g_mask, g_rows = list_block(idx_ptr, lo + DEPTH * BLOCK_J, hi, BLOCK_J)
    ng, nbg = gate_tile(wg_ptr, bg_ptr, g_rows, g_mask, offs_d, d_model, HAS_BG, BLOCK_J)
    a, wu, wd, bu = live_tiles(wg, bg, xv, wu_ptr, bu_ptr, wdt_ptr, rows, i_mask, offs_d, d_model, threshold, ACT,
                               HAS_BU, BLOCK_J)
    if DEPTH == 2:
        a2, wu2, wd2, bu2 = live_tiles(wg2, bg2, xv, wu_ptr, bu_ptr, wdt_ptr, rows2, i_mask2, offs_d, d_model,
                                       threshold, ACT, HAS_BU, BLOCK_J)
    # The first block whose gate rows are not loaded yet: its list entries now, its gate rows in the first step.
    _, next_mask, next_rows = list_block(idx_ptr, lo + (DEPTH + 1) * BLOCK_J, hi, BLOCK_J)
    acc = tl.zeros([BLOCK_J, BLOCK_D], dtype=tl.float32)
    for i0 in range(lo, hi, BLOCK_J):
        _, after_mask, after_rows = list_block(idx_ptr, i0 + (DEPTH + 2) * BLOCK_J, hi, BLOCK_J)
        fg, fbg = gate_tile(wg_ptr, bg_ptr, next_rows, next_mask, offs_d, d_model, HAS_BG, BLOCK_J)
        na, nu, nd, nbu = live_tiles(ng, nbg, xv, wu_ptr, bu_ptr, wdt_ptr, g_rows, g_mask, offs_d, d_model,
                                     threshold, ACT, HAS_BU, BLOCK_J)
        x1 = tiles_x1(wu, wu, a, bu, bu, xv, threshold, ACT, False, False)   # a * up_act(up)
        acc += x1[:, None] * wd.to(tl.float32)
        if DEPTH == 2:
            a, wu, wd, bu = a2, wu2, wd2, bu2
            a2, wu2, wd2, bu2 = na, nu, nd, nbu
        else:
            a, wu, wd, bu = na, nu, nd, nbu
        ng, nbg, g_mask, g_rows = fg, fbg, next_mask, next_rows
        next_mask, next_rows = after_mask, after_rows
    return acc


@triton.jit
def write_sum_row(acc_ptr, bd_ptr, out_ptr, ticket_ptr, offs_d, d_model, HAS_BD: tl.constexpr, BLOCK_D: tl.constexpr):
    """The last program's epilogue: out = the fp32 sum row (+ b_down) in the output's dtype, BLOCK_D columns at a
    time; the sum row and the ticket zeroed for the next call."""
    for d0 in range(0, d_model, BLOCK_D):
        cols = d0 + offs_d
        c_mask = cols < d_model
        total = tl.load(acc_ptr + cols, mask=c_mask, other=0.0, cache_modifier=".cg")
        if HAS_BD:
            total += tl.load(bd_ptr + cols, mask=c_mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + cols, total, mask=c_mask)
        tl.store(acc_ptr + cols, tl.zeros([BLOCK_D], dtype=tl.float32), mask=c_mask)
    tl.atomic_xchg(ticket_ptr, 0)


@tuned(ROWS_CONFIGS, ROWS_FIXED,
       key=["d_model", "d_ff", "FUSE_GATE", "X1_GIVEN", "N_GIVEN", "BLOCK_D", "SUM_IS_OUT", "GATE_FIRST"],
       restore_value=["counts_ptr", "acc_ptr"])
@triton.jit
def rows_ffn_kernel(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, bd_ptr, gact_ptr, counts_ptr, idx_ptr, acc_ptr,
                    ticket_ptr, out_ptr, d_model, d_ff, threshold, n_given, ACT: tl.constexpr,
                    FUSE_GATE: tl.constexpr, X1_GIVEN: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr,
                    HAS_BD: tl.constexpr, N_GIVEN: tl.constexpr, ONE_STEP_D: tl.constexpr, SUM_IS_OUT: tl.constexpr,
                    GATE_FIRST: tl.constexpr, IEEE: tl.constexpr, FENCE: tl.constexpr, USE_GDC: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr, GRID_PER_SM: tl.constexpr,
                    PIPELINE: tl.constexpr):
    tl.static_assert(FUSE_GATE or not GATE_FIRST, "GATE_FIRST needs a predicted set (the gate rows read here)")
    gdc_start(USE_GDC)
    if N_GIVEN:
        n_listed = n_given
    else:
        n_listed = tl.load(counts_ptr)
    lo = (tl.program_id(0) * n_listed) // tl.num_programs(0)
    hi = ((tl.program_id(0) + 1) * n_listed) // tl.num_programs(0)
    offs_d = tl.arange(0, BLOCK_D)
    if PIPELINE and ONE_STEP_D and GATE_FIRST:  # gate rows one step ahead of the up / W_down^T rows they select
        acc = gate_first_rows_sum(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, idx_ptr, lo, hi, offs_d, d_model,
                                  threshold, ACT, HAS_BG, HAS_BU, PIPELINE, BLOCK_J, BLOCK_D)
    elif PIPELINE and ONE_STEP_D:  # whole gate / up / W_down^T rows per block, PIPELINE + 1 blocks in flight
        acc = pipelined_rows_sum(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, gact_ptr, idx_ptr, lo, hi, offs_d,
                                 d_model, threshold, ACT, FUSE_GATE, X1_GIVEN, HAS_BG, HAS_BU, PIPELINE, BLOCK_J,
                                 BLOCK_D)
    else:
        acc = plain_rows_sum(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, acc_ptr, gact_ptr, idx_ptr, lo, hi,
                             offs_d, d_model, threshold, ACT, FUSE_GATE, X1_GIVEN, HAS_BG, HAS_BU, ONE_STEP_D,
                             GATE_FIRST, IEEE, BLOCK_J, BLOCK_K, BLOCK_D)
    if ONE_STEP_D:
        if hi > lo:
            tl.atomic_add(acc_ptr + offs_d, tl.sum(acc, 0), mask=offs_d < d_model, sem="relaxed")
    if SUM_IS_OUT:  # acc is the fp32 output, set to b_down before this kernel: no epilogue, no fence
        if not N_GIVEN:  # the list length goes back to 0 once every program has read it (before its ticket)
            if tl.atomic_add(ticket_ptr, 1, sem="relaxed") == tl.num_programs(0) - 1:
                tl.store(counts_ptr, 0)
                tl.atomic_xchg(ticket_ptr, 0)
    # The last program (every warp of every program has added its sum and read the list length) writes the output.
    elif last_ticket(ticket_ptr, tl.num_programs(0), FENCE):
        write_sum_row(acc_ptr, bd_ptr, out_ptr, ticket_ptr, offs_d, d_model, HAS_BD, BLOCK_D)
        if not N_GIVEN:  # every program read the length before its ticket
            tl.store(counts_ptr, 0)


def rows_block_d(d_model: int) -> int:
    """BLOCK_D: the whole row (next power of two) up to MAX_ONE_STEP_D, else MAX_ONE_STEP_D columns per step."""
    return min(triton.next_power_of_2(d_model), MAX_ONE_STEP_D)


def launch_rows(x, w_gate, b_gate, w_up, b_up, w_down_t, b_down, gate_act_in, act, threshold, counts, idx, acc,
                ticket, out, n_sms: int, pdl: bool = False, n_given: int | None = None,
                block_d: int | None = None, config=None, x1c: torch.Tensor | None = None,
                sum_is_out: bool = False, gate_first: bool = False) -> None:
    """out[0] = sum over listed neurons i of x1_i * W_down^T[idx[i]] (+ b_down), x [1, d_model].
    `gate_act_in` None: the gate rows of listed neurons are read here (predicted set); else act(gate) [1, d_ff]
    from the gate kernel. The list: `idx` with its length in counts[0] (zeroed here when done), or the caller's
    1-D list of `n_given` entries. `acc`: fp32 [d_model], zero between calls (left zero); `ticket`: int32 [1],
    zero between calls. `block_d`: columns per down step (tests force several steps). `config`: a
    `triton.Config` of ROWS_CONFIGS run as given, not autotuned (bench_rows_probe times each). `x1c`: x1 of
    the listed neurons at their list positions (the up kernel's [1, d_ff] output): only the W_down^T rows are read
    here, an atomic down kernel (`DispatchConfig.down_kernel="atomic"`). `sum_is_out`: `acc` is the output itself,
    fp32, already set to b_down (or 0) by the gate kernel (launch_gate's init_out); `out` and `b_down` are not used,
    and the epilogue (release fence, ticket wait, the copy into the model's dtype and the zeroing) is not run: the
    programs' atomics are the last thing they do, but for one relaxed ticket that resets the list length.
    `gate_first` (a predicted set only): each block's up and W_down^T rows are read after its gate rows, for the
    neurons with act(gate) != 0 only, so the predictor's false positives cost their gate row alone (the same sum)."""
    n_tokens, d_model = x.shape
    if n_tokens != 1:
        raise ValueError(f"launch_rows computes one token, got {n_tokens}")
    d_ff = w_up.shape[0]
    block_d = block_d or rows_block_d(d_model)
    fuse_gate = gate_act_in is None and x1c is None
    if gate_first and not fuse_gate:
        raise ValueError("launch_rows: gate_first needs a predicted set (its gate rows read here); "
                         f"{'act(gate)' if gate_act_in is not None else 'x1'} was given")

    def grid(meta):
        meta = config.kwargs if config is not None else meta
        return (max(1, min(meta["GRID_PER_SM"] * n_sms, triton.cdiv(d_ff if n_given is None else n_given,
                                                                    meta["BLOCK_J"]))),)
    kernel, extra = rows_ffn_kernel, {}
    if config is not None:
        kernel, extra = rows_ffn_kernel.fn, dict(config.kwargs, num_warps=config.num_warps,
                                                 num_stages=config.num_stages)
    kernel[grid](x, w_gate, b_gate if b_gate is not None else w_gate, w_up, b_up if b_up is not None else w_up,
                 w_down_t, b_down if b_down is not None else w_down_t,
                 x1c if x1c is not None else acc if fuse_gate else gate_act_in, counts, idx,
                 acc, ticket, out, d_model, d_ff, float(threshold), n_given or 0, ACT=ACT_CODES[act],
                 FUSE_GATE=fuse_gate, X1_GIVEN=x1c is not None, HAS_BG=b_gate is not None, HAS_BU=b_up is not None,
                 HAS_BD=b_down is not None, N_GIVEN=n_given is not None, ONE_STEP_D=block_d >= d_model,
                 SUM_IS_OUT=sum_is_out, GATE_FIRST=gate_first, IEEE=x.dtype == torch.float32,
                 FENCE=not configs.INTERPRET, BLOCK_D=block_d, **launch_options(pdl), **extra)
