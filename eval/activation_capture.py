"""One dense pass that keeps each FFN's `x1` (the down-projection input) on the CPU, bounded.

CETT thresholds depend only on `x1` and `W_down`, so one capture serves every CETT target: the
CETT-PPL search computes all its candidate thresholds from this cache without another forward pass.
The FFN input is not kept: nothing here needs to recompute `x1`.

Memory bound: at most `max_tokens` token rows per layer are kept, stored in `storage_dtype` (fp32 by
default; bf16 halves it), i.e. `layers * max_tokens * d_ff * bytes` on the host; with the default
4096 tokens that is 0.75 GiB in fp32 for SmolLM2-135M (30 x 1536) and 5.4 GiB for LLaMA-2-7B
(32 x 11008). When the calibration set holds more tokens than that, each batch contributes an equal
share of its real (unpadded) tokens, drawn without replacement by a seeded generator, so the sample
is the same for every call with the same data (and `cett_thresholds` / `ppl_p_sparsity` agree).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from actsparse.modeling import find_gated_ffns

from .batching import Batch, forward_logits
from .perplexity import next_token_nll

DEFAULT_MAX_TOKENS = 4096


def gated_ffns(model: nn.Module) -> list[nn.Module]:
    """Every gated FFN (converted or not) in forward order; their `down_proj` input is `x1`."""
    ffns = [module for _, module in find_gated_ffns(model)]
    if not ffns:
        raise ValueError(f"{type(model).__name__} has no gated FFN (gate_proj/up_proj/down_proj/act_fn)")
    return ffns


def down_column_norms(ffn: nn.Module) -> torch.Tensor:
    """`||W_down[:, j]||_2` per neuron j, float64 on the CPU (`down_proj.weight` is `[d_model, d_ff]`)."""
    weight = ffn.down_proj.weight.detach()
    return torch.linalg.vector_norm(weight.double(), dim=0).cpu()


@dataclass
class CapturedActivations:
    """`x1[layer]`: `[tokens, d_ff]` rows of the dense pass; `down_weights[layer]`: `[d_model, d_ff]` fp64."""
    x1: list[torch.Tensor]
    down_weights: list[torch.Tensor]
    nll_sum: float          # dense next-token NLL summed over the calibration set (same pass)
    nll_tokens: int
    zero_fraction: list[float]   # per layer, exact zeros in all of x1 (every token, not just the sample)

    @property
    def num_layers(self) -> int:
        return len(self.x1)

    @property
    def dense_loss(self) -> float:
        return self.nll_sum / self.nll_tokens


def token_quota(batches: list[Batch], max_tokens: int) -> list[int]:
    """How many real tokens each batch contributes to the capture."""
    counts = [int(b.valid_positions().sum()) for b in batches]
    if sum(counts) <= max_tokens:
        return counts
    share = math.ceil(max_tokens / len(batches))
    return [min(c, share) for c in counts]


def _chosen_rows(valid: torch.Tensor, quota: int, seed: int) -> torch.Tensor:
    """Flat indices (into `[B*T]`) of the real tokens kept from one batch."""
    real = valid.reshape(-1).nonzero().squeeze(1)
    if quota >= real.numel():
        return real
    gen = torch.Generator().manual_seed(seed)
    return real[torch.randperm(real.numel(), generator=gen)[:quota].sort().values]


def capture_x1(model: nn.Module, batches: list[Batch], max_tokens: int = DEFAULT_MAX_TOKENS,
               storage_dtype: torch.dtype = torch.float32, seed: int = 0) -> CapturedActivations:
    """Run the calibration set once (no grad), keeping sampled `x1` rows per layer and the dense NLL.

    Call inside `measurement_mode(model)`.
    """
    ffns = gated_ffns(model)
    quotas = token_quota(batches, max_tokens)
    kept: list[list[torch.Tensor]] = [[] for _ in ffns]
    zeros, entries = [0] * len(ffns), [0] * len(ffns)
    rows = {"index": None}
    weights: list[torch.Tensor | None] = [None] * len(ffns)

    def keep(layer: int):
        def hook(module, args):
            if weights[layer] is None:  # read here, where a ZeRO-3 partitioned weight is gathered for the forward
                weights[layer] = module.weight.detach().to("cpu", torch.float64)
            x1 = args[0]
            flat = x1.reshape(-1, x1.shape[-1])
            kept[layer].append(flat[rows["index"].to(flat.device)].to("cpu", storage_dtype))
            zeros[layer] = zeros[layer] + (x1 == 0).sum()
            entries[layer] += x1.numel()
        return hook

    handles = [ffn.down_proj.register_forward_pre_hook(keep(i)) for i, ffn in enumerate(ffns)]
    nll_sum, nll_tokens = 0.0, 0
    try:
        for index, (batch, quota) in enumerate(zip(batches, quotas)):
            rows["index"] = _chosen_rows(batch.valid_positions(), quota, seed + index)
            nll, count = next_token_nll(forward_logits(model, batch), batch)
            nll_sum, nll_tokens = nll_sum + nll, nll_tokens + count
    finally:
        for h in handles:
            h.remove()
    x1 = [torch.cat(parts) for parts in kept]
    zero_fraction = [float(z) / e for z, e in zip(zeros, entries)]
    return CapturedActivations(x1, weights, nll_sum, nll_tokens, zero_fraction)
