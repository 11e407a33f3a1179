"""The Triton sparse FFN: gate (or mask compaction) -> up x act(gate) -> down, no host synchronization."""
from __future__ import annotations

import functools

import torch

from . import configs
from .pdl import pdl_usable
from .triton_gate import compact_mask, launch_gate
from .triton_up_down import launch_down, launch_up


@functools.lru_cache(maxsize=None)
def _n_sms(device: torch.device) -> int:
    """SMs that the up kernel's grid is sized by (configs' GRID_PER_SM each); one under the interpreter."""
    if configs.INTERPRET or device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


MAX_LISTS = 64  # per-token mode: one list per token, at most 64 tokens (DispatchConfig.max_sparse_tokens)


def list_state(device) -> torch.Tensor:
    """int32 [MAX_LISTS + 1], zero: the list lengths and the down kernel's finish counter. A SparseFFN keeps one;
    every call leaves it at zero again (the down kernel's last program resets it): no memset per call."""
    return torch.zeros(MAX_LISTS + 1, dtype=torch.int32, device=device)


def triton_sparse_ffn(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, activation, threshold, mask, per_token,
                      tickets, alloc=torch.empty, fuse_up=False, state=None, inline_compact=False, pdl=False,
                      index=None, rows=False, rows_acc=None, atomic_down=False, gate_rows=False, gate_tma=False,
                      gate_prefetch=False, stream=None, fp32_out=False, low_rank=None, gate_first=False, norm=None):
    """x [T, d] -> [T, d]. mask: None (dense gate decides), [1, d_ff] or [T, d_ff] bool (predicted set).
    `alloc` makes the float workspaces and the output (tests poison them with NaN). `fuse_up` (no mask, union
    mode): the gate kernel also computes x1, one launch fewer. `state`: a `list_state` buffer (None: a fresh one).
    `inline_compact` (one token, one mask row): compaction inside the up kernel (triton_compact_up.py).
    `pdl`: programmatic dependent launch for the gate / compaction, up and down kernels (pdl.py), and for the
    predictor GEMV, list and rows kernels of a `low_rank` list, where usable.
    `index` (mask None, union mode): the predicted set as the caller's 1-D int32 list of unique neuron ids, used
    as the list itself: its length is known on the host, so there is no compaction launch (two launches in all).
    `rows` (one token, union mode): up, x1 and down in one kernel over the list (triton_rows_ffn.py), after the gate
    kernel or the compaction, or alone with `index`; `rows_acc` is its fp32 [d_model] row, zero between calls
    (None: a fresh one). `atomic_down` (one token, union mode): the down step is the rows kernel given x1
    (fp32 atomics, triton_rows_ffn.py) instead of the split-K down kernel. `gate_rows` (with `rows`, no mask / index):
    the whole exact FFN in one kernel (triton_gate_rows.py) where d_model allows, else the gate + rows kernels.
    `gate_tma` (one token): the gate kernel loads its rows through TMA (triton_gate_tma.py) where usable;
    `gate_prefetch` (with it, on the rows path): it also sends the active neurons' up / W_down^T rows towards L2.
    `stream` (with `rows`, no mask / index): (consumer settings of DispatchConfig.stream, the SparseFFN's
    `stream_state` pair, gate_first): the gate and rows kernels run concurrently (triton_stream_rows.py) where
    usable, else the rows path (said once). `fp32_out` (the one-token rows path after the gate kernel or a
    `low_rank` list): the output is the rows kernel's fp32 sum row itself, set to b_down by the kernel before it, with
    no epilogue; other paths ignore it (the caller casts). `low_rank` (a LowRankLogits; one token, `rows`, no mask /
    index): the predictor's second layer writes the list (triton_predictor_list.py) and the rows kernel reads it: no
    mask, no compaction; with `fp32_out` the list kernel sets the fp32 output row to b_down. `gate_first` (predicted
    sets on the rows path): false positives' up / W_down^T rows are not read (triton_rows_ffn.py GATE_FIRST).
    `norm` = (residual, attn_out, norm weight, eps, h_out) (one token on the rows path, the TMA gate kernel after no
    predictor or a `low_rank` list without `source`; fused_ffn_norm.py): x [1, d_model] is not read but written by
    the first kernel (the TMA gate kernel or the predictor's GEMV), which computes it as the decoder layer's
    post-attention RMSNorm of h = residual + attn_out and writes h to h_out (triton_gate_tma.norm_args)."""
    if x.device.type != "cuda" and not configs.INTERPRET:
        raise RuntimeError("the Triton backend needs a CUDA tensor (or TRITON_INTERPRET=1 set before importing "
                           "triton); use backend='torch' on CPU")
    n_tokens, d_model = x.shape
    d_ff = w_gate.shape[0]
    n_lists = n_tokens if per_token else 1
    dev = x.device
    if n_lists > MAX_LISTS:
        raise ValueError(f"per-token mode takes at most {MAX_LISTS} tokens, got {n_lists}")
    state = list_state(dev) if state is None else state
    pdl = pdl and pdl_usable(dev)
    counts, done = state[:n_lists], state[MAX_LISTS:]
    n_given = None if index is None else index.numel()
    if index is not None and (mask is not None or per_token or index.dtype != torch.int32 or index.dim() != 1):
        raise ValueError("index: a 1-D int32 tensor of neuron ids, with mask None and per_token False")
    idx = index if index is not None else torch.empty(n_lists, d_ff, dtype=torch.int32, device=dev)
    if norm is not None and not (rows and n_tokens == 1 and not per_token and mask is None and index is None
                                 and (low_rank is not None or (gate_tma and not gate_rows and stream is None))):
        raise ValueError("norm: one token on the rows path, after the TMA gate kernel or a low_rank list")
    if low_rank is not None:
        if not (rows and n_tokens == 1 and mask is None and index is None):
            raise ValueError("low_rank: one token on the rows path, with mask and index None")
        from .triton_predictor_list import launch_predictor_list
        out, init_out = _fp32_sum_out(x, b_down, alloc, fp32_out)
        launch_predictor_list(x, low_rank, counts, idx, init_out=init_out, pdl=pdl, norm=norm)
        return _rows_out(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, activation, threshold, counts, idx, None,
                         tickets, alloc, rows_acc, pdl, sum_out=out, gate_first=gate_first)
    if rows and n_tokens == 1 and not per_token:
        return _rows_ffn(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, activation, threshold, mask, counts, idx,
                         n_given, tickets, alloc, rows_acc, pdl, gate_rows, gate_tma, gate_prefetch, stream, fp32_out,
                         gate_first, norm)
    x1c = alloc(n_tokens, d_ff, dtype=torch.float32, device=dev)
    if index is not None:
        if n_given > 0:  # (a grid of 0 programs is not launched)
            launch_up(x, w_up, b_up, w_gate, b_gate, None, None, False, activation, threshold, counts, idx, x1c,
                      _n_sms(dev), pdl=pdl, n_given=n_given)
    elif mask is None and fuse_up and not per_token:
        launch_gate(x, w_gate, b_gate, activation, threshold, False, None, counts, idx, up=(w_up, b_up, x1c), pdl=pdl)
    elif mask is not None and inline_compact and n_tokens == 1 and mask.shape[0] == 1:
        from .triton_compact_up import launch_compact_up
        launch_compact_up(x, w_gate, b_gate, w_up, b_up, mask, activation, threshold, counts, idx, x1c)
    else:
        if mask is None:
            gate_act = alloc(n_tokens, d_ff, dtype=torch.float32, device=dev)
            launch_gate(x, w_gate, b_gate, activation, threshold, per_token, gate_act, counts, idx, pdl=pdl,
                        tma=gate_tma)
        else:
            gate_act = None
            compact_mask(mask, per_token, counts, idx, pdl=pdl)
        launch_up(x, w_up, b_up, w_gate, b_gate, gate_act, mask, per_token, activation, threshold, counts, idx,
                  x1c, _n_sms(dev), pdl=pdl)
    if atomic_down and n_tokens == 1 and not per_token:
        return _rows_out(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, activation, threshold, counts, idx, n_given,
                         tickets, alloc, rows_acc, pdl, x1c=x1c)
    splits = configs.DOWN_FIXED["SPLITS"] if configs.INTERPRET else configs.MAX_SPLITS
    partials = alloc(splits * n_tokens * d_model, dtype=torch.float32, device=dev)
    out = alloc(n_tokens, d_model, dtype=x.dtype, device=dev)
    launch_down(x1c, w_down_t, b_down, per_token, counts, idx, partials, tickets, out, done,
                skip_zero=mask is not None or index is not None or activation == "drelu", pdl=pdl, n_given=n_given)
    return out


