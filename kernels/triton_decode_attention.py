"""One Triton kernel for an attention layer's work at one decode token: RoPE on q and k, the static KV cache write, and
softmax(q K^T * scaling) V over the cached positions, for dense and sparse models alike.

Why: at batch 1 on an H100 (7B shape, 32 heads x 128, prompt 32 + 128 new tokens, torch.compile + CUDA graph), each
layer's attention part costs ~8.3 µs of kernels plus launch gaps: two inductor RoPE / copy kernels (~1.2-1.5 µs each),
the cache's index_copy (~1.05 µs) and cuDNN SDPA (~4.5 µs), for q of 32x128 and at most 168 cached positions.

Program (b, kv head) loads its q heads (GQA: the `groups` q heads of one kv head together), rotates q and the new k
in fp32 (rotate_half convention), writes the new k / v at the write position `pos` (a device tensor: a CUDA graph
replay sees its new value), attends over positions 0..pos with an online softmax in BLOCK_P steps (position pos from
registers, 0..pos-1 from the cache) and advances `pos` by one, as transformers' StaticLayer.update does: the last
program to finish (a ticket counter) stores pos + 1, so no separate launch adds it. The attention mask HF builds for a
static cache at decode ([B, 1, 1, max_len]: bool for sdpa, additive for eager) is applied too, so padded batches stay
exact; its causal part only hides positions > pos, which the kernel never reads.

Split over positions (flash-decoding, triton_decode_attention_split.py): whole, the kernel took 5.5 µs per layer on
an H100 at 7B (168 positions), most of it 32 programs (one per kv head, on 32 of 132 SMs) each walking every position
in dependent BLOCK_P steps. With SPLITS > 1 the grid is (batch * kv heads, SPLITS): split s of a head rotates q, walks
the s-th of SPLITS balanced ranges of positions 0..pos (the last range ends with pos: that split alone rotates k,
writes the cache and scores the new token) and stores its partial softmax (max, sum, unnormalised values; fp32); the
head's last split to finish (a ticket) combines them (log-sum-exp rescale, split order) and writes the output, and the
last head to finish advances pos. The host picks SPLITS from max_len, the heads and the SMs (`split_count`: 4 at 7B on
an H100, 128 programs of <= 42 positions); SPLITS 1 is the whole kernel (no scratch traffic). The state (tickets left
at 0, partials) is a DecodeAttention's, allocated once. (Correct under the interpreter; not timed on a GPU yet.)

`use_decode_attention(model)` swaps each LLaMA / Mistral / Qwen2 attention for a `DecodeAttention`, which takes the
kernel at one new token (batch B >= 1) with a StaticCache full-attention layer already filled (transformers 5.x),
through one opaque custom op (`actsparse::decode_attention`: torch.compile keeps it whole, a CUDA graph captures its
launch), and otherwise runs the original module. Falls back (said once where it is a decode step): another cache
(dynamic, sliding-window layers, offloading), attention implementations other than sdpa / eager, head_dim not a power
of two or above 256, mixed dtypes, masks of another shape, CPU without TRITON_INTERPRET=1. Prefill (and the first
token into an empty cache) always takes the original path. Called directly where the kernel cannot run, the op itself
computes the same in torch ops.
"""
from __future__ import annotations

import inspect

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import nn

from . import configs
from .configs import tuned
from .pdl import pdl_available
from .triton_decode_attention_split import SPLIT_PROGRAMS, combine_splits, pick_splits, split_state

try:
    from transformers.cache_utils import StaticLayer
except ImportError:  # transformers < 5: no cache layers, the original path throughout
    StaticLayer = None

