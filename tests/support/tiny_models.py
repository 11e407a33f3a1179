"""Tiny random gated-FFN causal LMs for tests: LLaMA, Mistral, Qwen2 (transformers) and a MiniCPM-like one.

MiniCPM ships custom code (not in transformers); `MiniCPMLikeForCausalLM` reproduces its structure
(scaled embeddings, depth-scaled residuals, `MiniCPMMLP` with gate/up/down/act_fn) in a few lines.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)


def tiny_llama(dtype=torch.float32, seed=0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(**{**TINY, **overrides})
    return LlamaForCausalLM(cfg).to(dtype).eval()


def tiny_mistral(dtype=torch.float32, seed=0) -> MistralForCausalLM:
    torch.manual_seed(seed)
    return MistralForCausalLM(MistralConfig(**TINY, sliding_window=16)).to(dtype).eval()


def tiny_qwen2(dtype=torch.float32, seed=0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**TINY)).to(dtype).eval()


class MiniCPMMLP(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MiniCPMLikeLayer(nn.Module):
    def __init__(self, hidden, inter, heads, scale):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(hidden)
        self.self_attn = nn.MultiheadAttention(hidden, heads, bias=False, batch_first=True)
        self.post_attention_layernorm = nn.RMSNorm(hidden)
        self.mlp = MiniCPMMLP(hidden, inter)
        self.scale = scale

    def forward(self, h, mask):
        a = self.input_layernorm(h)
        h = h + self.self_attn(a, a, a, attn_mask=mask, need_weights=False)[0] * self.scale
        return h + self.mlp(self.post_attention_layernorm(h)) * self.scale


class MiniCPMLikeForCausalLM(nn.Module):
    """Structure of MiniCPM-1B (scale_emb, scale_depth / sqrt(layers), dim_model_base) at toy size."""

    def __init__(self, vocab=97, hidden=32, inter=48, layers=2, heads=4, scale_emb=12.0, scale_depth=1.4,
                 dim_model_base=16):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(
            MiniCPMLikeLayer(hidden, inter, heads, scale_depth / math.sqrt(layers)) for _ in range(layers))
        self.norm = nn.RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.scale_emb, self.logit_scale = scale_emb, hidden / dim_model_base

    def forward(self, input_ids):
        n = input_ids.shape[1]
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=input_ids.device), 1)
        h = self.embed_tokens(input_ids) * self.scale_emb
        for layer in self.layers:
            h = layer(h, mask)
        return self.lm_head(self.norm(h) / self.logit_scale)


def tiny_minicpm_like(dtype=torch.float32, seed=0) -> MiniCPMLikeForCausalLM:
    torch.manual_seed(seed)
    return MiniCPMLikeForCausalLM().to(dtype).eval()


def random_ids(batch=2, seq=12, vocab=97, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


def compiled_greedy(model, ids: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, dict]:
    """Compile `model` in place with aot_eager (compiled_decoding.compile_model) and decode greedily: (tokens, the
    graph breaks dynamo counted meanwhile). Dynamo's state is reset before (other tests' graphs count there too) and
    after."""
    from actsparse.kernels.compiled_decoding import compile_model
    from actsparse.kernels.sparse_decoding import greedy_decode
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        compile_model(model, backend="aot_eager")
        return greedy_decode(model, ids, new_tokens), dict(torch._dynamo.utils.counters["graph_break"])
    finally:
        torch._dynamo.reset()