def _rows_ffn(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, activation, threshold, mask, counts, idx, n_given,
              tickets, alloc, rows_acc, pdl, gate_rows=False, gate_tma=False, gate_prefetch=False, stream=None,
              fp32_out=False, gate_first=False, norm=None):
    """One token through the rows kernel: gate kernel (no predictor) or compaction (mask) first, then rows_ffn; or,
    with `gate_rows` and no predicted set, the one-kernel exact path (triton_gate_rows.py); or, with `stream`, the
    gate and rows kernels concurrently (triton_stream_rows.py). `fp32_out` on the gate-then-rows path: the rows
    kernel sums into the fp32 output, which the gate kernel set to b_down (no epilogue). `gate_first` (a predicted
    set): its false positives' up / W_down^T rows are not read. `norm`: the TMA gate kernel computes x
    (triton_sparse_ffn)."""
    from .triton_rows_ffn import MAX_ONE_STEP_D
    dev = x.device
    gate_act = None
    if stream is not None and n_given is None and mask is None:
        out = _stream_ffn(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, activation, threshold, counts, stream,
                          alloc, rows_acc)
        if out is not None:
            return out
    if gate_rows and n_given is None and mask is None:
        if x.shape[1] <= MAX_ONE_STEP_D and activation != "drelu":
            from .triton_gate_rows import launch_gate_rows
            acc, out = _sum_row_and_out(x, rows_acc, alloc)
            launch_gate_rows(x, w_gate, b_gate, w_up, b_up, w_down_t, b_down, activation, threshold, acc, tickets[:1],
                             out, _n_sms(dev))
            return out
        from .dispatch import warn_once
        warn_once(f"exact_kernel='gate_rows' serves d_model <= {MAX_ONE_STEP_D} without dReLU; d_model "
                  f"{x.shape[1]}, {activation}: the gate and rows kernels run instead")
    if n_given is None and mask is None:
        gate_act = alloc(1, w_gate.shape[0], dtype=torch.float32, device=dev)
        out, init_out = _fp32_sum_out(x, b_down, alloc, fp32_out)
        launch_gate(x, w_gate, b_gate, activation, threshold, False, gate_act, counts, idx, pdl=pdl, tma=gate_tma,
                    prefetch=_prefetch_rows(w_up, w_down_t) if gate_prefetch else None, init_out=init_out, norm=norm)
        return _rows_out(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, activation, threshold, counts, idx, n_given,
                         tickets, alloc, rows_acc, pdl, gate_act=gate_act, sum_out=out)
    if n_given is None:
        compact_mask(mask, False, counts, idx, pdl=pdl)
    return _rows_out(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, activation, threshold, counts, idx, n_given,
                     tickets, alloc, rows_acc, pdl, gate_first=gate_first)