# GPU: positions per step and warps, timed per (cache length, kv heads, head_dim, q heads per kv head). Each step holds
# [BLOCK_P, head_dim] K and V tiles in fp32 registers: ptxas for sm_90 (fp16, head_dim 128, one q head per kv head)
# gives 66-200 registers and no spills for these, except 256 / 16 warps (240 bytes of stack: one step for a 168-position
# cache); BLOCK_P 128 at 4 warps spilled. 4-8 q heads per kv head need the small blocks (16 / 2-4, 32 / 8 no spills).
# Interpreter: several steps at the tests' cache lengths.
DECODE_ATTENTION_CONFIGS = [
    triton.Config(dict(BLOCK_P=p), num_warps=w, num_stages=s)
    for p, w, s in [(16, 2, 2), (16, 4, 2), (32, 4, 2), (32, 8, 2), (64, 4, 2), (64, 8, 2), (128, 8, 2), (128, 16, 2),
                    (256, 16, 1)]
]
DECODE_ATTENTION_FIXED = dict(BLOCK_P=4)
MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634


@triton.jit
def _rope(ptrs, ptrs_rot, row_mask, cos, sin, sign):
    """x * cos + rotate_half(x) * sin in fp32: rotate_half(x)[d] = -x[d + D/2] (d < D/2), x[d - D/2] (d >= D/2)."""
    x = tl.load(ptrs, mask=row_mask, other=0.0).to(tl.float32)
    x_rot = tl.load(ptrs_rot, mask=row_mask, other=0.0).to(tl.float32)
    return x * cos + sign * x_rot * sin


@triton.jit
def _masked(s, mask_ptrs, live, MASK: tl.constexpr):
    """Scores s [BLOCK_G, n] (log2 units) with the attention mask applied at their n positions (MASK 1: bool, kept
    where nonzero; 2: additive)."""
    if MASK == 1:
        keep = tl.load(mask_ptrs, mask=live, other=0)
        s = tl.where(keep[None, :] != 0, s, float("-inf"))
    elif MASK == 2:
        bias = tl.maximum(tl.load(mask_ptrs, mask=live, other=0.0).to(tl.float32), -1.0e38)  # finfo.min: no overflow
        s += bias[None, :] * 1.4426950408889634
    return s


@triton.jit
def _scores(q, kt, BLOCK_G: tl.constexpr):
    """q [BLOCK_G, D] . kt [BLOCK_P, D] -> [BLOCK_G, BLOCK_P]; one q head (MHA) as a 2D product, which takes far fewer
    registers than the [1, BLOCK_P, D] one (ptxas, sm_90, D 128, BLOCK_P 128 at 4 warps: spills in 3D)."""
    if BLOCK_G == 1:
        s = tl.sum(tl.sum(q, 0)[None, :] * kt, 1)[None, :]
    else:
        s = tl.sum(q[:, None, :] * kt[None, :, :], 2)
    return s


@triton.jit
def _weighted(p, vt, BLOCK_G: tl.constexpr):
    """p [BLOCK_G, BLOCK_P] . vt [BLOCK_P, D] -> [BLOCK_G, D], 2D for one q head as in `_scores`."""
    if BLOCK_G == 1:
        pv = tl.sum(tl.sum(p, 0)[:, None] * vt, 0)[None, :]
    else:
        pv = tl.sum(p[:, :, None] * vt[None, :, :], 1)
    return pv


