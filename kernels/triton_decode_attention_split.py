"""The split over cached positions of the decode attention kernel (triton_decode_attention.py; flash-decoding): how many
splits the host picks, the scratch a DecodeAttention keeps for them, and the kernel's epilogue that combines them.

With SPLITS > 1 the kernel's grid is (batch * kv heads, SPLITS): split s of a (b, kv head) attends over its own
contiguous range of the positions 0..pos and stores a partial online softmax (running max m, sum l, unnormalised
acc [groups, head_dim], fp32, log2 units) to `partials`; the last of the head's SPLITS programs to take its ticket
reads all of them (in split order, so the result does not depend on who finished last), rescales them to a common max
(log-sum-exp) and writes the output. The state is a DecodeAttention's one int32 tensor, allocated once (nothing per
call: CUDA-graph safe): tickets that every call leaves at 0, then the fp32 partials, written before they are read.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import configs
from .triton_up_down import last_ticket

# The host rule (`split_count`). pos lives on the device (a CUDA graph replays one launch at every position), so
# the host sizes the split by the cache's max_len: at most MAX_SPLITS, each of at least MIN_SPLIT_POSITIONS
# positions of max_len (fewer make the combine's round trips cost more than the steps saved), and no more programs
# than SMs (batch * kv heads * SPLITS <= SMs: one wave). 7B (32 kv heads, 168 positions, 132 SMs): min(8, 5, 4) = 4
# splits, 128 programs of <= 42 positions; 8 kv heads (GQA, 4 q heads each): min(8, 5, 16) = 5, 40 programs.
MIN_SPLIT_POSITIONS = 32
MAX_SPLITS = 8
# Split programs a DecodeAttention's state holds: more than any GPU's SMs so far (H100 / H200 132, B200 148), so
# the rule's pick always fits (batch * kv heads * SPLITS <= SMs). 134 KB per layer at 7B, 533 KB with 4 q heads per
# kv head (head_dim 128).
SPLIT_PROGRAMS = 256
# The state is one int32 tensor (a float buffer would follow a module's .half()): STATE_TICKETS tickets ([0] counts
# the heads done, [1 + head] a head's splits done), then the fp32 partials (1 KB in: 16-byte aligned).
STATE_TICKETS = 256


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """The SMs a launch can cover; one under the interpreter (programs run one after another: no split by default)."""
    if configs.INTERPRET or device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_count(batch: int, n_kv: int, max_len: int, n_sms: int) -> int:
    """SPLITS for a cache of `max_len` positions of `n_kv` heads at `batch`, `n_sms` SMs (the rule above)."""
    return max(1, min(MAX_SPLITS, max_len // MIN_SPLIT_POSITIONS, n_sms // (batch * n_kv)))


def partial_floats(programs: int, groups: int, head_dim: int) -> int:
    """fp32 elements of the partials of `programs` split programs: acc [BLOCK_G, head_dim], then m and l [BLOCK_G]."""
    return programs * triton.next_power_of_2(groups) * (head_dim + 2)


def split_state(groups: int, head_dim: int, device, programs: int = SPLIT_PROGRAMS) -> torch.Tensor:
    """The kernel's state for up to `programs` split programs of `groups` q heads per kv head, zeroed: its tickets are
    left at 0 by every call, its partials are written before they are read."""
    return torch.zeros(STATE_TICKETS + partial_floats(programs, groups, head_dim), dtype=torch.int32, device=device)


def state_views(state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tickets int32, partials fp32) of a state; a state of STATE_TICKETS words or fewer (e.g. the one ticket of
    SPLITS 1) has no partials: the whole state, viewed as fp32, stands for them (never read)."""
    if state.numel() <= STATE_TICKETS:
        return state, state.view(torch.float32)[:0]
    return state[:STATE_TICKETS], state[STATE_TICKETS:].view(torch.float32)


