"""A low-rank predictor's second layer and the predicted rows of the FFN in ONE launch, at one token: no neuron list,
no grid barrier.

The predictor path has been three kernels per layer: the GEMV h = act(x @ down^T) (triton_gemv.py), the list kernel
(logits = h @ up^T + bias, `>= cut`, the predicted neurons appended to a global list; triton_predictor_list.py) and the
rows kernel over that list (GATE_FIRST, triton_rows_ffn.py): 3.3 + 6.5 + 15.6 µs at 7B on an H100 (session 14).
`logits_rows_kernel` replaces the last two. Persistent programs (GRID_PER_SM per SM) take chunks of CHUNK neurons,
statically strided or claimed from an atomic counter (DYNAMIC; the last program to finish resets it with a ticket,
as rows_ffn_kernel resets its list length). Per chunk: its CHUNK rows of the predictor's `up` dot h, + bias,
`>= cut`, and a cumsum giving each predicted neuron its position among the chunk's predicted ones; then BLOCK_J of
those at a time go through the rows kernel's GATE_FIRST steps (gate rows -> act(gate) -> up and W_down^T rows of
the neurons with act(gate) != 0 only -> x1 * W_down^T rows summed into one fp32 [BLOCK_D] row). The neurons of a
step are picked from the positions by a [BLOCK_J, CHUNK] compare-and-sum in registers: no scratch memory, no pass
over the chunk's unpredicted rows.

Software pipeline, all plain (non-blocking) loads whose first use comes one loop step later: step k reduces block
k - 1 (its up / W_down^T tiles, issued in step k - 1), computes act(gate) of block k (gate tile issued in step k - 1)
and issues its masked up / W_down^T loads, then issues the gate rows of block k + 1. When a chunk runs out, the next
one opens inside the step: its `up` tile was issued when the current one opened, and its own successor's tile (and
claim) is issued now; blocks follow each other across chunk boundaries with no drain. (A TMA descriptor load waits
on its barrier where it is issued unless the compiler's loop pipeliner schedules it, which a chunk chosen at run time
defeats: the `up` tile comes by 16-byte vector loads, RANK_ALIGN.) A program's first chunk is its id; a claim is a
scalar atomic, which Triton broadcasts through shared memory after a barrier: the program waits for its value where
it is issued (one L2 round trip per claimed chunk, while its loads stay in flight).

Registers (sm_90, fp16, d_model 4096, rank 360 -> BLOCK_R 512; configs.py has the table): the [CHUNK, BLOCK_R] tile
held a chunk ahead costs ~2-3 registers per row of CHUNK at 8 warps; the rows part (x, the fp32 sum row, a gate tile,
up / W_down^T tiles) ~105 at BLOCK_J 1. 8 warps: 124-243 (one program per SM but at CHUNK 8); 16 warps: 97-128.

Each program adds its sum into `out` (fp32 [d_model]) once, with relaxed atomics, at its end; `out` must hold b_down
(or zeros) before the launch. The fp32 atomics add in the order programs finish: the last bits may differ between
calls.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import LOGITS_ROWS_CONFIGS, LOGITS_ROWS_FIXED, tuned
from .pdl import launch_options
from .triton_gate import ACT_CODES
from .triton_rows_ffn import gate_tile, live_tiles, tiles_x1

# The predictor's rank is read in tiles of at most this many columns: the first tile of a chunk is loaded a chunk
# ahead; larger ranks (rare: 358-1024 in practice) read the rest when the chunk opens.
MAX_BLOCK_R = 512


@triton.jit
def chunk_tile(w2_ptr, b2_ptr, c, d_ff, rank, HAS_B2: tl.constexpr, CHUNK: tl.constexpr, BLOCK_R: tl.constexpr):
    """Issue the loads of chunk c's rows of the predictor's up [d_ff, rank] (their first BLOCK_R columns) and its
    bias, fp32 [CHUNK] (zeros without); rows past d_ff (c past the last chunk: all of them) load nothing."""
    offs_n = c * CHUNK + tl.arange(0, CHUNK)
    n_mask = offs_n < d_ff
    offs_r = tl.arange(0, BLOCK_R)
    w = tl.load(w2_ptr + offs_n.to(tl.int64)[:, None] * rank + offs_r[None, :],
                mask=n_mask[:, None] & (offs_r < rank)[None, :], other=0.0)
    b = tl.zeros([CHUNK], dtype=tl.float32)
    if HAS_B2:
        b = tl.load(b2_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    return w, b


@triton.jit
def chunk_positions(w, b, h_ptr, w2_ptr, c, d_ff, rank, cut, ONE_STEP_R: tl.constexpr, CHUNK: tl.constexpr,
                    BLOCK_R: tl.constexpr):
    """(pos [CHUNK] int32, count) of chunk c from its `chunk_tile` (waits for it): logits h . up[j] + bias (fp32,
    ranks above BLOCK_R read here), the predicted set logit >= cut (LowRankLogits.mask), and pos[i] = the position
    of neuron c * CHUNK + i among the chunk's predicted neurons, -1 where not predicted."""
    offs_n = c * CHUNK + tl.arange(0, CHUNK)
    n_mask = offs_n < d_ff
    offs_r = tl.arange(0, BLOCK_R)
    hv = tl.load(h_ptr + offs_r, mask=offs_r < rank, other=0.0).to(tl.float32)
    logit = b + tl.sum(w.to(tl.float32) * hv[None, :], 1)   # reduced per tile: no fp32 tile carried by the loop
    for k0 in range(BLOCK_R, rank if not ONE_STEP_R else 0, BLOCK_R):   # (without the loop: ~36 registers fewer)
        cols = k0 + offs_r
        wk = tl.load(w2_ptr + offs_n.to(tl.int64)[:, None] * rank + cols[None, :],
                     mask=n_mask[:, None] & (cols < rank)[None, :], other=0.0)
        hv = tl.load(h_ptr + cols, mask=cols < rank, other=0.0).to(tl.float32)
        logit += tl.sum(wk.to(tl.float32) * hv[None, :], 1)
    predicted = n_mask & (logit >= cut)
    flags = predicted.to(tl.int32)
    return tl.where(predicted, tl.cumsum(flags, 0) - 1, -1), tl.sum(flags, 0)


