"""The float64 reference of one decode token's attention (kernels/triton_decode_attention.py), written out: RoPE in
the rotate_half convention, the cache write at `pos`, softmax attention over positions 0..pos (GQA), and the inputs
with the cache's unused positions poisoned (NaN), for the CPU and GPU tests alike; the split kernel's state with its
partials poisoned, and whether its tickets are back at 0."""
from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)


def reference(q, k_new, v_new, cos, sin, k_cache, v_cache, pos: int, mask=None, scaling=None):
    """(out [B, heads * D], k_cache, v_cache after the write) in float64; positions > pos of the caches as given."""
    batch, n_heads, head_dim = q.shape
    groups = n_heads // k_cache.shape[1]
    scaling = head_dim ** -0.5 if scaling is None else scaling
    cos, sin = cos.double().reshape(-1, 1, head_dim), sin.double().reshape(-1, 1, head_dim)
    q_rot = q.double() * cos + rotate_half(q.double()) * sin
    k_rot = k_new.double() * cos + rotate_half(k_new.double()) * sin
    k_cache, v_cache = k_cache.double().clone(), v_cache.double().clone()
    k_cache[:, :, pos], v_cache[:, :, pos] = k_rot, v_new.double()
    keys = k_cache[:, :, :pos + 1].repeat_interleave(groups, 1)
    values = v_cache[:, :, :pos + 1].repeat_interleave(groups, 1)
    scores = torch.einsum("bhd,bhpd->bhp", q_rot, keys) * scaling
    if mask is not None:
        m = mask[:, 0, 0, :pos + 1].expand(batch, -1)[:, None, :]
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.double()
    out = torch.einsum("bhp,bhpd->bhd", scores.softmax(-1), values)
    return out.reshape(batch, n_heads * head_dim), k_cache, v_cache


def case(batch=2, n_kv=2, groups=3, head_dim=16, max_len=11, pos=5, dtype=torch.float32, device="cpu", seed=0,
         per_batch_rope=True):
    """Random inputs of one decode token: q, k_new, v_new, cos, sin (HF's: cos / sin of an angle per frequency, the
    two halves equal), caches holding random values at 0..pos-1 and NaN from pos on, and pos as a device tensor."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(dtype=dtype, device=device)  # noqa: E731
    q, k_new, v_new = rnd(batch, n_kv * groups, head_dim), rnd(batch, n_kv, head_dim), rnd(batch, n_kv, head_dim)
    angles = torch.rand(batch if per_batch_rope else 1, head_dim // 2, generator=g) * 6.3
    angles = torch.cat([angles, angles], -1)
    cos, sin = angles.cos().to(dtype=dtype, device=device), angles.sin().to(dtype=dtype, device=device)
    k_cache, v_cache = rnd(batch, n_kv, max_len, head_dim), rnd(batch, n_kv, max_len, head_dim)
    k_cache[:, :, pos:], v_cache[:, :, pos:] = float("nan"), float("nan")
    return q, k_new, v_new, cos, sin, k_cache, v_cache, torch.tensor(pos, device=device)


def poisoned_split_state(groups: int, head_dim: int, device, programs: int | None = None) -> torch.Tensor:
    """A split_state (triton_decode_attention_split.py) whose partials hold NaN: the kernel must write every one it
    reads. `programs` None: as many as a DecodeAttention's state holds."""
    from actsparse.kernels import triton_decode_attention_split as tdas
    state = tdas.split_state(groups, head_dim, device, tdas.SPLIT_PROGRAMS if programs is None else programs)
    tdas.state_views(state)[1].fill_(float("nan"))
    return state


def tickets_zero(state: torch.Tensor) -> bool:
    """Whether every ticket of the decode attention's state is back at 0 (ready for the next call)."""
    from actsparse.kernels import triton_decode_attention_split as tdas
    return not tdas.state_views(state)[0].any()
