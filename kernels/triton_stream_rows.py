"""The exact one-token path with the rows read while the gate GEMV runs: gate kernel and rows consumer concurrently.

Session 9's profile: the exact FFN is the gate kernel (90 MB, ~33.3 µs) and, after it, the rows kernel (the active
neurons' up and W_down^T rows, 18 MB at 90%, ~13.8 µs): the rows wait for the whole gate. Here the two run at the
same time, on two streams (forked and joined inside the call, so a CUDA graph captures both branches):
- the TMA gate kernel in STREAM mode (triton_gate_tma.py) appends each active neuron as one packed int64 entry
  (act(gate) bits << 32 | id) at a position reserved in counts[0], and adds the neurons it covered to `done`;
- `stream_rows_kernel` (this file), a few programs launched first on a high-priority stream, claims list positions
  BLOCK_J at a time (`claim` counter), waits until those entries are written (they start at -1), then reads the
  neurons' up and W_down^T rows, computes x1 = act(gate) * up and sums x1 * W_down^T rows in fp32. A claim past the
  list's end is known to be past it once done = d_ff (every gate program has reserved its positions). Each program
  adds its sum into a zeroed fp32 row with atomics; the last (ticket) waits for done = d_ff, writes the output and
  resets the entries it did not already reset, the counters and the row, so the next call needs no memset.

Bytes are those of gate + rows, but the rows' reads overlap the gate's; what remains after the gate is the last
claims' rows and the sums' atomics. No deadlock: the gate kernel never waits for the consumer, and the consumer's
programs (at most one per SM, ~1/3 of its registers) leave room for the gate's programs on every SM. Under the
interpreter (programs run one after another) the gate kernel runs first and the consumer after it. fp32 atomics
add in finishing order, so the output's last bits may differ between calls (as the rows kernel's).
One token, whole W_down^T rows (d_model <= MAX_ONE_STEP_D), TMA usable (else the caller runs gate + rows kernels).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .triton_gate import ACT_CODES, up_act
from .triton_rows_ffn import rows_block_d, write_sum_row
from .triton_up_down import last_ticket

EMPTY = -1  # an entry not yet written (int64 all ones: no valid (act bits, id) pair packs to it); the kernels
#            write the literal -1 (a Triton kernel reads no plain global)


@triton.jit
def load_entries(entries_ptr, c, total, BLOCK_J: tl.constexpr):
    """The entries at list positions c .. c + BLOCK_J - 1 (-1 at and past `total` or not yet written), the same in
    every thread. A [BLOCK_J] load is replicated over the threads, each copy its own load, so threads can see an
    entry written and not written at once (measured on an H100: sums missing neurons in some columns). A scalar
    atomic is done by one thread and its value broadcast through shared memory: one per entry."""
    lanes = tl.arange(0, BLOCK_J)
    e = tl.full([BLOCK_J], -1, tl.int64)
    for j in tl.static_range(BLOCK_J):
        inside = c + j < total
        ej = tl.atomic_add(entries_ptr + c + j, 0, mask=inside, sem="relaxed")
        e = tl.where((lanes == j) & inside, ej, e)
    return e


@triton.jit
def wait_entries(entries_ptr, counts_ptr, done_ptr, c, offs_i, total, d_ff, BLOCK_J: tl.constexpr):
    """The entries at list positions `offs_i` once every one below the list length is written: (entries, total).
    `total` is d_ff until the gate has finished (done = d_ff); then the final length, past which nothing is read."""
    e = load_entries(entries_ptr, c, total, BLOCK_J)
    pending = tl.sum(((e == -1) & (offs_i < total)).to(tl.int32), 0)
    while pending > 0:
        if tl.atomic_add(done_ptr, 0, sem="acquire") == d_ff:  # every position is reserved: the length is final
            total = tl.atomic_add(counts_ptr, 0, sem="acquire")
        e = load_entries(entries_ptr, c, total, BLOCK_J)
        pending = tl.sum(((e == -1) & (offs_i < total)).to(tl.int32), 0)
    return e, total


@triton.jit
def stream_rows_kernel(x_ptr, wu_ptr, bu_ptr, wdt_ptr, bd_ptr, counts_ptr, entries_ptr, sync_ptr, acc_ptr, out_ptr,
                       d_model, d_ff, ACT: tl.constexpr, HAS_BU: tl.constexpr, HAS_BD: tl.constexpr,
                       FENCE: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    claim_ptr, done_ptr, ticket_ptr = sync_ptr, sync_ptr + 1, sync_ptr + 2
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < d_model
    xv = tl.load(x_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_J, BLOCK_D], dtype=tl.float32)
    worked = tl.full([], 0, tl.int32)
    total = d_ff
    c = tl.atomic_add(claim_ptr, BLOCK_J, sem="relaxed")
    while c < total:
        offs_i = c + tl.arange(0, BLOCK_J)
        e, total = wait_entries(entries_ptr, counts_ptr, done_ptr, c, offs_i, total, d_ff, BLOCK_J)
        live = e != -1
        rows = e.to(tl.int32)  # the low half: the neuron id
        a = (e >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        r_off = rows.to(tl.int64)[:, None] * d_model + offs_d[None, :]
        w_mask = live[:, None] & d_mask[None, :]
        wu = tl.load(wu_ptr + r_off, mask=w_mask, other=0.0)
        wd = tl.load(wdt_ptr + r_off, mask=w_mask, other=0.0)
        up = tl.sum(wu.to(tl.float32) * xv[None, :], 1)
        if HAS_BU:
            up += tl.load(bu_ptr + rows, mask=live, other=0.0).to(tl.float32)
        x1 = tl.where(live, a * up_act(up, ACT), 0.0)
        acc += x1[:, None] * wd.to(tl.float32)
        tl.store(entries_ptr + offs_i, tl.full([BLOCK_J], -1, tl.int64), mask=live)  # empty for the next call
        worked += tl.sum(live.to(tl.int32), 0)
        c = tl.atomic_add(claim_ptr, BLOCK_J, sem="relaxed")
    if worked > 0:
        tl.atomic_add(acc_ptr + offs_d, tl.sum(acc, 0), mask=d_mask, sem="relaxed")
    if last_ticket(ticket_ptr, tl.num_programs(0), FENCE):
        # Every consumer is done; the gate kernel may not be (a claim at d_ff ends without waiting for it).
        done = tl.atomic_add(done_ptr, 0, sem="acquire")
        while done < d_ff:
            done = tl.atomic_add(done_ptr, 0, sem="acquire")
        write_sum_row(acc_ptr, bd_ptr, out_ptr, ticket_ptr, offs_d, d_model, HAS_BD, BLOCK_D)
        tl.store(counts_ptr, 0)
        tl.store(claim_ptr, 0)
        tl.store(done_ptr, 0)


def stream_state(d_ff: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(entries int64 [d_ff] all EMPTY, sync int32 [3] zero: claim counter, done count, ticket): a SparseFFN keeps
    one pair; every call leaves them so again."""
    return (torch.full((d_ff,), EMPTY, dtype=torch.int64, device=device),
            torch.zeros(3, dtype=torch.int32, device=device))


