"""One token's exact FFN (no predictor) in one kernel: the dense gate rows streamed, each block's active neurons'
up and W_down^T rows read behind them (`DispatchConfig(exact_kernel="gate_rows")`).

Each program walks neuron blocks pid, pid + P, ... (BLOCK_N neurons, whole rows, d_model <= MAX_ONE_STEP_D). With
STAGES 0 (session 8) it pipelines by hand in registers: at step b it issues block b+1's gate rows, computes block b's
act(gate) from the gate rows issued one step earlier, issues block b's up and W_down^T rows masked to its active
neurons (a masked row is not read), and adds block b-1's x1 * W_down^T rows to its fp32 sum. That kept one block of
gate rows in flight per program: the gate streamed at ~2.15 TB/s (50.5 µs at 7B / 90%, against 46.9 for gate kernel
then rows). With STAGES >= 2 (session 20) the loop is plain and Triton's pipeliner copies the gate rows STAGES - 1
blocks ahead into shared memory. No neuron list, no act(gate) buffer and
no second launch: the bytes read are the exact path's floor (all gate rows, the active neurons' up and down rows).
Like the rows kernel (triton_rows_ffn.py), each program's sum goes into one zeroed fp32 row with atomics, and the
last program (ticket) adds the bias, writes the output and zeroes the row: the last bits may differ between calls.
dReLU is not served (its x1 = 0 neurons' down rows would be read; `auto` keeps dReLU on split).
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import configs
from .configs import GATE_ROWS_CONFIGS, GATE_ROWS_FIXED, tuned
from .triton_gate import ACT_CODES, gate_act, up_act
from .triton_rows_ffn import write_sum_row
from .triton_up_down import last_ticket


@triton.jit
def block_rows(w_ptr, offs_n, live, offs_d, d_model):
    """The rows `offs_n` of a [d_ff, d_model] matrix where `live`, whole: [BLOCK_N, BLOCK_D] in its dtype."""
    return tl.load(w_ptr + offs_n.to(tl.int64)[:, None] * d_model + offs_d[None, :],
                   mask=live[:, None] & (offs_d < d_model)[None, :], other=0.0)


@triton.jit
def block_act_rows(wg, xv, bg_ptr, wu_ptr, wdt_ptr, offs_n, n_mask, offs_d, d_model, threshold, ACT: tl.constexpr,
                   HAS_BG: tl.constexpr):
    """(act(gate) [BLOCK_N] fp32, live, up rows, W_down^T rows) of one block from its gate rows `wg`: the up and
    W_down^T rows loaded (issued) for its active neurons only."""
    g = tl.sum(wg.to(tl.float32) * xv[None, :], 1)
    if HAS_BG:
        g += tl.load(bg_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    a = tl.where(n_mask, gate_act(g, threshold, ACT), 0.0)
    live = a != 0.0
    wu = block_rows(wu_ptr, offs_n, live, offs_d, d_model)
    return a, live, wu, block_rows(wdt_ptr, offs_n, live, offs_d, d_model)


@triton.jit
def one_ahead_sum(wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, d_model, d_ff, threshold, xv, offs_d,
                  ACT: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """This program's sum of x1 x W_down^T rows over its blocks pid, pid + P, ..., pipelined by hand in registers: at
    step b, block b+1's gate rows are issued, block b's act and masked up / W_down^T rows, block b-1's sum."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    wg = block_rows(wg_ptr, offs_n, offs_n < d_ff, offs_d, d_model)
    # Block b-1's stage-3 inputs; none before the first step.
    prev_a = tl.zeros([BLOCK_N], dtype=tl.float32)
    prev_bu = tl.zeros([BLOCK_N], dtype=tl.float32)
    prev_u = tl.zeros([BLOCK_N, BLOCK_D], dtype=wg.dtype)
    prev_d = tl.zeros([BLOCK_N, BLOCK_D], dtype=wg.dtype)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    n_blocks = tl.cdiv(d_ff, BLOCK_N)
    for b in range(pid, n_blocks + n_prog, n_prog):  # one step past the last block: its up / down rows
        n_mask = offs_n < d_ff
        next_n = offs_n + n_prog * BLOCK_N
        next_wg = block_rows(wg_ptr, next_n, next_n < d_ff, offs_d, d_model)
        a, live, wu, wd = block_act_rows(wg, xv, bg_ptr, wu_ptr, wdt_ptr, offs_n, n_mask, offs_d, d_model, threshold,
                                         ACT, HAS_BG)
        bu = tl.zeros([BLOCK_N], dtype=tl.float32)
        if HAS_BU:
            bu = tl.load(bu_ptr + offs_n, mask=live, other=0.0).to(tl.float32)
        prev_x1 = prev_a * up_act(tl.sum(prev_u.to(tl.float32) * xv[None, :], 1) + prev_bu, ACT)
        acc += prev_x1[:, None] * prev_d.to(tl.float32)
        wg, offs_n = next_wg, next_n
        prev_a, prev_bu, prev_u, prev_d = a, bu, wu, wd
    return tl.sum(acc, 0)