@triton.jit
def step_neurons(pos, base, cursor, count, CHUNK: tl.constexpr, BLOCK_J: tl.constexpr):
    """(ids, mask) [BLOCK_J]: the neurons at positions cursor .. cursor + BLOCK_J - 1 among the predicted ones of
    the chunk starting at neuron `base` (mask: position < count; id 0 where masked)."""
    want = cursor + tl.arange(0, BLOCK_J)
    hit = pos[None, :] == want[:, None]
    return tl.sum(tl.where(hit, base + tl.arange(0, CHUNK)[None, :], 0), 1), want < count


@triton.jit
def next_claim(state_ptr, nxt, n_chunks, DYNAMIC: tl.constexpr):
    """The chunk to open after `nxt` (the one whose tile was just issued): nxt + programs when strided; with DYNAMIC
    the claim counter's next value past the programs' first chunks, claimed only while chunks remain (so that every
    claim's value is read before the program takes its ticket)."""
    if DYNAMIC:
        claimed = nxt
        if nxt < n_chunks:
            claimed = tl.num_programs(0) + tl.atomic_add(state_ptr, 1, sem="relaxed")
        return claimed
    return nxt + tl.num_programs(0)


@triton.jit
def any_set(mask):
    return tl.max(mask.to(tl.int32), 0) > 0


@tuned(LOGITS_ROWS_CONFIGS, LOGITS_ROWS_FIXED,
       key=["d_model", "d_ff", "rank_units", "RANK_ALIGN", "BLOCK_R", "DYNAMIC", "ACT"], reset_to_zero=["state_ptr"],
       restore_value=["out_ptr"])