def splits_fitting(state: torch.Tensor, heads: int, groups: int, head_dim: int) -> int:
    """The most SPLITS that `state` holds for `heads` (batch * kv heads) programs per split (1: no split)."""
    tickets, partials = state_views(state)
    if tickets.numel() < 1 + heads:
        return 1
    return max(1, partials.numel() // partial_floats(heads, groups, head_dim))


def pick_splits(state: torch.Tensor | None, batch: int, n_kv: int, groups: int, head_dim: int, max_len: int,
                device: torch.device, splits: int | None) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(SPLITS, tickets, partials) for one call: `splits` (a state too small for them: ValueError), or the rule's pick
    within what `state` holds; a state of its size is allocated here when None."""
    heads = batch * n_kv
    if splits is None:
        splits = split_count(batch, n_kv, max_len, sm_count(device))
        splits = splits if state is None else min(splits, splits_fitting(state, heads, groups, head_dim))
    if state is None:
        state = split_state(groups, head_dim, device, heads * splits if splits > 1 else 0)
    if splits > 1 and splits_fitting(state, heads, groups, head_dim) < splits:
        raise ValueError(f"{splits} splits of {heads} heads need a state of "
                         f"{STATE_TICKETS + partial_floats(heads * splits, groups, head_dim)} words; given "
                         f"{state.numel()}")
    tickets, partials = state_views(state)
    return splits, tickets, partials if partials.numel() else state.view(torch.float32)


@triton.jit
def combine_splits(m_i, l_i, acc, live, partials_ptr, ticket_ptr, out_ptrs, out_mask, FENCE: tl.constexpr,
                   BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
    """Store this split's partial (m_i, l_i [BLOCK_G], acc [BLOCK_G, HEAD_DIM]); the last of the head's SPLITS
    programs to take its ticket (release after a GPU-scope fence, acquire; other programs' partials read through L2,
    `.cg`) combines them in split order, writes the output (NaN where not `live`) and resets the ticket. Returns
    whether this program combined. Layout: every program's acc records first (16-byte aligned), then (m, l) pairs."""
    head = tl.program_id(0)
    split = tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    tile = g[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    acc_part = partials_ptr + head * SPLITS * BLOCK_G * HEAD_DIM
    ml_part = partials_ptr + tl.num_programs(0) * SPLITS * BLOCK_G * HEAD_DIM + head * SPLITS * 2 * BLOCK_G + g
    tl.store(acc_part + split * BLOCK_G * HEAD_DIM + tile, acc)
    tl.store(ml_part + split * 2 * BLOCK_G, m_i)
    tl.store(ml_part + split * 2 * BLOCK_G + BLOCK_G, l_i)
    last = last_ticket(ticket_ptr, SPLITS, FENCE)
    if last:
        # Every m is finite (>= -1.0e30, empty splits included) and the owner's new token makes the max at least
        # its score: an empty split's weight is exp2(-1.0e30 - m_max) = 0.
        m_max = tl.full([BLOCK_G], -1.0e30, tl.float32)
        for s in tl.static_range(SPLITS):
            m_max = tl.maximum(m_max, tl.load(ml_part + s * 2 * BLOCK_G, cache_modifier=".cg"))
        l_sum = tl.zeros([BLOCK_G], dtype=tl.float32)
        acc_sum = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
        for s in tl.static_range(SPLITS):   # unrolled: the loads are independent, issued back to back
            w = tl.exp2(tl.load(ml_part + s * 2 * BLOCK_G, cache_modifier=".cg") - m_max)
            l_sum += w * tl.load(ml_part + s * 2 * BLOCK_G + BLOCK_G, cache_modifier=".cg")
            acc_sum += w[:, None] * tl.load(acc_part + s * BLOCK_G * HEAD_DIM + tile, cache_modifier=".cg")
        tl.store(out_ptrs, tl.where(live, acc_sum / l_sum[:, None], float("nan")), mask=out_mask)
        tl.atomic_xchg(ticket_ptr, 0)   # ready for the next call
    return last
