"""A low-rank predictor's two layers and the neuron list at one token in one launch, a grid barrier between them.

Why (H100, 7B, rank 360, 15% predicted; session 14): the list path of triton_predictor_list.py is two kernels, the TMA
GEMV h = act(x @ W1^T) (3.3 µs for 2.9 MB) and then the list kernel (6.5 µs for 7.9 MB: 688 programs, one W2 tile
and one atomic each). The list kernel starts only once the GEMV has finished; with PDL its W2 tiles were loaded during
the GEMV, which took nothing off the decode step. Session 14's one-launch kernel (GEMV, list and rows kernel behind two
barriers, at `3276e8d`) lost because its list phase ran in one program per SM (84 neurons each) and its rows phase
needed registers that the W2 tiles held. Here only the predictor shares a launch, in the list kernel's small programs:
1. each program sends its W2 rows [BLOCK_N, rank] towards L2 (bulk prefetches, Hopper; weights: nothing to wait for),
   then computes its rows of h (rows pid, pid + P, ... of W1; with P >= rank one row or none), rounded to the weights'
   dtype as the GEMV rounds them; the first programs set the fp32 output row to b_down (or 0);
2. grid barrier: every program's h rows are written and visible;
3. the logits of its neurons from h and its W2 rows (now in L2) + bias, those >= cut appended to the union list with
   one atomic, as the list kernel does; the last program out resets the barrier's counters for the next call.
A first version held each program's whole W2 tile in registers across the barrier (128-219 registers: 688 or 344
programs did not fit at once; 172 did, and took 22.5 µs): the prefetch keeps the registers low.
The barrier needs all P programs resident at once. The launch checks that from the compiled kernel (registers, shared
memory, warps) against the SM's limits and otherwise runs the two-kernel path (said once). It never lets a dependent
kernel start early (no PDL trigger), so nothing else takes the SMs' slots while programs wait. Under the interpreter
(programs run one after another: a barrier never opens) the same code runs as two launches (PHASE 1 then 2).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import configs
from .triton_gate import append_union
from .triton_gate_tma import init_sum_row, prefetch_rows_to_l2
from .triton_up_down import writes_done

BLOCK_N = 16          # neurons per program; 7B: 688 programs, 6 per SM
NUM_WARPS = 4
BLOCK_K = 128         # of the rank per step of the logits
BLOCK_D = 1024        # of d_model per step of h


@triton.jit
def arrived_count(sync_ptr):
    """The barrier counter as one lane of each warp reads it (a volatile load from L2, value shared in the warp): a
    poll by every thread put ~90k loads of one line in front of the arriving programs' atomics (session 15: 17-20 µs
    for the one launch against ~12 for the GEMV + list kernels)."""
    lanes = tl.arange(0, 32)
    return tl.max(tl.load(sync_ptr + 0 * lanes, mask=lanes == 0, other=0, volatile=True), 0)


@triton.jit
def back_off():
    """~100 ns asleep between polls (`nanosleep`, sm_70+)."""
    tl.inline_asm_elementwise("nanosleep.u32 100; mov.u32 $0, $1;", "=r,r", [tl.full([1], 0, tl.int32)],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def grid_barrier(sync_ptr, n_programs, FENCE: tl.constexpr):
    """Every program's writes before it are visible to every program after it: arrive (release) on the counter,
    poll it (`arrived_count`, `back_off` between polls) until all `n_programs` arrived, then a fence in every thread
    so that its later loads see the others' writes."""
    writes_done(FENCE)
    tl.atomic_add(sync_ptr, 1, sem="release")
    arrived = arrived_count(sync_ptr)
    while arrived < n_programs:
        back_off()
        arrived = arrived_count(sync_ptr)
    writes_done(FENCE)