@triton.jit
def logits_rows_kernel(x_ptr, h_ptr, w2_ptr, b2_ptr, wg_ptr, bg_ptr, wu_ptr, bu_ptr, wdt_ptr, out_ptr, state_ptr,
                       d_model, d_ff, rank_units, cut, threshold, ACT: tl.constexpr, HAS_B2: tl.constexpr,
                       HAS_BG: tl.constexpr, HAS_BU: tl.constexpr, DYNAMIC: tl.constexpr, USE_GDC: tl.constexpr,
                       RANK_ALIGN: tl.constexpr, ONE_STEP_R: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, BLOCK_J: tl.constexpr, GRID_PER_SM: tl.constexpr):
    rank = rank_units * RANK_ALIGN   # RANK_ALIGN elements = 16 bytes where rows allow: vector loads of `up`
    n_chunks = tl.cdiv(d_ff, CHUNK)
    offs_d = tl.arange(0, BLOCK_D)
    # Before the GEMV that writes h (and perhaps x, `out`) has finished (PDL): the first chunk's tile, the first claim.
    nxt = tl.program_id(0)   # the chunk whose tile is in flight
    w_n, b_n = chunk_tile(w2_ptr, b2_ptr, nxt, d_ff, rank, HAS_B2, CHUNK, BLOCK_R)
    claimed = next_claim(state_ptr, nxt, n_chunks, DYNAMIC)
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    xv = tl.load(x_ptr + offs_d, mask=offs_d < d_model, other=0.0)   # weights' dtype: widened where used
    # The open chunk (none yet): positions of its predicted neurons, their count, the next position to take.
    pos = tl.full([CHUNK], -1, tl.int32)
    base, count, cursor = nxt * 0, nxt * 0, nxt * 0
    # Pipeline registers: the gate tile issued last step (its block's ids g_ids), the up / W_down^T tiles issued
    # last step (the block before; its act(gate) `a`, its live neurons r_live).
    j_mask = tl.arange(0, BLOCK_J) < 0
    g_ids, g_mask, r_live = tl.zeros([BLOCK_J], dtype=tl.int32), j_mask, j_mask
    wg = tl.zeros([BLOCK_J, BLOCK_D], dtype=wg_ptr.dtype.element_ty)
    bg = tl.zeros([BLOCK_J], dtype=tl.float32)
    a, bu = bg, bg
    wu = tl.zeros([BLOCK_J, BLOCK_D], dtype=wu_ptr.dtype.element_ty)
    wd = tl.zeros([BLOCK_J, BLOCK_D], dtype=wdt_ptr.dtype.element_ty)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    busy = nxt < n_chunks
    while busy:
        # The block whose up / W_down^T loads were issued last step: x1 = act(gate) * up, times its W_down^T rows.
        x1 = tiles_x1(wu, wu, a, bu, bu, xv, threshold, ACT, False, False)
        acc += tl.sum(x1[:, None] * wd.to(tl.float32), 0)
        # act(gate) of the block whose gate rows were issued last step; its live neurons' up / W_down^T loads.
        a, wu, wd, bu = live_tiles(wg, bg, xv, wu_ptr, bu_ptr, wdt_ptr, g_ids, g_mask, offs_d, d_model, threshold,
                                   ACT, HAS_BU, BLOCK_J)
        r_live = g_mask & (a != 0.0)
        # The next block of predicted neurons, opening chunks (tile issued a chunk ago) until one has some left.
        while (cursor >= count) & (nxt < n_chunks):
            base = nxt * CHUNK
            pos, count = chunk_positions(w_n, b_n, h_ptr, w2_ptr, nxt, d_ff, rank, cut, ONE_STEP_R, CHUNK,
                                         BLOCK_R)
            cursor = count * 0
            nxt = claimed
            w_n, b_n = chunk_tile(w2_ptr, b2_ptr, nxt, d_ff, rank, HAS_B2, CHUNK, BLOCK_R)
            claimed = next_claim(state_ptr, nxt, n_chunks, DYNAMIC)
        ids, mask = step_neurons(pos, base, cursor, count, CHUNK, BLOCK_J)
        cursor += BLOCK_J
        wg, bg = gate_tile(wg_ptr, bg_ptr, ids, mask, offs_d, d_model, HAS_BG, BLOCK_J)
        g_ids, g_mask = ids, mask
        busy = (cursor < count) | (nxt < n_chunks) | any_set(g_mask) | any_set(r_live)
    tl.atomic_add(out_ptr + offs_d, acc, mask=offs_d < d_model, sem="relaxed")
    if DYNAMIC:  # every program has read all its claims: the last one resets the counter for the next call
        if tl.atomic_add(state_ptr + 1, 1, sem="relaxed") == tl.num_programs(0) - 1:
            tl.store(state_ptr, 0)
            tl.atomic_xchg(state_ptr + 1, 0)


def logits_rows_state(device) -> torch.Tensor:
    """int32 [2], zero: the claim counter and the ticket of DYNAMIC launches; each call leaves them zero."""
    return torch.zeros(2, dtype=torch.int32, device=device)


def rank_align(up: torch.Tensor) -> int:
    """RANK_ALIGN: elements per 16 bytes where every row of `up` starts 16-byte aligned (e.g. rank 360 in fp16), so
    that the kernel knows its row stride is a multiple of it and loads 16 bytes at a time; else 1."""
    per_16 = 16 // up.element_size()
    return per_16 if up.shape[1] % per_16 == 0 and up.data_ptr() % 16 == 0 else 1


