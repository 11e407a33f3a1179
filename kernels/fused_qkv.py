"""One GEMV for an attention block's q, k and v projections at decode time, for dense and sparse models alike.

A decode step reads every weight once; cuBLAS runs a 4096x4096 GEMV at ~2.2 TB/s (split-K plus a reduce kernel:
profile_decode on an H100, session 9) against ~2.5 TB/s for an 11008x4096 one; one 12288x4096 GEMV ran at ~2.75 TB/s
(37 µs against 46.5 for the three). `fuse_qkv(model)` concatenates each
attention's q_proj / k_proj / v_proj weights into one [q + k + v, d] matrix: q_proj computes all three outputs in
one product and keeps them; k_proj and v_proj return their slices of it when given the same input tensor (Hugging
Face LLaMA / Mistral / Qwen2 attention call q, k, v in that order on one tensor) and compute their own product
otherwise, so the result never depends on the call order; v_proj drops the kept product once it has its slice. The
model's outputs are the same products, in one launch. `preset` hands the projections a product computed elsewhere
(fused_qkv_norm.py: the GEMV that also computes the input norm).
`bench_decode --fuse-qkv` applies it before timing, to the dense and the sparse model alike.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FusedProjection(nn.Module):
    """Columns [lo, hi) of the fused q/k/v product. The owner (q_proj) holds the fused weight and bias and computes
    the whole product; k_proj and v_proj keep an unregistered reference to it (one copy in state_dict / .to())."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, lo: int, hi: int,
                 owner: "FusedProjection | None" = None):
        super().__init__()
        self.lo, self.hi = lo, hi
        if owner is None:
            self.weight = nn.Parameter(weight, requires_grad=False)
            self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
            self.last = _Last()
        object.__setattr__(self, "owner", owner or self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self.owner
        if owner.last.value is not None and owner.last.value[0] is x:   # computed for x already (or given: `preset`)
            out = owner.last.value[1]
            if self.hi == owner.weight.shape[0]:   # v_proj, the last slice: free the product (a prefill's can be large)
                owner.last.value = None
        elif owner is self:
            out = F.linear(x, self.weight, self.bias)
            owner.last.value = (x, out)
        else:
            bias = None if owner.bias is None else owner.bias[self.lo:self.hi]
            return F.linear(x, owner.weight[self.lo:self.hi], bias)
        return out[..., self.lo:self.hi]

    def preset(self, x: torch.Tensor, product: torch.Tensor) -> None:
        """Have the next calls on `x` return slices of `product` (x @ weight.T + bias, computed elsewhere: the q/k/v
        GEMV with the input norm, fused_qkv_norm.py) instead of computing it."""
        self.owner.last.value = (x, product)

    def extra_repr(self) -> str:
        return f"columns {self.lo}:{self.hi} of the fused q/k/v product{' (computes it)' if self.owner is self else ''}"


class _Last:
    """The owner's last (input, output), kept outside the module's attributes."""
    value: tuple[torch.Tensor, torch.Tensor] | None = None


def fuse_qkv(model: nn.Module) -> int:
    """Replace every module with q_proj / k_proj / v_proj Linears by fused projections (in place, no grad).
    Returns the number of attention blocks fused; raises ValueError if there are none."""
    fused = 0
    for name, module in model.named_modules():
        projs = [getattr(module, p, None) for p in ("q_proj", "k_proj", "v_proj")]
        if not all(isinstance(p, nn.Linear) for p in projs):
            continue
        if len({p.in_features for p in projs}) != 1 or len({p.bias is None for p in projs}) != 1:
            raise ValueError(f"{name}: q/k/v projections differ in input size or bias; cannot fuse them")
        with torch.no_grad():
            weight = torch.cat([p.weight for p in projs]).detach()
            bias = None if projs[0].bias is None else torch.cat([p.bias for p in projs]).detach()
        owner, lo = None, 0
        for attr, p in zip(("q_proj", "k_proj", "v_proj"), projs):
            proj = FusedProjection(weight, bias, lo, lo + p.out_features, owner)
            owner = owner or proj
            setattr(module, attr, proj)
            lo += p.out_features
        fused += 1
    if not fused:
        raise ValueError(f"{type(model).__name__} has no attention with q_proj / k_proj / v_proj Linears to fuse")
    return fused
