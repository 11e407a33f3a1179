"""The one-token rows kernel with each listed neuron's rows loaded through TMA (Hopper's tensor memory accelerator).

Same work as `rows_ffn_kernel` (triton_rows_ffn.py) where that kernel reads whole rows: each persistent program owns
a balanced range of the neuron list and, for each listed neuron n, reads its gate row (a predicted set; otherwise
act(gate) comes from the gate kernel's buffer), up row and W_down^T row, computes x1 = act(gate) * up and sums
x1 * W_down^T[n] in fp32; the program's sum goes into the fp32 sum row with atomics, and the epilogue is the rows
kernel's (the last program writes the output, or nothing where the sum row is the output, SUM_IS_OUT).

The difference is how the rows arrive. The rows kernel loads them into registers, 16 bytes per thread per load, and
its software pipeline keeps one block ahead in flight; ptxas places the next block's loads after the current block's
first multiplies (kernels/NOTES.md, session 8). Here a row is one TMA bulk copy into shared memory: the row of
d_model elements is viewed as [R, C] (C the largest power of two <= 256 dividing d_model, as TMA boxes are at most
256 elements a side; R padded to a power of two, the padding rows arrive as zeros and are not read from memory),
each matrix as [d_ff, R, C], and neuron n's row is the box at (n, 0, 0). `tl.range(num_stages=STAGES)` keeps STAGES - 1
neurons' rows in flight while the program computes on one, with no register cost for the ones in flight.

Needs what the TMA gate kernel needs (compute capability 9.0+, `triton.tools.tensor_descriptor`, contiguous rows with
16-byte aligned starts) and R_PAD * C <= MAX_ONE_STEP_D; `rows_tma_unusable` says why not, and the caller runs the
rows kernel then (said once in the log). Under the interpreter the descriptors are emulated, so CPU tests run it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .configs import ROWS_TMA_CONFIGS, ROWS_TMA_FIXED, tuned
from .triton_gate import ACT_CODES, gate_act, up_act
from .triton_rows_ffn import MAX_ONE_STEP_D, write_sum_row
from .triton_up_down import last_ticket

MAX_BOX = 256  # TMA: at most 256 elements along each side of a box
EPILOGUE_BLOCK = tl.constexpr(1024)  # columns per step of the last program's copy of the sum row into the output


@triton.jit
def row_dot(w_desc, n, xv, R_PAD: tl.constexpr, C: tl.constexpr):
    """x . row n of the matrix behind `w_desc` ([d_ff, R, C] boxes of [1, R_PAD, C]), fp32 scalar; xv [R_PAD, C]."""
    w = w_desc.load([n, 0, 0]).reshape(R_PAD, C)
    return tl.sum(tl.sum(w.to(tl.float32) * xv, 1), 0)


@tuned(ROWS_TMA_CONFIGS, ROWS_TMA_FIXED, key=["d_model", "d_ff", "FUSE_GATE", "N_GIVEN", "SUM_IS_OUT"],
       restore_value=["counts_ptr", "acc_ptr"])
@triton.jit
def rows_tma_kernel(x_ptr, wg_desc, bg_ptr, wu_desc, bu_ptr, wd_desc, bd_ptr, gact_ptr, counts_ptr, idx_ptr, acc_ptr,
                    ticket_ptr, out_ptr, d_model, d_ff, threshold, n_given, ACT: tl.constexpr,
                    FUSE_GATE: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr, HAS_BD: tl.constexpr,
                    N_GIVEN: tl.constexpr, SUM_IS_OUT: tl.constexpr, FENCE: tl.constexpr, R_PAD: tl.constexpr,
                    C: tl.constexpr, GRID_PER_SM: tl.constexpr, STAGES: tl.constexpr):
    if N_GIVEN:
        n_listed = n_given
    else:
        n_listed = tl.load(counts_ptr)
    lo = (tl.program_id(0) * n_listed) // tl.num_programs(0)
    hi = ((tl.program_id(0) + 1) * n_listed) // tl.num_programs(0)
    cols = tl.arange(0, R_PAD)[:, None] * C + tl.arange(0, C)[None, :]  # the row as [R_PAD, C]
    in_row = cols < d_model
    xv = tl.load(x_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
    acc = tl.zeros([R_PAD, C], dtype=tl.float32)
    for i in tl.range(lo, hi, num_stages=STAGES):
        n = tl.load(idx_ptr + i)
        wd = wd_desc.load([n, 0, 0]).reshape(R_PAD, C)
        up = row_dot(wu_desc, n, xv, R_PAD, C)
        if HAS_BU:
            up += tl.load(bu_ptr + n).to(tl.float32)
        if FUSE_GATE:
            g = row_dot(wg_desc, n, xv, R_PAD, C)
            if HAS_BG:
                g += tl.load(bg_ptr + n).to(tl.float32)
            a = gate_act(g, threshold, ACT)
        else:
            a = tl.load(gact_ptr + n)
        acc += (a * up_act(up, ACT)) * wd.to(tl.float32)
    if hi > lo:
        tl.atomic_add(acc_ptr + cols, acc, mask=in_row, sem="relaxed")
    if SUM_IS_OUT:  # acc is the fp32 output, set to b_down before this kernel: no epilogue, no fence
        if not N_GIVEN:  # the list length goes back to 0 once every program has read it (before its ticket)
            if tl.atomic_add(ticket_ptr, 1, sem="relaxed") == tl.num_programs(0) - 1:
                tl.store(counts_ptr, 0)
                tl.atomic_xchg(ticket_ptr, 0)
    elif last_ticket(ticket_ptr, tl.num_programs(0), FENCE):
        write_sum_row(acc_ptr, bd_ptr, out_ptr, ticket_ptr, tl.arange(0, EPILOGUE_BLOCK), d_model, HAS_BD,
                      EPILOGUE_BLOCK)
        if not N_GIVEN:  # every program read the length before its ticket
            tl.store(counts_ptr, 0)


def row_boxes(d_model: int, element_size: int) -> tuple[int, int] | str:
    """(R_PAD, C) for rows of `d_model` elements viewed as [R, C] boxes, or why they cannot be."""
    c = d_model & -d_model  # the largest power of two dividing d_model
    c = min(c, MAX_BOX)
    if c * element_size < 16:
        return f"d_model {d_model} (TMA needs row pieces of a multiple of 16 bytes: d_model a multiple of 8 in fp16)"
    r_pad = triton.next_power_of_2(d_model // c)
    if r_pad > MAX_BOX or r_pad * c > MAX_ONE_STEP_D:
        return f"d_model {d_model} (the row as [{r_pad}, {c}] boxes exceeds {MAX_ONE_STEP_D} elements)"
    return r_pad, c


def rows_tma_unusable(x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> str | None:
    """Why this call cannot load its rows through TMA (None: it can)."""
    from .triton_gate_tma import _device_reason
    if x.shape[0] != 1:
        return f"{x.shape[0]} tokens (the rows kernels serve one)"
    reason = _device_reason(x.device)
    if reason is not None:
        return reason
    boxes = row_boxes(x.shape[1], weights[0].element_size())
    if isinstance(boxes, str):
        return boxes
    for w in weights:
        if not w.is_contiguous() or w.data_ptr() % 16:
            return "weights not contiguous with 16-byte aligned starts"
    return None


def _descriptor(w: torch.Tensor, r_pad: int, c: int):
    from triton.tools.tensor_descriptor import TensorDescriptor
    d_ff, d_model = w.shape
    return TensorDescriptor.from_tensor(w.view(d_ff, d_model // c, c), [1, r_pad, c])


def launch_rows_tma(x, w_gate, b_gate, w_up, b_up, w_down_t, b_down, gate_act_in, act, threshold, counts, idx, acc,
                    ticket, out, n_sms: int, n_given: int | None = None, sum_is_out: bool = False) -> None:
    """As `launch_rows` (triton_rows_ffn.py) without x1c, block_d or config; the caller checked `rows_tma_unusable`."""
    d_model = x.shape[1]
    d_ff = w_up.shape[0]
    r_pad, c = row_boxes(d_model, w_up.element_size())
    fuse_gate = gate_act_in is None

    def grid(meta):
        return (max(1, min(meta["GRID_PER_SM"] * n_sms, d_ff if n_given is None else n_given)),)
    wu_desc, wd_desc = _descriptor(w_up, r_pad, c), _descriptor(w_down_t, r_pad, c)
    wg_desc = _descriptor(w_gate, r_pad, c) if fuse_gate else wu_desc
    rows_tma_kernel[grid](x, wg_desc, b_gate if b_gate is not None else w_gate, wu_desc,
                          b_up if b_up is not None else w_up, wd_desc, b_down if b_down is not None else w_down_t,
                          acc if fuse_gate else gate_act_in, counts, idx, acc, ticket, out, d_model, d_ff,
                          float(threshold), n_given or 0, ACT=ACT_CODES[act], FUSE_GATE=fuse_gate,
                          HAS_BG=b_gate is not None, HAS_BU=b_up is not None, HAS_BD=b_down is not None,
                          N_GIVEN=n_given is not None, SUM_IS_OUT=sum_is_out, FENCE=not configs.INTERPRET,
                          R_PAD=r_pad, C=c)