@triton.jit
def _attend_cached(q, m_i, l_i, acc, kc_ptr, vc_ptr, lo, hi, s_cp, d, mask_row, s_mp, MASK: tl.constexpr,
                   BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr):
    """The online softmax (running max m_i, sum l_i, weighted values acc [BLOCK_G, D]) carried over cache positions
    lo..hi-1 of one kv head, BLOCK_P at a time; q [BLOCK_G, D] pre-scaled to log2 units. Returns (m_i, l_i, acc)."""
    for start in range(lo, hi, BLOCK_P):
        offs_p = start + tl.arange(0, BLOCK_P)
        p_mask = offs_p < hi
        kv_offs = offs_p[:, None] * s_cp + d[None, :]
        kt = tl.load(kc_ptr + kv_offs, mask=p_mask[:, None], other=0.0).to(tl.float32)
        vt = tl.load(vc_ptr + kv_offs, mask=p_mask[:, None], other=0.0).to(tl.float32)
        s = _masked(_scores(q, kt, BLOCK_G), mask_row + offs_p * s_mp, p_mask, MASK)
        s = tl.where(p_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _weighted(p, vt, BLOCK_G)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _new_token(q, k_row, v_row, kc_row, vc_row, pos, max_len, s_cp, cos, sin, sign, d, d_rot, mask_row, s_mp,
               MASK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Position pos from registers: k rotated and rounded to the cache's dtype (as if read back from the cache), k / v
    written to the cache at pos; returns the online softmax (m_i, l_i, acc) started there."""
    k = _rope(k_row + d, k_row + d_rot, d < HEAD_DIM, cos, sin, sign).to(kc_row.dtype.element_ty)
    v = tl.load(v_row + d)
    write = (pos + 0 * d) < max_len
    tl.store(kc_row + pos * s_cp + d, k, mask=write)
    tl.store(vc_row + pos * s_cp + d, v, mask=write)
    at_pos = pos + tl.zeros([1], dtype=pos.dtype)
    s_new = _masked(tl.sum(q * k.to(tl.float32)[None, :], 1)[:, None], mask_row + at_pos * s_mp, at_pos < max_len,
                    MASK)
    m_i = tl.maximum(tl.max(s_new, 1), -1.0e30)   # finite even where the mask hides pos: no inf - inf below
    l_i = tl.sum(tl.exp2(s_new - m_i[:, None]), 1)
    return m_i, l_i, l_i[:, None] * v.to(tl.float32)[None, :]


@tuned(DECODE_ATTENTION_CONFIGS, DECODE_ATTENTION_FIXED,
       key=["max_len", "n_kv_heads", "HEAD_DIM", "BLOCK_G", "SPLITS"], reset_to_zero=["tickets_ptr"],
       restore_value=["pos_ptr"])
@triton.jit
def decode_attention_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, kc_ptr, vc_ptr, pos_ptr, mask_ptr, tickets_ptr,
                            partials_ptr, out_ptr, n_kv_heads, groups, max_len, qk_scale, s_qb, s_qh, s_kb, s_kh,
                            s_vb, s_vh, s_cos, s_sin, s_cb, s_ch, s_cp, s_mb, s_mp, s_ob,
                            MASK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, SPLITS: tl.constexpr,
                            FENCE: tl.constexpr, TRIGGER: tl.constexpr, BLOCK_P: tl.constexpr):
    if TRIGGER:   # a kernel launched with PDL after this one (the o projection) may load its weights from now on
        tl.extra.cuda.gdc_launch_dependents()
    b = tl.program_id(0) // n_kv_heads
    kvh = tl.program_id(0) % n_kv_heads
    pos = tl.load(pos_ptr)
    live = pos < max_len                       # past the end: nothing written, a NaN output (HF: a device assert)
    d = tl.arange(0, HEAD_DIM)
    d_rot = (d + HEAD_DIM // 2) % HEAD_DIM
    sign = tl.where(d < HEAD_DIM // 2, -1.0, 1.0)
    cos = tl.load(cos_ptr + b * s_cos + d).to(tl.float32)
    sin = tl.load(sin_ptr + b * s_sin + d).to(tl.float32)
    g = tl.arange(0, BLOCK_G)
    g_mask = g < groups
    q_rows = q_ptr + b * s_qb + (kvh * groups + g)[:, None] * s_qh
    q = _rope(q_rows + d[None, :], q_rows + d_rot[None, :], g_mask[:, None], cos, sin, sign) * qk_scale
    k_row, v_row = k_ptr + b * s_kb + kvh * s_kh, v_ptr + b * s_vb + kvh * s_vh
    kc_row, vc_row = kc_ptr + b * s_cb + kvh * s_ch, vc_ptr + b * s_cb + kvh * s_ch
    mask_row = mask_ptr + b * s_mb
    n_cached = tl.minimum(pos, max_len)
    if SPLITS == 1:
        lo = 0
        hi = n_cached
        m_i, l_i, acc = _new_token(q, k_row, v_row, kc_row, vc_row, pos, max_len, s_cp, cos, sin, sign, d, d_rot,
                                   mask_row, s_mp, MASK, HEAD_DIM)
    else:
        # Split s takes positions [s n / SPLITS, (s + 1) n / SPLITS) of the n = pos + 1 positions 0..pos: the last
        # split ends with pos (the new token, written by it alone), earlier ones may be empty (pos < SPLITS - 1).
        split = tl.program_id(1)
        lo = (split * (n_cached + 1)) // SPLITS
        hi = tl.minimum(((split + 1) * (n_cached + 1)) // SPLITS, n_cached)
        if split == SPLITS - 1:
            m_i, l_i, acc = _new_token(q, k_row, v_row, kc_row, vc_row, pos, max_len, s_cp, cos, sin, sign, d, d_rot,
                                       mask_row, s_mp, MASK, HEAD_DIM)
        else:
            m_i = tl.full([BLOCK_G], -1.0e30, tl.float32)
            l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
            acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    m_i, l_i, acc = _attend_cached(q, m_i, l_i, acc, kc_row, vc_row, lo, hi, s_cp, d, mask_row, s_mp, MASK, BLOCK_G,
                                   BLOCK_P)
    out_ptrs = out_ptr + b * s_ob + (kvh * groups + g)[:, None] * HEAD_DIM + d[None, :]
    if SPLITS == 1:
        tl.store(out_ptrs, tl.where(live, acc / l_i[:, None], float("nan")), mask=g_mask[:, None])
        tl.debug_barrier()
        head_done = True
    else:
        head_done = combine_splits(m_i, l_i, acc, live, partials_ptr, tickets_ptr + 1 + tl.program_id(0), out_ptrs,
                                   g_mask[:, None], FENCE, BLOCK_G, HEAD_DIM, SPLITS)
    # Advance the write position once every program has read it: the last (b, kv head) to finish stores pos + 1 and
    # resets the ticket for the next call (no memset launch). With splits a head is done when its last split has
    # combined, after every split of it took its ticket (after reading pos).
    if head_done:
        if tl.atomic_add(tickets_ptr, 1, sem="acq_rel") == tl.num_programs(0) - 1:
            tl.store(pos_ptr, pos + 1)
            tl.atomic_xchg(tickets_ptr, 0)


def kernel_unusable(device: torch.device, dtypes: set, n_heads: int, head_dim: int, cache_shape: tuple,
                    cos_dim: int, mask: torch.Tensor | None) -> str | None:
    """Why the kernel cannot serve `n_heads` q heads of `head_dim` over a cache of `cache_shape` [B, kv heads, max_len,
    head_dim] (None: it can); the shapes of a call's q / k / v are checked by `decode_attention_unusable`."""
    batch, n_kv, max_len = cache_shape[:3]
    if not configs.INTERPRET and device.type != "cuda":
        return f"a {device.type} tensor without TRITON_INTERPRET=1"
    if head_dim > MAX_HEAD_DIM or head_dim < 2 or head_dim & (head_dim - 1):
        return f"head_dim {head_dim} (powers of two up to {MAX_HEAD_DIM})"
    if len(dtypes) != 1 or not dtypes <= {torch.float16, torch.bfloat16, torch.float32}:
        return f"mixed or unsupported dtypes {sorted(map(str, dtypes))}"
    if n_heads % n_kv or cache_shape[3] != head_dim or cos_dim != head_dim:
        return f"{n_heads} q heads of {head_dim}, a cache of {tuple(cache_shape)}, cos / sin of {cos_dim}"
    if mask is not None and (mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[-1] < max_len
                             or mask.shape[0] not in (1, batch)
                             or not (mask.dtype == torch.bool or mask.is_floating_point())):
        return f"an attention mask of shape {tuple(mask.shape)} and {mask.dtype} (the kernel reads [B, 1, 1, max_len])"
    return None


def decode_attention_unusable(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cos: torch.Tensor,
                              k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor | None) -> str | None:
    """Why `decode_attention` cannot run the kernel on these arguments (None: it can)."""
    batch, n_kv, _, head_dim = k_cache.shape
    if (q.dim() != 3 or q.shape[0] != batch or k_new.shape != (batch, n_kv, head_dim) or v_new.shape != k_new.shape
            or v_cache.shape != k_cache.shape or k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1):
        return (f"q {tuple(q.shape)}, k {tuple(k_new.shape)}, v {tuple(v_new.shape)}, caches {tuple(k_cache.shape)} / "
                f"{tuple(v_cache.shape)} (q [B, heads, D], k / v [B, kv heads, D], caches [B, kv heads, max_len, D])")
    return kernel_unusable(q.device, {t.dtype for t in (q, k_new, v_new, k_cache, v_cache)}, q.shape[1], q.shape[2],
                           tuple(k_cache.shape), cos.shape[-1], mask)


def _rows(t: torch.Tensor, batch: int) -> tuple[torch.Tensor, int]:
    """t [B or 1, ..., n] with unit last stride, and its batch stride (0 where one row serves the whole batch)."""
    t = t if t.stride(-1) == 1 else t.contiguous()
    return t, (t.stride(0) if t.shape[0] == batch and batch > 1 else 0)


def decode_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None = None,
                     scaling: float | None = None, state: torch.Tensor | None = None,
                     out: torch.Tensor | None = None, splits: int | None = None) -> torch.Tensor:
    """One token's attention through the kernel (the caller checked `decode_attention_unusable`): q [B, heads, D],
    k_new / v_new [B, kv heads, D] before RoPE, cos / sin [B or 1, D], caches [B, kv heads, max_len, D], pos a
    one-element int device tensor (writes at pos, attends over 0..pos, then pos += 1), mask [B or 1, 1, 1, >= max_len]
    (bool: attend where True; float: added) or None. Returns [B, heads * D] in q's dtype (written into `out` when
    given). `state`: int32, its tickets zero, left zero (a `split_state`, or one zeroed int32: no split; allocated
    here when None); `splits`: how many ranges the positions are cut in (None: the host rule, as `state` allows).
    Where PDL is available (pdl.py) the kernel lets the next kernel launch as it starts: an o projection launched with
    PDL (GemvLinear(pdl=True)) then loads its weights during the attention and waits for its output."""
    batch, n_heads, head_dim = q.shape
    n_kv, max_len = k_cache.shape[1], k_cache.shape[2]
    groups = n_heads // n_kv
    scaling = head_dim ** -0.5 if scaling is None else scaling
    splits, tickets, partials = pick_splits(state, batch, n_kv, groups, head_dim, max_len, q.device, splits)
    (q, s_qb), (k_new, s_kb), (v_new, s_vb) = _rows(q, batch), _rows(k_new, batch), _rows(v_new, batch)
    (cos, s_cos), (sin, s_sin) = _rows(cos.reshape(-1, head_dim), batch), _rows(sin.reshape(-1, head_dim), batch)
    kind, s_mb, s_mp = 0, 0, 0
    if mask is not None:
        kind = 1 if mask.dtype == torch.bool else 2
        mask = mask.view(torch.uint8) if kind == 1 else mask
        s_mb, s_mp = (mask.stride(0) if mask.shape[0] > 1 else 0), mask.stride(-1)
    if out is None:
        out = torch.empty(batch, n_heads * head_dim, dtype=q.dtype, device=q.device)
    decode_attention_kernel[(batch * n_kv, splits)](
        q, k_new, v_new, cos, sin, k_cache, v_cache, pos, q if mask is None else mask, tickets, partials, out,
        n_kv, groups, max_len, scaling * LOG2E, s_qb, q.stride(1), s_kb, k_new.stride(1), s_vb, v_new.stride(1),
        s_cos, s_sin, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), s_mb, s_mp, out.stride(0),
        MASK=kind, HEAD_DIM=head_dim, BLOCK_G=triton.next_power_of_2(groups), SPLITS=splits,
        FENCE=not configs.INTERPRET, TRIGGER=pdl_available(q.device))
    return out


