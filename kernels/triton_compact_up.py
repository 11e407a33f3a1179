"""Predicted set at batch 1 in two launches: Version 1's compacted lists, with the compaction done inside the up
kernel (`DispatchConfig(predicted_kernel="lists_inline")`). Not yet timed.

Measured on an H100 (kernels/NOTES.md, session 3): Version 1 spends 25.9 µs in four kernels, and ~12 µs more
between them in a graph. Version 2 got rid of the compaction by loading rows under a per-row predicate, and it
measured slower: with ~1.6 live rows per 16-row program, too few bytes were in flight.
`compact_up_kernel` keeps the property that made Version 1 faster, loading only whole live rows, and drops
the separate compaction. Program p owns neurons [p*BLOCK_N, (p+1)*BLOCK_N). It reads that slice of the mask
and reserves list positions for its live neurons with one atomic (what `compact_kernel` does). Then it
gathers the live neuron ids BLOCK_R at a time from its own registers and computes their gate and up dot
products over full-width rows. It writes x1 at the reserved positions and the ids into the list, so
`down_kernel` follows unchanged. The list lengths are zeroed by the down kernel, so there is no memset.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import COMPACT_UP_CONFIGS, COMPACT_UP_FIXED, tuned
from .triton_gate import ACT_CODES, append_union, gate_act, gate_of_rows, up_of_rows


@tuned(COMPACT_UP_CONFIGS, COMPACT_UP_FIXED, key=["d_model", "d_ff"], reset_to_zero=["counts_ptr"])
@triton.jit
def compact_up_kernel(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, mask_ptr, counts_ptr, idx_ptr, x1c_ptr,
                      d_model, d_ff, threshold, ACT: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr,
                      IEEE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    live = (tl.load(mask_ptr + offs_n, mask=offs_n < d_ff, other=0) != 0).to(tl.int32)
    n_live = tl.sum(live, 0)
    base, rank = append_union(live, offs_n, counts_ptr, idx_ptr)  # rank: 1-based within the slice
    token = tl.arange(0, 1)
    one = token < 1
    for r0 in range(0, n_live, BLOCK_R):
        ranks = r0 + tl.arange(0, BLOCK_R)
        r_mask = ranks < n_live
        pick = (rank[None, :] == ranks[:, None] + 1) & (live[None, :] > 0)
        rows = tl.sum(tl.where(pick, offs_n[None, :], 0), axis=1)  # the live neuron ids of this group
        up = up_of_rows(wu_ptr, bu_ptr, rows, r_mask, x_ptr, token, one, d_model, ACT, HAS_BU, IEEE, 1, BLOCK_R,
                        BLOCK_K)
        g = gate_of_rows(wg_ptr, bg_ptr, rows, r_mask, x_ptr, token, one, d_model, HAS_BG, IEEE, 1, BLOCK_R, BLOCK_K)
        tl.store(x1c_ptr + base + ranks[None, :], gate_act(g, threshold, ACT) * up, mask=r_mask[None, :])


def launch_compact_up(x, w_gate, b_gate, w_up, b_up, mask, act, threshold, counts, idx, x1c) -> None:
    """Batch 1: the union list of `mask` ([1, d_ff] bool) in (counts, idx) and x1 of its neurons in x1c."""
    if x.shape[0] != 1 or mask.shape[0] != 1:
        raise ValueError(f"compact_up_kernel is for one token and one mask row, got x {tuple(x.shape)}, "
                         f"mask {tuple(mask.shape)}")
    d_ff, d_model = w_gate.shape
    grid = lambda meta: (triton.cdiv(d_ff, meta["BLOCK_N"]),)  # noqa: E731
    compact_up_kernel[grid](x, w_gate, b_gate if b_gate is not None else w_gate, w_up,
                            b_up if b_up is not None else w_up, mask.view(torch.uint8), counts, idx, x1c,
                            d_model, d_ff, float(threshold), ACT=ACT_CODES[act], HAS_BG=b_gate is not None,
                            HAS_BU=b_up is not None, IEEE=x.dtype == torch.float32)
