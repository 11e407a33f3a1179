"""The previous layer's last residual add and a decoder layer's input RMSNorm computed in its fused q/k/v GEMV.

In the 32-layer 7B decode (bench_decode, CUDA graph, torch.compile, `--fuse-qkv`) each layer starts with an inductor
kernel for the previous layer's `h + ffn_out` and this layer's input_layernorm (~2.1 µs plus its launch gap;
profile_decode, H100, session 18), then the fused q/k/v product (cuBLAS, ~37 µs for 100 MB). `fuse_qkv_norms(model)`
has the q/k/v GEMV compute that sum and norm itself from the previous layer's two parts (NORM in triton_gemv.py /
triton_gemv_prefetch.py; the sparse FFN's fp32 sum is rounded to the model's dtype first, as the layer's cast does), so
the inductor kernel goes. With `pdl` the GEMV is the one that loads its programs' rows before it waits for the kernel
before it, launched with programmatic dependent launch: behind the sparse FFN's rows kernel, which lets the next
kernel launch as it starts, the GEMV's programs that fit load their rows of W_qkv while the FFN's last rows arrive.
Dense and sparse models alike (bench_decode `--fuse-qkv-norm`); the layers' forward is decode_layer.py's.

`qkv_add_norm_op(residual, ffn_out, norm weight, eps, W_qkv, b_qkv, pdl)` -> (h, x, qkv) is one opaque op under
torch.compile; where the GEMV cannot run it computes the same in torch and says why once.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .decode_layer import Handoff, check_plain_pre_norm, set_decode_forward


@torch.library.custom_op("actsparse::qkv_add_norm", mutates_args=())
def qkv_add_norm_op(residual: torch.Tensor, ffn_out: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                    weight: torch.Tensor, bias: Optional[torch.Tensor],
                    pdl: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, x, qkv) at one token: h = residual + ffn_out (ffn_out rounded to residual's dtype first), x = RMSNorm(h)
    (LlamaRMSNorm's formula with `norm_weight`, `eps`), qkv = x @ weight.T (+ bias); residual / ffn_out [1, d],
    weight [n, d]. The GEMV scales its fp32 sums by rstd at the end (triton_gate_tma.tma_row_dots_norm), so qkv is
    within rounding of F.linear(x, ...), not bit for bit."""
    from .dispatch import warn_once
    from .sparse_ffn import llama_rms_norm
    from .triton_gemv import gemv_chained, gemv_unusable
    reason = gemv_unusable(residual, weight)
    if reason is None and norm_weight.dtype != residual.dtype:
        reason = f"a norm weight in {norm_weight.dtype} (the model's {residual.dtype})"
    if reason is None:
        h, x = torch.empty_like(residual), torch.empty_like(residual)
        return h, x, gemv_chained(x, weight, bias, pdl, norm=(residual, ffn_out.contiguous(), norm_weight, eps, h))
    warn_once(f"the q/k/v GEMV with the input norm is unavailable for {reason}; torch's add, RMSNorm and F.linear")
    h = residual + ffn_out.to(residual.dtype)
    x = llama_rms_norm(h, norm_weight, eps)
    return h, x, F.linear(x, weight, bias)


@qkv_add_norm_op.register_fake
def _qkv_add_norm_fake(residual, ffn_out, norm_weight, eps, weight, bias, pdl):
    return torch.empty_like(residual), torch.empty_like(residual), residual.new_empty(residual.shape[0],
                                                                                      weight.shape[0])


def add_norm_qkv(attention: nn.Module, residual: torch.Tensor, ffn_out: torch.Tensor, norm: nn.Module,
                 pdl: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, x) for the decoder layer's `attention` (fused q/k/v, perhaps inside a DecodeAttention) from the previous
    layer's residual h and FFN output (batch 1, seq 1, d): h = residual + ffn_out, x = norm(h), and the attention's
    q/k/v product of x computed in the same kernel and preset on its projections (FusedProjection.preset)."""
    owner = getattr(attention, "attn", attention).q_proj.owner
    shape = residual.shape
    h, x, qkv = qkv_add_norm_op(residual.reshape(1, shape[-1]), ffn_out.reshape(1, shape[-1]), norm.weight,
                                float(norm.variance_epsilon), owner.weight, owner.bias, pdl)
    x = x.reshape(shape)
    owner.preset(x, qkv.reshape(*shape[:-1], qkv.shape[-1]))
    return h.reshape(shape), x


def fuse_qkv_norms(model: nn.Module, pdl: bool = False) -> int:
    """Give every decoder layer of `model` (after fuse_qkv) decode_layer.py's forward with the input add + RMSNorm in
    its q/k/v GEMV from the second layer on (in place; `pdl`: the GEMV launched with programmatic dependent launch
    where usable). Returns how many layers take the fusion (all but the first); raises ValueError if a layer is not a
    plain pre-norm LLaMA / Mistral / Qwen2 / Qwen3 layer with fused q/k/v projections, or if there are fewer than
    two."""
    from .fused_qkv import FusedProjection
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(getattr(m, "self_attn", None), nn.Module) and hasattr(m, "input_layernorm")]
    for name, layer in layers:
        check_plain_pre_norm(name, layer, "its input add + RMSNorm cannot move into the q/k/v GEMV")
        attn = getattr(layer.self_attn, "attn", layer.self_attn)
        if not isinstance(getattr(attn, "q_proj", None), FusedProjection):
            raise ValueError(f"{name}: q/k/v projections are not fused; run fuse_qkv before fuse_qkv_norms")
    if len(layers) < 2:
        raise ValueError(f"{type(model).__name__} has {len(layers)} decoder layer(s): the input norm moves into the "
                         "q/k/v GEMV from the second layer on")
    handoff = Handoff()
    for i, (_, layer) in enumerate(layers):
        set_decode_forward(layer, qkv_handoff=handoff, qkv_hands_on=i < len(layers) - 1, qkv_pdl=pdl)
    return len(layers) - 1