@triton.jit
def hidden_rows(src_ptr, w1_ptr, h_ptr, rank, d_model, RELU_H: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """h[r] = act(src . W1[r]) for this program's blocks of BLOCK_R rows (blocks pid, pid + P, ...), BLOCK_D columns
    per step: fp32 sums rounded to the weights' dtype (as triton_gemv.py writes h), stored in fp32."""
    for r0 in range(tl.program_id(0) * BLOCK_R, rank, tl.num_programs(0) * BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        r_mask = rows < rank
        acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
        for d0 in range(0, d_model, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_mask = offs_d < d_model
            xv = tl.load(src_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
            w = tl.load(w1_ptr + rows.to(tl.int64)[:, None] * d_model + offs_d[None, :],
                        mask=r_mask[:, None] & d_mask[None, :], other=0.0)
            acc += w.to(tl.float32) * xv[None, :]
        h = tl.sum(acc, 1).to(w1_ptr.dtype.element_ty).to(tl.float32)
        if RELU_H:
            h = tl.maximum(h, 0.0)
        tl.store(h_ptr + rows, h, mask=r_mask)


@triton.jit
def append_logits(h_ptr, w2_ptr, b2_ptr, counts_ptr, idx_ptr, n_lo, d_ff, rank, cut, HAS_B2: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Append the neurons n_lo.. n_lo + BLOCK_N whose logit h . W2[n] + b[n] is >= cut to the union list (one atomic),
    BLOCK_K of the rank per step; h is read past L1 (other programs wrote it)."""
    offs_n = n_lo + tl.arange(0, BLOCK_N)
    n_mask = offs_n < d_ff
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, rank, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
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
def predictor_fused_kernel(src_ptr, w1_ptr, w2_ptr, b2_ptr, h_ptr, sync_ptr, counts_ptr, idx_ptr, out_ptr, bout_ptr,
                           d_model, d_ff, rank, cut, RELU_H: tl.constexpr, HAS_B2: tl.constexpr,
                           INIT_OUT: tl.constexpr, HAS_BOUT: tl.constexpr, PHASE: tl.constexpr, FENCE: tl.constexpr,
                           PREFETCH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """PHASE 0: the whole predictor with the barrier; 1: h (and the output row) only; 2: the list only. PREFETCH:
    this program's W2 rows are sent towards L2 first (bulk prefetches, nothing waits for them), so that after the
    barrier they come from L2."""
    n_lo = tl.program_id(0) * BLOCK_N
    if PHASE <= 1:
        if PREFETCH:
            rows = n_lo + tl.arange(0, BLOCK_N)
            prefetch_rows_to_l2(w2_ptr, rows, (rows < d_ff).to(tl.int32), rank)
        if INIT_OUT:
            init_sum_row(out_ptr, bout_ptr, d_model, HAS_BOUT)
        hidden_rows(src_ptr, w1_ptr, h_ptr, rank, d_model, RELU_H, BLOCK_R, BLOCK_D)
    if PHASE == 0:
        grid_barrier(sync_ptr, tl.num_programs(0), FENCE)
    if PHASE != 1:
        append_logits(h_ptr, w2_ptr, b2_ptr, counts_ptr, idx_ptr, n_lo, d_ff, rank, cut, HAS_B2, BLOCK_N, BLOCK_K)
    if PHASE == 0:  # the last program out (all have left the barrier) resets its counters
        if tl.atomic_add(sync_ptr + 1, 1, sem="relaxed") == tl.num_programs(0) - 1:
            tl.store(sync_ptr, 0)
            tl.atomic_xchg(sync_ptr + 1, 0)


def _prefetch(up: torch.Tensor) -> bool:
    """Whether W2's rows can be bulk-prefetched to L2: Hopper or later, rows of a multiple of 16 bytes."""
    return (not configs.INTERPRET and up.is_cuda and torch.cuda.get_device_capability(up.device)[0] >= 9
            and up.shape[1] * up.element_size() % 16 == 0)


def fused_unusable(x: torch.Tensor, logits) -> str | None:
    """Why `launch_predictor_fused` cannot take this call before compiling (None: it may; residency is checked at
    launch)."""
    src = x if logits.source is None else logits.source
    if x.shape[0] != 1 or src.numel() != logits.down.shape[1]:
        return f"{x.shape[0]} tokens (one token only)"
    if x.device.type != "cuda" and not configs.INTERPRET:
        return f"on {x.device.type}"
    return None


def resident_programs(compiled, device: torch.device) -> int:
    """How many programs of `compiled` (a Triton CompiledKernel) the GPU holds at once: SMs x the blocks per SM that
    its warps, registers (allocated per warp in units of 256) and shared memory (+1 KB reserved per block) allow."""
    props = torch.cuda.get_device_properties(device)
    warps = compiled.metadata.num_warps
    regs_per_warp = math.ceil(max(compiled.n_regs, 1) * 32 / 256) * 256
    shared = compiled.metadata.shared
    per_sm = min(32, getattr(props, "max_threads_per_multi_processor", 2048) // (32 * warps),
                 getattr(props, "regs_per_multiprocessor", 65536) // (regs_per_warp * warps),
                 getattr(props, "shared_memory_per_multiprocessor", 233472) // (shared + 1024))
    return per_sm * props.multi_processor_count


_STATES: dict = {}
_CHECKED: dict = {}


def fused_state(rank: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(h fp32 [rank], the barrier's two int32 counters, zero between calls), one per (device, rank): the kernels
    of a decode step run one after another on one stream, and every call leaves the counters at zero."""
    key = (str(device), rank)
    if key not in _STATES:
        buf = torch.zeros(rank + 2, dtype=torch.float32, device=device)
        _STATES[key] = (buf[:rank], buf[rank:].view(torch.int32))
    return _STATES[key]


def launch_predictor_fused(x: torch.Tensor, logits, counts: torch.Tensor, idx: torch.Tensor,
                           init_out: tuple | None = None, block_n: int | None = None,
                           num_warps: int | None = None, barrier: bool = True) -> bool:
    """`launch_predictor_list`'s work (the neurons `logits`, a LowRankLogits, predicts active for the one token x
    appended to the union list counts[0] / idx, which must be empty; `init_out` = (fp32 row, b_down or None) set for
    the rows kernel) in one launch. Returns False, having launched nothing, where it cannot run (said once with the
    reason): the caller then runs the two-kernel path. `block_n` / `num_warps`: None takes BLOCK_N / NUM_WARPS.
    `barrier` False: the two phases as two launches (as under the interpreter; the probe times the barrier so)."""
    from .dispatch import warn_once
    block_n, num_warps = block_n or BLOCK_N, num_warps or NUM_WARPS
    reason = fused_unusable(x, logits)
    down, up = logits.down.contiguous(), logits.up.contiguous()
    d_ff, rank = up.shape
    d_model = down.shape[1]
    n_programs = triton.cdiv(d_ff, block_n)
    src = (x if logits.source is None else logits.source).reshape(-1).to(down.dtype)
    h, sync = fused_state(rank, x.device) if reason is None else (None, None)
    out, b_out = init_out if init_out is not None else (counts, None)   # not written without INIT_OUT
    args = (src, down, up, logits.bias if logits.bias is not None else up, h, sync, counts, idx, out,
            b_out if b_out is not None else out, d_model, d_ff, rank, float(logits.cut))
    flags = dict(RELU_H=bool(logits.relu_hidden), HAS_B2=logits.bias is not None, INIT_OUT=init_out is not None,
                 HAS_BOUT=b_out is not None, FENCE=not configs.INTERPRET, PREFETCH=_prefetch(up), BLOCK_N=block_n,
                 BLOCK_K=BLOCK_K if not configs.INTERPRET else 16, BLOCK_R=1,
                 BLOCK_D=min(BLOCK_D, triton.next_power_of_2(d_model)), num_warps=num_warps)
    if reason is None and (configs.INTERPRET or not barrier):   # two launches of the same code
        for phase in (1, 2):
            predictor_fused_kernel[(n_programs,)](*args, PHASE=phase, **flags)
        return True
    if reason is None:
        reason = _residency_reason(args, flags, n_programs, x.device)
    if reason is not None:
        warn_once(f"predictor list: the one-launch predictor kernel is unavailable ({reason}); GEMV + list kernel")
        return False
    predictor_fused_kernel[(n_programs,)](*args, PHASE=0, **flags)
    return True


def _residency_reason(args, flags, n_programs: int, device: torch.device) -> str | None:
    """None where all `n_programs` programs of this compile fit on the GPU at once (checked once per compile), else
    why not. Compiles without launching (`warmup`) and asks for the largest shared-memory carveout first."""
    from .triton_stream_rows import prefer_shared_memory
    compiled = predictor_fused_kernel.warmup(*args, PHASE=0, grid=(n_programs,), **flags)
    compiled._init_handles()   # loads the binary: n_regs and the function handle (Triton sets them there)
    key = (getattr(compiled, "hash", id(compiled)), n_programs, str(device))
    if key not in _CHECKED:
        prefer_shared_memory(compiled)
        fits = resident_programs(compiled, device)
        _CHECKED[key] = None if n_programs <= fits else (
            f"{n_programs} programs, {fits} resident at once ({compiled.n_regs} registers, "
            f"{compiled.metadata.shared} B shared, {compiled.metadata.num_warps} warps)")
    return _CHECKED[key]