def launch_logits_rows(x, low_rank, w_gate, b_gate, w_up, b_up, w_down_t, b_down, act: str, threshold: float,
                       out: torch.Tensor, state: torch.Tensor, n_sms: int | None = None, dynamic: bool = True,
                       h: torch.Tensor | None = None, init_out: bool = True, pdl: bool = False, config=None,
                       block_r: int | None = None) -> torch.Tensor:
    """out (fp32 [1, d_model] or [d_model], returned) = b_down (or 0) + the sum over the neurons j that `low_rank` (a
    LowRankLogits) predicts for the one token x [1, d_model] of x1_j * W_down^T[j], x1_j = act(gate_j) * up_j
    (relu(up_j) for dReLU).

    Reads: h = act(x @ down^T) [rank] (given, or computed here by `predictor_hidden`, the TMA GEMV: low_rank.source
    replaces x there), every row of low_rank.up [d_ff, rank] and its bias (the logits decide which rows below are
    read), x, the gate rows (and gate biases) of the predicted neurons, and the up / W_down^T rows (and up biases) of
    the predicted neurons with act(gate) != 0 only: a false positive of the predictor costs its gate row. Nothing
    is read or written for unpredicted neurons. `init_out`: `out` is set to b_down (or zero) here first, by a
    copy / fill launch before the GEMV's; with False the caller has set it (e.g. in the GEMV's epilogue) and b_down
    is not used.
    `state`: `logits_rows_state`, zero between calls (left zero). `dynamic`: chunks claimed from the atomic counter
    (else statically strided over the programs). `n_sms`: SMs the grid is sized by (default: the device's; 1 under
    the interpreter). `pdl`: launched with programmatic dependent launch behind the GEMV (the caller checked
    `pdl_usable`). `config`: a `triton.Config` of LOGITS_ROWS_CONFIGS run as given, not autotuned. `block_r`: the
    columns of `up` per tile (default min(next power of two of the rank, MAX_BLOCK_R); tests force several)."""
    from .triton_ffn import _n_sms
    from .triton_predictor_list import predictor_hidden
    n_tokens, d_model = x.shape
    if n_tokens != 1:
        raise ValueError(f"launch_logits_rows computes one token, got {n_tokens}")
    if out.dtype != torch.float32 or not out.is_contiguous() or out.numel() != d_model:
        raise ValueError(f"launch_logits_rows: out must be a contiguous fp32 row of {d_model}, got {out.dtype} "
                         f"{tuple(out.shape)}")
    if not all(w.is_contiguous() for w in (w_gate, w_up, w_down_t)):
        raise ValueError("launch_logits_rows: gate, up and W_down^T must be contiguous [d_ff, d_model]")
    w2 = low_rank.up.contiguous()   # (no copy when it already is)
    d_ff, rank = w2.shape
    if init_out and b_down is not None:   # before the GEMV: the kernel can follow the GEMV directly (PDL)
        out.copy_(b_down.reshape(out.shape))
    elif init_out:
        out.zero_()
    if h is None:
        h = predictor_hidden(x if low_rank.source is None else low_rank.source, low_rank.down,
                             bool(low_rank.relu_hidden), pdl)
    align = rank_align(w2)
    block_r = block_r or min(triton.next_power_of_2(rank), MAX_BLOCK_R)
    n_sms = n_sms or _n_sms(x.device)

    def grid(meta):
        meta = config.kwargs if config is not None else meta
        return (max(1, min(meta["GRID_PER_SM"] * n_sms, triton.cdiv(d_ff, meta["CHUNK"]))),)
    kernel, extra = logits_rows_kernel, {}
    if config is not None:
        kernel, extra = logits_rows_kernel.fn, dict(config.kwargs, num_warps=config.num_warps,
                                                    num_stages=config.num_stages)
    bias = low_rank.bias
    kernel[grid](x.contiguous(), h.reshape(-1), w2, bias if bias is not None else w2, w_gate,
                 b_gate if b_gate is not None else w_gate, w_up, b_up if b_up is not None else w_up, w_down_t, out,
                 state, d_model, d_ff, rank // align, float(low_rank.cut), float(threshold), ACT=ACT_CODES[act],
                 HAS_B2=bias is not None, HAS_BG=b_gate is not None, HAS_BU=b_up is not None, DYNAMIC=dynamic,
                 RANK_ALIGN=align, ONE_STEP_R=block_r >= rank, BLOCK_R=block_r,
                 BLOCK_D=triton.next_power_of_2(d_model), **launch_options(pdl), **extra)
    return out