def _stream_ffn(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, activation, threshold, counts, stream, alloc,
                rows_acc):
    """The exact path with gate and rows kernels concurrent (triton_stream_rows.py), or None (said once) where it
    cannot run: TMA unusable, or W_down^T rows wider than one step."""
    from .dispatch import warn_once
    from .triton_gate_tma import tma_unusable
    from .triton_rows_ffn import MAX_ONE_STEP_D
    from .triton_stream_rows import consumer_programs, launch_stream_exact
    reason = tma_unusable(x, w_gate)
    if reason is None and x.shape[1] > MAX_ONE_STEP_D:
        reason = f"d_model {x.shape[1]} > {MAX_ONE_STEP_D} (whole W_down^T rows only)"
    if reason is not None:
        warn_once(f"exact_kernel='stream' needs the TMA gate kernel and d_model <= {MAX_ONE_STEP_D}; {reason}: the "
                  "gate and rows kernels run one after the other instead")
        return None
    (fraction, block_j, warps), (entries, sync), gate_first = stream
    acc, out = _sum_row_and_out(x, rows_acc, alloc)
    launch_stream_exact(x, w_gate, b_gate, w_up, b_up, w_down_t, b_down, activation, threshold, counts, entries, sync,
                        acc, out, consumer_programs(_n_sms(x.device), fraction), block_j, warps, gate_first)
    return out


