"""A decoder layer's post-attention residual add and RMSNorm computed in the sparse FFN's first kernel, at one token.

In the 32-layer 7B decode (bench_decode, CUDA graph, torch.compile) each layer runs one inductor kernel for
`residual + attn_out` and post_attention_layernorm before the FFN, ~2.5 µs (profile_decode, H100, session 15). The
sparse paths' first FFN kernel reads x as one vector anyway: the TMA gate kernel without a predictor, the predictor's
TMA GEMV with a LowRankLogits. `fuse_ffn_norms(model)` has that kernel compute h and x itself (triton_gate_tma.py,
NORM) and write both, so a sparse decode step runs one kernel fewer per layer. Each fused layer's forward (replaced
per instance: decode_layer.py, shared with fused_qkv_norm.py) is, at one token:

    attn_out = self_attn(hidden_states=input_layernorm(hidden), **kwargs)
    h, ffn_out = mlp.forward_add_norm(hidden, attn_out, post_attention_layernorm)   # one op under torch.compile
    return h + ffn_out

and the layer's own forward otherwise (prefill, calibration, positional arguments), which therefore computes
exactly what it computed before. Only layers whose forward is that plain pre-norm sequence are taken (transformers'
LLaMA, Mistral, Qwen2 and Qwen3 layers with their RMSNorm, checked in 5.17 and 5.24); any other layer with a sparse
FFN (MiniCPM's depth-scaled residuals, Gemma's (1 + weight) norms, ...) raises.
"""
from __future__ import annotations

from torch import nn

from .decode_layer import check_plain_pre_norm, set_decode_forward


def is_fused(layer: nn.Module) -> bool:
    """Whether `layer`'s one-token forward computes its post-attention add + RMSNorm in the FFN's op."""
    return bool(layer.__dict__.get("ffn_norm_fused"))


def fuse_ffn_norms(model: nn.Module) -> int:
    """Give every decoder layer of `model` whose `mlp` is a SparseDecodingMLP the fused forward (in place; run after
    swap_in_sparse_ffns). Returns how many layers have it now (already fused ones included); raises ValueError if a
    layer with a sparse FFN is not a plain pre-norm LLaMA / Mistral / Qwen2 / Qwen3 layer, or if there is none."""
    from .sparse_decoding import SparseDecodingMLP
    fused = 0
    for name, layer in model.named_modules():
        if not isinstance(getattr(layer, "mlp", None), SparseDecodingMLP):
            continue
        check_plain_pre_norm(name, layer, "its add + RMSNorm cannot move into the sparse FFN")
        set_decode_forward(layer, ffn_norm_fused=True)
        fused += 1
    if not fused:
        raise ValueError(f"{type(model).__name__} has no decoder layer with a SparseDecodingMLP: run "
                         "swap_in_sparse_ffns before fuse_ffn_norms")
    return fused
