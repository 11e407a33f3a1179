"""torch.compile around the sparse FFNs, so a decode step's small non-FFN kernels are fused for dense and sparse alike.

bench_decode on an H100 (docs/RESULTS.md, session 3): of a 7B-shaped model's 8.05 ms decode step (batch 1,
CUDA graph), the FFNs take 3.5 ms and the rest 4.6 ms. Only 1.6 ms of that rest is projection bytes; the
remainder is HF's eager per-layer kernels (norms, rotary, cache writes, residual adds), which a CUDA graph
replays but does not merge. That part bounds the exact path at ~1.25x however fast the FFN kernels are.
`compile_model(model)` compiles `model.forward` (inductor, static shapes). Inside a compiled region each
`SparseDecodingMLP` calls its `SparseFFN` through one opaque custom op (`actsparse::sparse_ffn`), so the
Triton kernels and the dispatcher's host-side choice run exactly as in eager mode. The dense model is
compiled the same way, so the comparison stays like for like. Outside compiled regions nothing changes.
"""
import contextlib
import itertools
import logging
import weakref
from typing import List, Optional, Tuple

import torch

from actsparse.modeling.predictors.low_rank_logits import LowRankLogits

log = logging.getLogger(__name__)

# Weak: a model's FFNs (and their weight copies) are freed with the model, not kept alive by this lookup.
_FFNS: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_keys = itertools.count()


def register_ffn(ffn) -> int:
    """A key under which the custom op finds `ffn` (a SparseFFN) at run time."""
    key = next(_keys)
    _FFNS[key] = ffn
    return key


def registered_ffn(key: int):
    """The SparseFFN registered under `key`."""
    return _FFNS[key]


@torch.library.custom_op("actsparse::sparse_ffn", mutates_args=())
def sparse_ffn_op(x: torch.Tensor, key: int, active: Optional[torch.Tensor], fp32_out: bool,
                  low_rank: List[Optional[torch.Tensor]], low_rank_relu: bool, low_rank_cut: float) -> torch.Tensor:
    """The registered SparseFFN on x ([tokens, d_model]); a new tensor of x's shape and the FFN's dtype (float32 with
    `fp32_out`: SparseFFN.forward). `low_rank` = [down, up, bias, source] (empty: none) with `low_rank_relu` and
    `low_rank_cut`: the predictor as a LowRankLogits, in place of `active`."""
    return _FFNS[key](x, _active_of(active, low_rank, low_rank_relu, low_rank_cut), fp32_out)


@sparse_ffn_op.register_fake
def _sparse_ffn_fake(x, key, active, fp32_out, low_rank, low_rank_relu, low_rank_cut):
    return x.new_empty(x.shape, dtype=torch.float32 if fp32_out else _FFNS[key].w_gate.dtype)


@torch.library.custom_op("actsparse::sparse_ffn_add_norm", mutates_args=())
def sparse_ffn_add_norm_op(residual: torch.Tensor, attn_out: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                           key: int, active: Optional[torch.Tensor], fp32_out: bool,
                           low_rank: List[Optional[torch.Tensor]], low_rank_relu: bool,
                           low_rank_cut: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """SparseFFN.forward_add_norm of the registered FFN as one opaque op: (h = residual + attn_out, FFN(RMSNorm(h)))
    ([tokens, d_model] each; the FFN's output as `sparse_ffn_op` returns it); the other arguments as there."""
    return _FFNS[key].forward_add_norm(residual, attn_out, norm_weight, eps,
                                       _active_of(active, low_rank, low_rank_relu, low_rank_cut), fp32_out)


@sparse_ffn_add_norm_op.register_fake
def _sparse_ffn_add_norm_fake(residual, attn_out, norm_weight, eps, key, active, fp32_out, low_rank, low_rank_relu,
                              low_rank_cut):
    return residual.new_empty(residual.shape), _sparse_ffn_fake(residual, key, active, fp32_out, low_rank,
                                                                 low_rank_relu, low_rank_cut)


def _active_of(active, low_rank, low_rank_relu, low_rank_cut):
    """The `active` the ops' arguments stand for (`sparse_ffn_op_args` inverted): the LowRankLogits that `low_rank`
    describes, else `active`."""
    if low_rank:
        return LowRankLogits(low_rank[0], low_rank[1], low_rank[2], low_rank_relu, low_rank_cut, low_rank[3])
    return active


def sparse_ffn_op_args(active) -> tuple:
    """(active, low_rank, low_rank_relu, low_rank_cut) of sparse_ffn_op for `active`: a tensor, None or a
    LowRankLogits."""
    if isinstance(active, LowRankLogits):
        return None, [active.down, active.up, active.bias, active.source], bool(active.relu_hidden), float(active.cut)
    return active, [], False, 0.0


def compile_model(model: torch.nn.Module, backend: str = "inductor", max_variants: int = 64) -> torch.nn.Module:
    """Compile `model.forward` in place (static shapes: prefill and decode are two variants). Running out of
    variants raises instead of silently falling back to eager (where the installed torch allows it)."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, max_variants)
    if hasattr(torch._dynamo.config, "fail_on_cache_limit_hit"):
        torch._dynamo.config.fail_on_cache_limit_hit = True
    else:
        log.warning("this torch cannot fail on dynamo's cache limit: a model recompiled more than %d times would "
                    "run eagerly (look for 'cache_size_limit' in the log)", max_variants)
    model._actsparse_eager_forward = model.forward
    model.forward = torch.compile(model.forward, backend=backend, dynamic=False)
    return model


@contextlib.contextmanager
def eager(model: torch.nn.Module):
    """Run `model` uncompiled inside the block (e.g. calibration, which reads counts back to the host)."""
    compiled = model.forward
    model.forward = getattr(model, "_actsparse_eager_forward", compiled)
    try:
        yield model
    finally:
        model.forward = compiled