def decode_attention_torch(q, k_new, v_new, cos, sin, k_cache, v_cache, pos, mask=None, scaling=None) -> torch.Tensor:
    """What `decode_attention` computes, in torch ops (no host sync): the op's path where the kernel cannot run."""
    batch, n_heads, head_dim = q.shape
    scaling = head_dim ** -0.5 if scaling is None else scaling
    cos, sin = cos.reshape(-1, 1, head_dim).float(), sin.reshape(-1, 1, head_dim).float()

    def rope(x):
        half = x.float().chunk(2, -1)
        return x.float() * cos + torch.cat([-half[1], half[0]], -1) * sin
    at = pos.reshape(1).long()
    k_cache.index_copy_(2, at, rope(k_new).to(k_cache.dtype).unsqueeze(2))
    v_cache.index_copy_(2, at, v_new.to(v_cache.dtype).unsqueeze(2))
    groups = n_heads // k_cache.shape[1]
    keys, values = (c.float().repeat_interleave(groups, 1) for c in (k_cache, v_cache))
    scores = torch.einsum("bhd,bhpd->bhp", rope(q), keys) * scaling
    hide = torch.arange(k_cache.shape[2], device=q.device) > at
    if mask is not None:
        mask = mask[..., 0, :k_cache.shape[2]]
        hide = hide | ~mask if mask.dtype == torch.bool else hide
        scores = scores if mask.dtype == torch.bool else scores + mask.float()
    probs = scores.masked_fill(hide, float("-inf")).softmax(-1).nan_to_num(0.0)  # unread positions may hold NaN
    out = torch.einsum("bhp,bhpd->bhd", probs, values.nan_to_num(0.0))
    pos.add_(1)
    return out.reshape(batch, n_heads * head_dim).to(q.dtype)


