"""Predicted-set FFN in two launches (Version 2, `DispatchConfig(predicted_kernel="fused")`): no compaction
launch, no memset, no atomics except the split tickets, deterministic.

Both kernels walk "positions": the neurons 0..d_ff-1 when the set is a bool mask, or the entries of the
caller's index list (unique neuron ids, e.g. `torch.nonzero(mask)`) when it is one. Nothing is compacted.
`pred_up_kernel`: program p owns positions [p*BLOCK_N, (p+1)*BLOCK_N): it reads its slice of the mask (or
index list), loads the gate and up rows of the active neurons only (the loads of inactive rows are
predicated off: no bytes move) and writes x1 = act(gate) * up for every position of its slice, 0 where
inactive, so x1 needs no memset and the next kernel needs no list. Many small programs (688 at BLOCK_N=16
for d_ff=11008) fill the GPU in one wave whatever the active fraction.
`pred_down_kernel`: program (column block c, split s) sums x1[:, pos] * W_down^T[row(pos), cols] over the
s-th contiguous range of positions, reading only rows whose x1 is non-zero for some token (dReLU's up <= 0
neurons cost nothing). The last of the SPLITS programs of a column block (ticket) adds the partial sums in
split order, adds the bias and stores the output dtype: the summation order is fixed, so identical calls
give identical bits (Version 1's atomic list order could move one ulp).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .configs import PRED_DOWN_CONFIGS, PRED_DOWN_FIXED, PRED_UP_CONFIGS, PRED_UP_FIXED, tuned
from .triton_gate import ACT_CODES, gate_act, gate_of_rows, token_block, up_of_rows
from .triton_up_down import down_acc_add, down_acc_init, down_acc_result, reduce_splits


@tuned(PRED_UP_CONFIGS, PRED_UP_FIXED, key=["d_model", "d_ff", "BLOCK_T", "HAS_IDX", "MASK_PER_TOKEN"])
@triton.jit
def pred_up_kernel(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, mask_ptr, idx_ptr, x1_ptr,
                   n_tokens, n_pos, d_model, d_ff, threshold, ACT: tl.constexpr, HAS_BG: tl.constexpr,
                   HAS_BU: tl.constexpr, HAS_IDX: tl.constexpr, MASK_PER_TOKEN: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    p_mask = offs < n_pos
    tokens = tl.arange(0, BLOCK_T)
    t_mask = tokens < n_tokens
    valid = t_mask[:, None] & p_mask[None, :]
    if HAS_IDX:
        rows = tl.load(idx_ptr + offs, mask=p_mask, other=0)
        live = p_mask
    elif MASK_PER_TOKEN:
        keep = tl.load(mask_ptr + tokens[:, None] * d_ff + offs[None, :], mask=valid, other=0) != 0
        live = tl.max(keep.to(tl.int32), 0) > 0  # union: the row is read once for all tokens
        rows = offs
    else:
        live = tl.load(mask_ptr + offs, mask=p_mask, other=0) != 0
        rows = offs
    # Only live rows are loaded (the masked loads of the others issue no memory traffic).
    up = up_of_rows(wu_ptr, bu_ptr, rows, live, x_ptr, tokens, t_mask, d_model, ACT, HAS_BU, IEEE, BLOCK_T,
                    BLOCK_N, BLOCK_K)
    g = gate_of_rows(wg_ptr, bg_ptr, rows, live, x_ptr, tokens, t_mask, d_model, HAS_BG, IEEE, BLOCK_T, BLOCK_N,
                     BLOCK_K)
    keep_all = live[None, :] & t_mask[:, None]
    if MASK_PER_TOKEN:  # (never set with an index list)
        keep_all = keep_all & keep  # each token keeps only its own predicted neurons
    x1 = tl.where(keep_all, gate_act(g, threshold, ACT) * up, 0.0)
    tl.store(x1_ptr + tokens[:, None] * n_pos + offs[None, :], x1, mask=valid)


@tuned(PRED_DOWN_CONFIGS, PRED_DOWN_FIXED, key=["d_model", "d_ff", "BLOCK_T", "HAS_IDX"])
@triton.jit
def pred_down_kernel(x1_ptr, wdt_ptr, bd_ptr, idx_ptr, partial_ptr, tickets_ptr, out_ptr,
                     n_tokens, n_pos, d_model, d_ff, HAS_BIAS: tl.constexpr, HAS_IDX: tl.constexpr,
                     IEEE: tl.constexpr, FENCE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_J: tl.constexpr, SPLITS: tl.constexpr):
    col_blk = tl.program_id(0)
    split = tl.program_id(1)
    offs_d = col_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < d_model
    tokens = tl.arange(0, BLOCK_T)
    t_mask = tokens < n_tokens
    per_split = tl.cdiv(n_pos, SPLITS)
    pos_end = tl.minimum(split * per_split + per_split, n_pos)
    acc = down_acc_init(BLOCK_T, BLOCK_J, BLOCK_D)
    for p0 in range(split * per_split, pos_end, BLOCK_J):
        offs_p = p0 + tl.arange(0, BLOCK_J)
        in_range = offs_p < pos_end
        x1 = tl.load(x1_ptr + tokens[:, None] * n_pos + offs_p[None, :], mask=t_mask[:, None] & in_range[None, :],
                     other=0.0)
        live = in_range & (tl.max(tl.abs(x1), 0) != 0.0)  # rows with x1 == 0 for every token are not read
        if HAS_IDX:
            rows = tl.load(idx_ptr + offs_p, mask=live, other=0)
        else:
            rows = offs_p
        acc = down_acc_add(acc, x1, wdt_ptr, rows, live, offs_d, d_mask, d_model, IEEE, BLOCK_T)
    reduce_splits(down_acc_result(acc, BLOCK_T), split, tokens, offs_d, t_mask[:, None] & d_mask[None, :], d_mask, n_tokens, d_model,
                  partial_ptr, out_ptr, bd_ptr, tickets_ptr + col_blk, HAS_BIAS, FENCE, BLOCK_T, BLOCK_D, SPLITS)


def predicted_ffn(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, activation, threshold, mask, idx, tickets,
                  alloc=torch.empty):
    """x [T, d] -> [T, d] over a predicted set, union mode: `mask` bool [1, d_ff] or [T, d_ff] (each token
    keeps only its own neurons), or `idx` (1-D unique neuron ids, int32 or int64; mask None).
    Two launches; `tickets` holds >= cdiv(d, 16) zeros and is left zeroed; `alloc` makes x1, the partial sums
    and the output (tests poison them with NaN)."""
    if x.device.type != "cuda" and not configs.INTERPRET:
        raise RuntimeError("the Triton backend needs a CUDA tensor (or TRITON_INTERPRET=1 set before importing "
                           "triton); use backend='torch' on CPU")
    n_tokens, d_model = x.shape
    d_ff = w_gate.shape[0]
    n_pos = d_ff if idx is None else idx.shape[0]
    dev = x.device
    block_t = token_block(n_tokens)
    ieee = x.dtype == torch.float32
    x1 = alloc(n_tokens, max(n_pos, 1), dtype=torch.float32, device=dev)
    per_token_mask = mask is not None and mask.shape[0] > 1
    up_grid = lambda meta: (triton.cdiv(n_pos, meta["BLOCK_N"]),)  # noqa: E731
    if n_pos > 0:
        pred_up_kernel[up_grid](
            x, w_gate, b_gate if b_gate is not None else w_gate, w_up, b_up if b_up is not None else w_up,
            mask.view(torch.uint8) if mask is not None else idx, idx if idx is not None else x1, x1,
            n_tokens, n_pos, d_model, d_ff, float(threshold), ACT=ACT_CODES[activation], HAS_BG=b_gate is not None,
            HAS_BU=b_up is not None, HAS_IDX=idx is not None, MASK_PER_TOKEN=per_token_mask, IEEE=ieee,
            BLOCK_T=block_t)
    splits = PRED_DOWN_FIXED["SPLITS"] if configs.INTERPRET else configs.PRED_MAX_SPLITS
    partials = alloc(splits * n_tokens * d_model, dtype=torch.float32, device=dev)
    out = alloc(n_tokens, d_model, dtype=x.dtype, device=dev)
    down_grid = lambda meta: (triton.cdiv(d_model, meta["BLOCK_D"]), meta["SPLITS"])  # noqa: E731
    pred_down_kernel[down_grid](
        x1, w_down_t, b_down if b_down is not None else w_down_t, idx if idx is not None else x1, partials, tickets,
        out, n_tokens, n_pos, d_model, d_ff, HAS_BIAS=b_down is not None, HAS_IDX=idx is not None, IEEE=ieee,
        FENCE=not configs.INTERPRET, BLOCK_T=block_t)
    return out
