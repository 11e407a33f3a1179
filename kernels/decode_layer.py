"""A plain pre-norm decoder layer's one-token forward with its norms computed in the kernels around them.

Two fusions share this forward, each a flag on the layer instance (the forward is replaced per instance):
- `ffn_norm_fused` (fused_ffn_norm.py): the post-attention residual add and RMSNorm in the sparse FFN's first kernel
  (`mlp.forward_add_norm`);
- `qkv_handoff` (fused_qkv_norm.py): the previous layer's last residual add and this layer's input RMSNorm in the
  fused q/k/v GEMV. A layer hands its two parts (h, ffn_out) on through a `Handoff` shared by the model's layers; the
  next layer takes them if the tensor it is given is the one this layer returned, else it runs its own input norm.

At one token (else, and while the FFN calibrates, the layer's own forward):

    h, x = add_norm_qkv(prev h, prev ffn_out)        if the previous layer handed them on
           (hidden, input_layernorm(hidden))        otherwise
    attn_out = self_attn(x)
    h2, ffn_out = mlp.forward_add_norm(h, attn_out)  if ffn_norm_fused
                  (h + attn_out, mlp(post_attention_layernorm(h + attn_out)))  otherwise
    return h2 + ffn_out

which is what the layer's own forward computes, with the same roundings (the sparse FFN's fp32 sum rounded to the
model's dtype before the add). Under torch.compile nothing reads a returned sum that the next layer takes as parts, so
inductor drops it: only the last layer's (the model's final norm) is computed.
"""
from __future__ import annotations

import types

from torch import nn

# Layer classes whose forward is the pre-norm sequence above, and RMSNorm classes computing LlamaRMSNorm's formula
# with `weight` and `variance_epsilon` (sparse_ffn.llama_rms_norm).
PLAIN_PRE_NORM_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer")
LLAMA_RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


class Handoff:
    """The (returned sum, h, ffn_out) of the layer that ran last, for the layer after it; a plain object (not a
    module), emptied by the layer that reads it."""
    pending: tuple | None = None


def decode_layer_forward(self, hidden_states, *args, **kwargs):
    """The layer's forward with its norms in the kernels around them at one token (module docstring)."""
    mlp = self.mlp
    if args or hidden_states.shape[:-1].numel() != 1 or getattr(mlp, "calibrating", False):
        return type(self).forward(self, hidden_states, *args, **kwargs)
    handoff = self.__dict__.get("qkv_handoff")
    pending = None
    if handoff is not None:
        pending, handoff.pending = handoff.pending, None
    if pending is not None and pending[0] is hidden_states:
        from .fused_qkv_norm import add_norm_qkv
        h, x = add_norm_qkv(self.self_attn, pending[1], pending[2], self.input_layernorm, self.qkv_pdl)
    else:
        h, x = hidden_states, self.input_layernorm(hidden_states)
    attn_out, _ = self.self_attn(hidden_states=x, **kwargs)
    if self.__dict__.get("ffn_norm_fused"):
        h2, ffn_out = mlp.forward_add_norm(h, attn_out, self.post_attention_layernorm, cast=False)
    else:
        h2 = h + attn_out
        ffn_out = mlp(self.post_attention_layernorm(h2))
    out = h2 + ffn_out.to(h2.dtype)
    if handoff is not None and self.__dict__.get("qkv_hands_on"):
        handoff.pending = (out, h2, ffn_out)
    return out


def uses_decode_forward(layer: nn.Module) -> bool:
    """Whether `layer`'s forward is `decode_layer_forward`."""
    return getattr(layer.__dict__.get("forward"), "__func__", None) is decode_layer_forward


def set_decode_forward(layer: nn.Module, **flags) -> None:
    """Give `layer` `decode_layer_forward` (once) and set `flags` on it (plain attributes)."""
    for name, value in flags.items():
        object.__setattr__(layer, name, value)
    if not uses_decode_forward(layer):
        layer.forward = types.MethodType(decode_layer_forward, layer)


def check_plain_pre_norm(name: str, layer: nn.Module, what: str) -> None:
    """Raise ValueError naming `layer` unless it is a plain pre-norm LLaMA / Mistral / Qwen2 / Qwen3 layer with
    LlamaRMSNorm-formula norms; `what` says what could not move."""
    norms = [getattr(layer, n, None) for n in ("input_layernorm", "post_attention_layernorm")]
    if (type(layer).__name__ not in PLAIN_PRE_NORM_LAYERS
            or any(type(n).__name__ not in LLAMA_RMS_NORMS or not hasattr(n, "variance_epsilon") for n in norms)
            or not isinstance(getattr(layer, "self_attn", None), nn.Module)):
        raise ValueError(f"{name}: {type(layer).__name__} (norms {', '.join(type(n).__name__ for n in norms)}) is not "
                         f"a plain pre-norm layer ({', '.join(PLAIN_PRE_NORM_LAYERS)} with "
                         f"{', '.join(LLAMA_RMS_NORMS)}); {what}")