_SIDE_STREAMS: dict = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One high-priority stream per device for the consumer (its programs take free SM slots before the gate's)."""
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device, priority=torch.cuda.Stream.priority_range()[1])
    return _SIDE_STREAMS[device]


_CARVEOUT_SET: set = set()


def prefer_shared_memory(compiled) -> None:
    """Ask the driver to configure an SM running `compiled` (a Triton CompiledKernel) with its largest shared memory
    carveout (CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 100%), once per kernel binary. An SM holds blocks
    of two kernels only if its carveout serves both: left to the driver, the consumer (4 KB of shared memory) would
    get a small one, and the TMA gate kernel's blocks (26-50 KB each) could not join it on that SM (with one consumer
    program on every SM the gate kernel did not start at all: H100, session 10). Both kernels of the stream path ask
    for it."""
    function = getattr(compiled, "function", None)
    if function is None or function in _CARVEOUT_SET:
        return
    import ctypes
    libcuda = ctypes.CDLL("libcuda.so.1")
    err = libcuda.cuFuncSetAttribute(ctypes.c_void_p(function), ctypes.c_int(9), ctypes.c_int(100))
    if err != 0:
        from .dispatch import warn_once
        warn_once(f"stream path: cuFuncSetAttribute(PREFERRED_SHARED_MEMORY_CARVEOUT) returned {err}; the consumer "
                  "may keep the gate kernel's programs off its SMs")
    _CARVEOUT_SET.add(function)


def consumer_programs(n_sms: int, fraction: float) -> int:
    """The consumer's grid: `fraction` of the SMs, at least one, at most one program per SM."""
    return max(1, min(n_sms, round(n_sms * fraction)))


def launch_stream_exact(x, w_gate, b_gate, w_up, b_up, w_down_t, b_down, act: str, threshold: float,
                        counts: torch.Tensor, entries: torch.Tensor, sync: torch.Tensor, acc: torch.Tensor,
                        out: torch.Tensor, n_programs: int, block_j: int = 2, num_warps: int = 4,
                        gate_first: bool = False) -> None:
    """out[0] = the exact FFN of x [1, d_model] (the caller checked TMA and d_model <= MAX_ONE_STEP_D).
    counts[0], `entries`, `sync` (stream_state) and `acc` (fp32 [d_model]) are zero / empty between calls and left
    so. `gate_first`: launch the gate kernel before the consumer (needed while its config is not yet tuned: the
    tuner's timing runs write entries, which a waiting consumer would take); otherwise the consumer's programs are
    placed first."""
    from .triton_gate_tma import launch_gate_tma
    d_model = x.shape[1]
    block_d = rows_block_d(d_model)
    if block_d < d_model:
        raise ValueError(f"the stream path reads whole W_down^T rows: d_model {d_model} > {block_d}")

    def gate():
        compiled = launch_gate_tma(x, w_gate, b_gate, act, threshold, None, counts, None, stream=(entries, sync[1:2]))
        if not configs.INTERPRET:
            prefer_shared_memory(compiled)

    def consumer():
        return stream_rows_kernel[(n_programs,)](
            x, w_up, b_up if b_up is not None else w_up, w_down_t, b_down if b_down is not None else w_down_t,
            counts, entries, sync, acc, out, d_model, w_gate.shape[0], ACT=ACT_CODES[act], HAS_BU=b_up is not None,
            HAS_BD=b_down is not None, FENCE=not configs.INTERPRET, BLOCK_J=block_j, BLOCK_D=block_d,
            num_warps=num_warps)

    if configs.INTERPRET or x.device.type != "cuda":  # programs run one after another: the producer first
        gate()
        consumer()
        return
    main = torch.cuda.current_stream(x.device)
    side = _side_stream(x.device)
    side.wait_stream(main)  # x, and the previous call's state, are ready
    if gate_first:
        gate()
    with torch.cuda.stream(side):
        prefer_shared_memory(consumer())
    if not gate_first:
        gate()
    main.wait_stream(side)
