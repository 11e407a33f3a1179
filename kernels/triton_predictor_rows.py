"""The predictor path at one token in one launch: the predictor's two layers, the neuron list and the rows kernel's
work, separated by grid-wide barriers instead of kernel boundaries.

Why (H100, 7B, rank 360, 15% predicted; session 14, scripts/device/probe_predictor_path.py): the three kernels of
`low_rank` lists (triton_predictor_list.py: the predictor GEMV 3.65 µs for 2.9 MB, the list kernel ~7 µs for 7.9 MB;
then triton_rows_ffn.py ~18.8 µs for 40.6 MB) take 29.4 µs per layer, ~12 µs above their 51 MB at 2.9 TB/s. Each
kernel waits for the one before it to finish and its writes to drain, then ramps up, and its first loads wait on
those writes; PDL (pdl.py) hides only the launch. Here one program per SM runs:
1. h = act(src @ W1^T) over whole rows of W1 (BLOCK_R per program, rounded to the weights' dtype as the GEMV
   rounds it), after issuing the loads of its own tile of W2 (a contiguous range of d_ff / P neurons, the whole
   rank; longer ranges or ranks: bulk L2 prefetches, read in steps after the barrier) and setting the fp32 output
   row to b_down (or 0);
2. after barrier 1, the logits of its neurons, those >= cut appended to the list with one atomic;
3. after barrier 2, the rows kernel's work over a balanced share of the list (`pipelined_rows_sum`, or with
   GATE_FIRST `gate_first_rows_sum`: false positives' up / W_down^T rows not read), added into the output row;
   the last program to leave resets the list length and the barrier counters.
The barriers spin: every program must be resident at once, which one program per SM is when nothing else runs on
the GPU (the decode step's kernels run one after another on one stream). Under the interpreter (programs run one
after another: a barrier would never open) the same code runs as three launches (PHASE 1, 2, 3), which is also
what `launch_predictor_rows(..., fused=False)` does on a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .configs import PREDICTOR_ROWS_CONFIGS, PREDICTOR_ROWS_FIXED, tuned
from .triton_gate import ACT_CODES, append_union
from .triton_gate_tma import init_sum_row, prefetch_rows_to_l2
from .triton_rows_ffn import MAX_ONE_STEP_D, gate_first_rows_sum, pipelined_rows_sum
from .triton_up_down import writes_done


@triton.jit
def grid_barrier(sync_ptr, n_programs, FENCE: tl.constexpr):
    """Every program's writes before it are visible to every program after it: arrive (release) on the counter
    `sync_ptr`, poll it (volatile loads) until all `n_programs` arrived, then a fence in every thread (acquire: its
    later loads see the others' writes, not lines of its SM's L1)."""
    writes_done(FENCE)
    tl.atomic_add(sync_ptr, 1, sem="release")
    arrived = tl.load(sync_ptr, volatile=True)   # polled by loads from L2, not read-modify-writes of one address
    while arrived < n_programs:
        arrived = tl.load(sync_ptr, volatile=True)
    writes_done(FENCE)


@triton.jit
def hidden_rows(src_ptr, w1_ptr, h_ptr, rank, d_model, RELU_H: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """h[r] = act(src . W1[r]) in fp32, rounded to the weights' dtype, for this program's blocks of BLOCK_R whole rows
    (blocks pid, pid + P, ...)."""
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < d_model
    xv = tl.load(src_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    for r0 in range(tl.program_id(0) * BLOCK_R, rank, tl.num_programs(0) * BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        r_mask = rows < rank
        w = tl.load(w1_ptr + rows.to(tl.int64)[:, None] * d_model + offs_d[None, :],
                    mask=r_mask[:, None] & d_mask[None, :], other=0.0)
        h = tl.sum(w.to(tl.float32) * xv[None, :], 1).to(w1_ptr.dtype.element_ty).to(tl.float32)
        if RELU_H:
            h = tl.maximum(h, 0.0)
        tl.store(h_ptr + rows, h, mask=r_mask)


@triton.jit
def w2_tile(w2_ptr, b2_ptr, n_lo, n_hi, rank, HAS_B2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_RK: tl.constexpr):
    """The rows n_lo..n_hi (< n_lo + BLOCK_N) of W2, the whole rank (<= BLOCK_RK), and their biases (fp32 zeros
    without): weights only, so a program loads them before h exists."""
    offs_n = n_lo + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_RK)
    w = tl.load(w2_ptr + offs_n.to(tl.int64)[:, None] * rank + offs_k[None, :],
                mask=(offs_n < n_hi)[:, None] & (offs_k < rank)[None, :], other=0.0)
    b = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_B2:
        b = tl.load(b2_ptr + offs_n, mask=offs_n < n_hi, other=0.0).to(tl.float32)
    return w, b


@triton.jit
def append_tile(w, b, h_ptr, counts_ptr, idx_ptr, n_lo, n_hi, rank, cut, BLOCK_N: tl.constexpr,
                BLOCK_RK: tl.constexpr):
    """Append the neurons of a `w2_tile` whose logit h . W2[n] + b2[n] is >= cut to the union list (one atomic); h
    is read past L1 (other programs wrote it)."""
    offs_n = n_lo + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_RK)
    hv = tl.load(h_ptr + offs_k, mask=offs_k < rank, other=0.0, cache_modifier=".cg")
    logit = tl.sum(w.to(tl.float32) * hv[None, :], 1) + b
    append_union(((offs_n < n_hi) & (logit >= cut)).to(tl.int32), offs_n, counts_ptr, idx_ptr)


@triton.jit
def list_range(h_ptr, w2_ptr, b2_ptr, counts_ptr, idx_ptr, n_lo, n_hi, rank, cut, HAS_B2: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_RK: tl.constexpr):
    """`append_tile` for ranges longer than BLOCK_N or ranks above BLOCK_RK: BLOCK_N neurons at a time (one atomic
    each), BLOCK_RK of the rank per step, the loads after h exists."""
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < n_hi
        acc = tl.zeros([BLOCK_N, BLOCK_RK], dtype=tl.float32)
        for k0 in range(0, rank, BLOCK_RK):
            offs_k = k0 + tl.arange(0, BLOCK_RK)
            k_mask = offs_k < rank
            w = tl.load(w2_ptr + offs_n.to(tl.int64)[:, None] * rank + offs_k[None, :],
                        mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            hv = tl.load(h_ptr + offs_k, mask=k_mask, other=0.0, cache_modifier=".cg")
            acc += w.to(tl.float32) * hv[None, :]
        logit = tl.sum(acc, 1)
        if HAS_B2:
            logit += tl.load(b2_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        append_union((n_mask & (logit >= cut)).to(tl.int32), offs_n, counts_ptr, idx_ptr)


@triton.jit
def listed_rows_into(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, counts_ptr, idx_ptr, out_ptr, d_model,
                     threshold, ACT: tl.constexpr, HAS_BG: tl.constexpr, HAS_BU: tl.constexpr,
                     GATE_FIRST: tl.constexpr, PIPELINE: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """out += sum over this program's share of the list of x1 * W_down^T rows (gate, up and W_down^T rows read
    here, whole rows)."""
    n_listed = tl.atomic_add(counts_ptr, 0, sem="relaxed")
    lo = (tl.program_id(0) * n_listed) // tl.num_programs(0)
    hi = ((tl.program_id(0) + 1) * n_listed) // tl.num_programs(0)
    offs_d = tl.arange(0, BLOCK_D)
    if GATE_FIRST:
        acc = gate_first_rows_sum(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, idx_ptr, lo, hi, offs_d, d_model,
                                  threshold, ACT, HAS_BG, HAS_BU, PIPELINE, BLOCK_J, BLOCK_D)
    else:
        acc = pipelined_rows_sum(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, out_ptr, idx_ptr, lo, hi, offs_d,
                                 d_model, threshold, ACT, True, False, HAS_BG, HAS_BU, PIPELINE, BLOCK_J, BLOCK_D)
    if hi > lo:
        tl.atomic_add(out_ptr + offs_d, tl.sum(acc, 0), mask=offs_d < d_model, sem="relaxed")


@tuned(PREDICTOR_ROWS_CONFIGS, PREDICTOR_ROWS_FIXED, key=["d_model", "d_ff", "rank", "PHASE", "GATE_FIRST"],
       restore_value=["counts_ptr", "idx_ptr", "sync_ptr", "out_ptr"])
@triton.jit
def predictor_rows_kernel(x_ptr, src_ptr, w1_ptr, w2_ptr, b2_ptr, h_ptr, sync_ptr, counts_ptr, idx_ptr, wg_ptr,
                          bg_ptr, wu_ptr, bu_ptr, wdt_ptr, out_ptr, bout_ptr, d_model, d_ff, rank, cut, threshold,
                          ACT: tl.constexpr, RELU_H: tl.constexpr, HAS_B2: tl.constexpr, HAS_BG: tl.constexpr,
                          HAS_BU: tl.constexpr, HAS_BOUT: tl.constexpr, GATE_FIRST: tl.constexpr,
                          PHASE: tl.constexpr, PREFETCH: tl.constexpr, EARLY_W2: tl.constexpr,
                          FENCE: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_RK: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_J: tl.constexpr, PIPELINE: tl.constexpr):
    n_programs = tl.num_programs(0)
    per_program = tl.cdiv(d_ff, n_programs)
    n_lo = tl.program_id(0) * per_program
    n_hi = tl.minimum(n_lo + per_program, d_ff)
    if EARLY_W2 and PHASE != 1 and PHASE != 3:  # this program's W2 rows and biases while h is computed
        w2, b2 = w2_tile(w2_ptr, b2_ptr, n_lo, n_hi, rank, HAS_B2, BLOCK_N, BLOCK_RK)
    if PHASE <= 1:
        if PREFETCH and not EARLY_W2:  # this program's W2 rows, read after barrier 1: towards L2 now
            for n0 in range(n_lo, n_hi, BLOCK_N):
                rows = n0 + tl.arange(0, BLOCK_N)
                prefetch_rows_to_l2(w2_ptr, rows, (rows < n_hi).to(tl.int32), rank)
        init_sum_row(out_ptr, bout_ptr, d_model, HAS_BOUT)
        hidden_rows(src_ptr, w1_ptr, h_ptr, rank, d_model, RELU_H, BLOCK_R, BLOCK_D)
    if PHASE == 0:
        grid_barrier(sync_ptr, n_programs, FENCE)
    if PHASE == 0 or PHASE == 2:
        if EARLY_W2:
            append_tile(w2, b2, h_ptr, counts_ptr, idx_ptr, n_lo, n_hi, rank, cut, BLOCK_N, BLOCK_RK)
        else:
            list_range(h_ptr, w2_ptr, b2_ptr, counts_ptr, idx_ptr, n_lo, n_hi, rank, cut, HAS_B2, BLOCK_N,
                       BLOCK_RK)
    if PHASE == 0:
        grid_barrier(sync_ptr + 1, n_programs, FENCE)
    if PHASE == 0 or PHASE == 3:
        listed_rows_into(x_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, counts_ptr, idx_ptr, out_ptr, d_model,
                         threshold, ACT, HAS_BG, HAS_BU, GATE_FIRST, PIPELINE, BLOCK_J, BLOCK_D)
        # The last program out (every program has read the list length) resets the state for the next call.
        if tl.atomic_add(sync_ptr + 2, 1, sem="acq_rel") == n_programs - 1:
            tl.store(counts_ptr, 0)
            tl.store(sync_ptr, 0)
            tl.store(sync_ptr + 1, 0)
            tl.atomic_xchg(sync_ptr + 2, 0)


def predictor_rows_unusable(x: torch.Tensor, logits, w_up: torch.Tensor) -> str | None:
    """Why `launch_predictor_rows` cannot take this call (None: it can)."""
    if x.shape[0] != 1:
        return f"{x.shape[0]} tokens (one token only)"
    if x.shape[1] > MAX_ONE_STEP_D:
        return f"d_model {x.shape[1]} > {MAX_ONE_STEP_D} (whole rows per block)"
    if logits.down.dtype != w_up.dtype or logits.up.dtype != w_up.dtype:
        return "predictor weights in another dtype than the FFN's"
    return None


def predictor_rows_state(rank: int, device) -> torch.Tensor:
    """fp32 [rank + 3]: h, then the two barrier counters and the exit ticket (int32 bits), zero between calls."""
    return torch.zeros(rank + 3, dtype=torch.float32, device=device)


def launch_predictor_rows(x, logits, w_gate, b_gate, w_up, b_up, w_down_t, act: str, threshold: float,
                          counts: torch.Tensor, idx: torch.Tensor, state: torch.Tensor, out: torch.Tensor,
                          b_down: torch.Tensor | None, n_sms: int, fused: bool = True,
                          gate_first: bool = False) -> None:
    """out[:d_model] (fp32) = b_down + the FFN of the one token x [1, d_model] over the neurons `logits` (a
    LowRankLogits) predicts, all computed here (the caller checked `predictor_rows_unusable`). `counts` (its [0], the
    list length) and `idx` [d_ff] int32: the list's buffers, counts[0] zero on entry and left zero; `state`:
    `predictor_rows_state`. `fused`: one launch with grid barriers (one program per SM; not under the interpreter),
    else three launches of the same code. `gate_first`: false positives' up / W_down^T rows are not read."""
    d_model = x.shape[1]
    d_ff, rank = logits.up.shape
    down, up = logits.down.contiguous(), logits.up.contiguous()
    src = (x if logits.source is None else logits.source).reshape(-1).to(down.dtype).contiguous()
    h, sync = state[:rank], state[rank:].view(torch.int32)
    fused = fused and not configs.INTERPRET
    n_programs = 3 if configs.INTERPRET else n_sms   # the interpreter: several programs, blocks that loop
    args = (x, src, down, up, logits.bias if logits.bias is not None else up, h, sync, counts, idx, w_gate,
            b_gate if b_gate is not None else w_gate, w_up, b_up if b_up is not None else w_up, w_down_t, out,
            b_down if b_down is not None else out, d_model, d_ff, rank, float(logits.cut), float(threshold))
    flags = dict(ACT=ACT_CODES[act], RELU_H=bool(logits.relu_hidden), HAS_B2=logits.bias is not None,
                 HAS_BG=b_gate is not None, HAS_BU=b_up is not None, HAS_BOUT=b_down is not None,
                 GATE_FIRST=gate_first, PREFETCH=not configs.INTERPRET and rank * up.element_size() % 16 == 0,
                 FENCE=not configs.INTERPRET, BLOCK_D=triton.next_power_of_2(d_model),
                 BLOCK_R=min(8, triton.next_power_of_2(triton.cdiv(rank, n_programs))))
    per_program = triton.cdiv(d_ff, n_programs)
    # A program's W2 rows in one tile (loaded before h exists) up to 128 neurons x a rank of 512, else in steps.
    early = per_program <= 128 and rank <= 512
    flags.update(EARLY_W2=early, BLOCK_N=min(128, triton.next_power_of_2(per_program)),
                 BLOCK_RK=triton.next_power_of_2(rank) if early else 128)
    for phase in ((0,) if fused else (1, 2, 3)):
        predictor_rows_kernel[(n_programs,)](*args, PHASE=phase, **flags)