@torch.library.custom_op("actsparse::decode_attention", mutates_args=("k_cache", "v_cache", "pos", "state"))
def decode_attention_op(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cos: torch.Tensor,
                        sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor,
                        mask: Optional[torch.Tensor], scaling: float, state: torch.Tensor) -> torch.Tensor:
    """`decode_attention` as one opaque op for torch.compile (and CUDA graph capture), split as the host rule says
    where `state` (a `split_state`) holds it; torch ops where the kernel cannot run (said once per reason)."""
    reason = decode_attention_unusable(q, k_new, v_new, cos, k_cache, v_cache, mask)
    if reason is None:
        return decode_attention(q, k_new, v_new, cos, sin, k_cache, v_cache, pos, mask, scaling, state)
    from .dispatch import warn_once
    warn_once(f"decode_attention: the Triton kernel is unavailable for {reason}; torch ops")
    return decode_attention_torch(q, k_new, v_new, cos, sin, k_cache, v_cache, pos, mask, scaling)


@decode_attention_op.register_fake
def _decode_attention_fake(q, k_new, v_new, cos, sin, k_cache, v_cache, pos, mask, scaling, state):
    return q.new_empty(q.shape[0], q.shape[1] * q.shape[2])


@torch.compiler.assume_constant_result
def _falls_back(reason: str) -> bool:
    """Say once why a decode step takes the original attention; a constant for torch.compile (said while tracing)."""
    from .dispatch import warn_once
    warn_once(f"DecodeAttention: the Triton decode attention is unavailable for {reason}; the original attention")
    return True