@triton.jit
def staged_sum(wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, d_model, d_ff, threshold, xv, offs_d,
               ACT: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_N: tl.constexpr, STAGES: tl.constexpr):
    """`one_ahead_sum` written as a plain loop that Triton's pipeliner runs STAGES deep: the gate rows, whose
    addresses depend only on the step, are copied ahead into shared memory (cp.async) STAGES - 1 blocks in advance,
    so they keep streaming while a step waits for its active neurons' up / W_down^T rows (loaded in the step, masked
    to those neurons)."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for b in tl.range(pid, tl.cdiv(d_ff, BLOCK_N), n_prog, num_stages=STAGES):
        offs_n = b * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < d_ff
        wg = block_rows(wg_ptr, offs_n, n_mask, offs_d, d_model)
        a, live, wu, wd = block_act_rows(wg, xv, bg_ptr, wu_ptr, wdt_ptr, offs_n, n_mask, offs_d, d_model, threshold,
                                         ACT, HAS_BG)
        up = tl.sum(wu.to(tl.float32) * xv[None, :], 1)
        if HAS_BU:
            up += tl.load(bu_ptr + offs_n, mask=live, other=0.0).to(tl.float32)
        acc += (a * up_act(up, ACT))[:, None] * wd.to(tl.float32)
    return tl.sum(acc, 0)


@tuned(GATE_ROWS_CONFIGS, GATE_ROWS_FIXED, key=["d_model", "d_ff", "BLOCK_D"])
@triton.jit
def gate_rows_kernel(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, bd_ptr, acc_ptr, ticket_ptr, out_ptr, d_model,
                     d_ff, threshold, ACT: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr,
                     HAS_BD: tl.constexpr, FENCE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                     GRID_PER_SM: tl.constexpr, STAGES: tl.constexpr):
    n_prog = tl.num_programs(0)
    offs_d = tl.arange(0, BLOCK_D)
    xv = tl.load(x_ptr + offs_d, mask=offs_d < d_model, other=0.0).to(tl.float32)
    if STAGES == 0:
        row = one_ahead_sum(wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, d_model, d_ff, threshold, xv, offs_d,
                            ACT, HAS_BG, HAS_BU, BLOCK_D, BLOCK_N)
    else:
        row = staged_sum(wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, d_model, d_ff, threshold, xv, offs_d,
                         ACT, HAS_BG, HAS_BU, BLOCK_D, BLOCK_N, STAGES)
    tl.atomic_add(acc_ptr + offs_d, row, mask=offs_d < d_model, sem="relaxed")
    # The last program (every program has added its sum) writes the output and zeroes the row and the ticket.
    if last_ticket(ticket_ptr, n_prog, FENCE):
        write_sum_row(acc_ptr, bd_ptr, out_ptr, ticket_ptr, offs_d, d_model, HAS_BD, BLOCK_D)


def launch_gate_rows(x, w_gate, b_gate, w_up, b_up, w_down_t, b_down, act, threshold, acc, ticket, out,
                     n_sms: int) -> None:
    """out[0] = sum over neurons i with act(gate_i) != 0 of act(gate_i) up_i W_down^T[i] (+ b_down), x [1, d_model],
    whole rows (d_model <= MAX_ONE_STEP_D of triton_rows_ffn). `acc`: fp32 [d_model] and `ticket`: int32 [1], zero
    between calls (left zero)."""
    from .triton_rows_ffn import MAX_ONE_STEP_D
    n_tokens, d_model = x.shape
    if n_tokens != 1 or d_model > MAX_ONE_STEP_D or act == "drelu":
        raise ValueError(f"launch_gate_rows: one token, d_model <= {MAX_ONE_STEP_D}, no dReLU; got {n_tokens} "
                         f"tokens, d_model {d_model}, {act}")
    d_ff = w_gate.shape[0]

    def grid(meta):
        return (max(1, min(meta["GRID_PER_SM"] * n_sms, triton.cdiv(d_ff, meta["BLOCK_N"]))),)
    gate_rows_kernel[grid](x, w_gate, b_gate if b_gate is not None else w_gate, w_up,
                           b_up if b_up is not None else w_up, w_down_t, b_down if b_down is not None else w_down_t,
                           acc, ticket, out, d_model, d_ff, float(threshold), ACT=ACT_CODES[act],
                           HAS_BG=b_gate is not None, HAS_BU=b_up is not None, HAS_BD=b_down is not None,
                           FENCE=not configs.INTERPRET, BLOCK_D=triton.next_power_of_2(d_model))