def _prefetch_rows(w_up, w_down_t):
    """(w_up, w_down_t) for the gate kernel's L2 prefetches, or None (said once) where they cannot be issued: under
    the interpreter (no inline PTX) or with rows not 16-byte aligned."""
    from .dispatch import warn_once
    if configs.INTERPRET:
        warn_once("gate kernel: L2 prefetch of the active rows needs a GPU (inline PTX); not under the interpreter")
        return None
    if any(w.stride(0) * w.element_size() % 16 or w.data_ptr() % 16 for w in (w_up, w_down_t)):
        warn_once("gate kernel: L2 prefetch needs 16-byte aligned up / W_down^T rows; not prefetched")
        return None
    return w_up, w_down_t


def _rows_out(x, w_gate, w_up, w_down_t, b_gate, b_up, b_down, activation, threshold, counts, idx, n_given, tickets,
              alloc, rows_acc, pdl, gate_act=None, x1c=None, sum_out=None, gate_first=False):
    """The rows kernel's output [1, d_model] over the list (see launch_rows for gate_act / x1c / gate_first). `sum_out`:
    an fp32 [1, d_model] output the gate kernel set to b_down, which the rows kernel sums into with no epilogue."""
    from .triton_rows_ffn import launch_rows
    dev = x.device
    acc, out = (sum_out[0], sum_out) if sum_out is not None else _sum_row_and_out(x, rows_acc, alloc)
    launch_rows(x, w_gate, b_gate, w_up, b_up, w_down_t, None if sum_out is not None else b_down, gate_act, activation,
                threshold, counts, idx, acc, tickets[:1], out, _n_sms(dev), pdl=pdl, n_given=n_given, x1c=x1c,
                sum_is_out=sum_out is not None, gate_first=gate_first)
    return out


def _fp32_sum_out(x, b_down, alloc, fp32_out: bool):
    """(out, init_out) for the rows kernel summing into its output: with `fp32_out` the fp32 output [1, d_model] and
    the (row, b_down) the kernel launched before the rows kernel sets it to (launch_gate / launch_predictor_list's
    init_out); else (None, None), and the rows kernel's epilogue writes the output."""
    if not fp32_out:
        return None, None
    out = alloc(1, x.shape[1], dtype=torch.float32, device=x.device)
    return out, (out[0], b_down)


def _sum_row_and_out(x, rows_acc, alloc):
    """The one-token kernels' fp32 sum row (the SparseFFN's, zero between calls; None: a fresh one) and output."""
    acc = rows_acc if rows_acc is not None else torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
    return acc, alloc(1, x.shape[1], dtype=x.dtype, device=x.device)