# The attention forward's cache argument: `cache` in transformers 5.24, `past_key_values` in earlier 5.x (5.17 on
# the H100 machines), `past_key_value` in 4.x.
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


class DecodeAttention(nn.Module):
    """A LLaMA / Mistral / Qwen2 attention module (`attn`, kept whole inside: its projections, config and forward)
    whose one-token decode steps with a filled StaticCache layer run `decode_attention_op` between its projections,
    looked up at call time (fuse_qkv / use_gemv applied before or after swap them there). Everything else calls `attn`.
    State dict keys gain `.attn`: swap after loading weights. `split`: False keeps every head in one program (a state
    without partials: the host rule then picks 1 split), for timing the split against the whole kernel."""

    def __init__(self, attn: nn.Module, split: bool = True):
        super().__init__()
        self.attn = attn
        self.layer_idx, self.config, self.head_dim = attn.layer_idx, attn.config, attn.head_dim
        self.is_causal = getattr(attn, "is_causal", True)
        params = inspect.signature(type(attn).forward).parameters
        self.cache_kwarg = next((n for n in CACHE_KWARGS if n in params), "past_key_values")
        # The kernel's tickets and split partials, allocated once (CUDA-graph safe), left reusable by every call.
        state = split_state(getattr(attn, "num_key_value_groups", 1), attn.head_dim, next(attn.parameters()).device,
                            SPLIT_PROGRAMS if split else 0)
        self.register_buffer("state", state, persistent=False)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs):
        cache = None
        for name in CACHE_KWARGS:   # whichever name this transformers passes the cache under
            cache = kwargs.pop(name, None) if cache is None else cache
        layer = self._decode_layer(hidden_states, position_embeddings, attention_mask, cache)
        if layer is None:
            return self.attn(hidden_states, position_embeddings=position_embeddings, attention_mask=attention_mask,
                             **{self.cache_kwarg: cache}, **kwargs)
        attn = self.attn
        batch, head_dim = hidden_states.shape[0], attn.head_dim
        q = attn.q_proj(hidden_states).reshape(batch, -1, head_dim)
        k = attn.k_proj(hidden_states).reshape(batch, -1, head_dim)
        v = attn.v_proj(hidden_states).reshape(batch, -1, head_dim)
        cos, sin = position_embeddings
        out = decode_attention_op(q, k, v, cos.reshape(-1, head_dim), sin.reshape(-1, head_dim), layer.keys,
                                  layer.values, layer.cumulative_length, attention_mask, float(attn.scaling),
                                  self.state)
        return attn.o_proj(out.reshape(batch, 1, -1)), None

    def _decode_layer(self, hidden_states, position_embeddings, attention_mask, cache):
        """The StaticLayer this call's kernel writes, or None where the original attention runs (said once where a
        decode step could not take the kernel)."""
        if hidden_states.dim() != 3 or hidden_states.shape[1] != 1 or cache is None or position_embeddings is None:
            return None                      # prefill, or no cache: not the decode case
        if self.attn.training and self.attn.attention_dropout > 0:
            return None
        layers = getattr(cache, "layers", None)
        layer = layers[self.layer_idx] if layers is not None and self.layer_idx < len(layers) else None
        if StaticLayer is None or type(layer) is not StaticLayer or getattr(cache, "offloading", False):
            offloaded = " (offloaded)" if getattr(cache, "offloading", False) else ""
            _falls_back(f"a {type(layer).__name__} cache layer{offloaded} (the kernel writes StaticCache "
                        "full-attention layers)")
            return None
        if not layer.is_initialized:
            return None                      # the first token fills the cache: StaticLayer allocates it
        implementation = getattr(self.config, "_attn_implementation", None)
        if implementation not in ("sdpa", "eager"):
            _falls_back(f"attention implementation {implementation!r} (sdpa and eager masks are read)")
            return None
        reason = kernel_unusable(hidden_states.device, {hidden_states.dtype, layer.keys.dtype, layer.values.dtype},
                                 self.config.num_attention_heads, self.attn.head_dim, tuple(layer.keys.shape),
                                 position_embeddings[0].shape[-1], attention_mask)
        if reason is not None or self.state.device != hidden_states.device:
            _falls_back(reason or f"the kernel's state on {self.state.device}, the input on {hidden_states.device}")
            return None
        return layer

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, one decode token through triton_decode_attention"


def _is_attention(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, p, None), nn.Module) for p in ("q_proj", "k_proj", "v_proj", "o_proj")) \
        and isinstance(getattr(module, "layer_idx", None), int)


def use_decode_attention(model: nn.Module, split: bool = True) -> int:
    """Wrap every attention module of `model` (q_proj / k_proj / v_proj / o_proj and a layer_idx: LLaMA, Mistral,
    Qwen2) in a DecodeAttention (`split`: see DecodeAttention), in place. Returns how many the model now has (already
    wrapped ones included); raises ValueError if none."""
    wrapped = 0
    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if name else None
        if isinstance(module, DecodeAttention):
            wrapped += 1
        elif _is_attention(module) and name and not isinstance(parent, DecodeAttention):
            setattr(parent, child, DecodeAttention(module, split))
            wrapped += 1
    if not wrapped:
        raise ValueError(f"{type(model).__name__} has no attention with q_proj / k_proj / v_proj / o_proj and a "
                         "layer_idx to run through the Triton decode attention")
    return wrapped
