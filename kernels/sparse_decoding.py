"""Sparse decoding end to end: put `SparseFFN` into a Hugging Face model's converted FFNs for `generate`.

`swap_in_sparse_ffns(model)` replaces every `SparseGatedMLP` (relu / fatrelu / drelu / relu2) by a
`SparseDecodingMLP` running the same FFN through `SparseFFN`; `model.generate` then works unchanged
(KV cache, batch 1 or several sequences). `fuse_ffn_norms(model)` (fused_ffn_norm.py) then moves each layer's
post-attention residual add and RMSNorm into its FFN's first kernel at one token. Without a predictor the
computation is exact (up to the summation order), so greedy outputs match the dense model's.
`greedy_decode` is a plain static-KV-cache greedy loop with an optional CUDA graph for the decode step,
so that dense and sparse models can be timed in the same loop with launch overhead removed alike.
"""
from __future__ import annotations

import torch
from torch import nn

from actsparse.modeling import SparseGatedMLP
from actsparse.modeling.predictors.low_rank_logits import LowRankLogits

from .compiled_decoding import register_ffn, registered_ffn, sparse_ffn_add_norm_op, sparse_ffn_op
from .compiled_decoding import sparse_ffn_op_args as _op_args
from .dispatch import DispatchConfig
from .fused_ffn_norm import fuse_ffn_norms
from .sparse_ffn import SPARSE_ACTIVATIONS, SparseFFN

__all__ = ["SparseDecodingMLP", "swap_in_sparse_ffns", "fuse_ffn_norms", "calibrate", "decode_step", "greedy_decode",
           "teacher_forced_logits", "logit_agreement"]


class SparseDecodingMLP(nn.Module):
    """(batch, seq, d_model) -> same, through a SparseFFN on the flattened tokens.

    `predictor`: optional callable (x2d) -> active set (bool [d_ff] / [tokens, d_ff] or indices), from
    the predictor work; None runs the exact path. A predictor with a `low_rank_logits()` method (returning a
    LowRankLogits, e.g. bench_predictor.GateSVDPredictor) is handed to the kernels as that description at one token
    (`fuse_predictor`, default True): they build its neuron list while computing its logits, no mask and no
    compaction (triton_predictor_list.py). `calibrating`: the next forward measures each neuron's
    activation probability for the dispatcher (this synchronizes; do it before capturing graphs).
    `fp32_out`: where the call's kernels produce the sum in fp32 anyway (SparseFFN.sums_in_fp32), take it as it is
    and cast here, a cast that torch.compile merges into the residual add after the FFN.
    """

    def __init__(self, ffn: SparseFFN, layer_index: int = 0, fp32_out: bool = True, fuse_predictor: bool = True):
        super().__init__()
        self.ffn = ffn
        self.ffn_key = register_ffn(ffn)  # for compiled models (compiled_decoding.py)
        self.layer_index = layer_index
        self.predictor = None
        self.calibrating = False
        self.fp32_out = fp32_out
        self.fuse_predictor = fuse_predictor

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.reshape(-1, hidden.shape[-1])
        if self.calibrating:
            self.ffn.calibrate(x)
        active = self._active(x)
        fp32_out = self._fp32_out(x.shape[0], active)
        if torch.compiler.is_compiling():  # one opaque op: the kernels and the dispatch run as in eager mode
            given, low_rank, relu, cut = _op_args(active)
            out = sparse_ffn_op(x, self.ffn_key, given, fp32_out, low_rank, relu, cut)
        else:
            out = self.ffn(x, active, fp32_out)
        return out.reshape(hidden.shape).to(hidden.dtype)

    def forward_add_norm(self, residual: torch.Tensor, attn_out: torch.Tensor, norm: nn.Module, cast: bool = True):
        """(h, self(norm(h))) for h = residual + attn_out (batch, seq, d_model): a decoder layer's post-attention
        residual add, RMSNorm (`norm`: weight and variance_epsilon, LlamaRMSNorm's formula) and this FFN. At one token,
        with no predictor or one handed over as a LowRankLogits, through SparseFFN.forward_add_norm (one opaque op under
        torch.compile), whose first kernel computes h and x; else as written (fused_ffn_norm.py). `cast` False: the
        FFN's output as the op returns it (float32 where `fp32_out` took the kernels' sum), for a kernel after it that
        rounds it to the model's dtype itself (fused_qkv_norm.py)."""
        if self.calibrating or residual.shape[:-1].numel() != 1 or not self._add_norm_in_op():
            h = residual + attn_out
            return h, self(norm(h))
        d_model = residual.shape[-1]
        r, a = residual.reshape(1, d_model), attn_out.reshape(1, d_model)
        active = None if self.predictor is None else self.predictor.low_rank_logits()
        fp32_out = self._fp32_out(1, active)
        if torch.compiler.is_compiling():   # one opaque op, as in forward
            given, low_rank, relu, cut = _op_args(active)
            h, out = sparse_ffn_add_norm_op(r, a, norm.weight, float(norm.variance_epsilon), self.ffn_key, given,
                                            fp32_out, low_rank, relu, cut)
        else:
            h, out = self.ffn.forward_add_norm(r, a, norm.weight, norm.variance_epsilon, active, fp32_out)
        out = out.reshape(residual.shape)
        return h.reshape(residual.shape), out.to(residual.dtype) if cast else out

    def _add_norm_in_op(self) -> bool:
        """Whether a one-token forward_add_norm goes to the FFN's op (no predictor, or one the kernels take as a
        LowRankLogits) rather than computing x here for the predictor's own call."""
        return self.predictor is None or self._hands_low_rank(1)

    def _hands_low_rank(self, n_tokens: int) -> bool:
        """Whether the predictor goes to the kernels as its LowRankLogits: one token, `fuse_predictor`, a predictor
        that can describe itself and a predicted kernel that takes it."""
        return (self.predictor is not None and self.fuse_predictor and n_tokens == 1
                and getattr(self.predictor, "low_rank_logits", None) is not None
                and _takes_low_rank(self.ffn_key, self.ffn.dispatch.predicted_kernel))

    def _fp32_out(self, n_tokens: int, active) -> bool:
        """`fp32_out` for a call of `n_tokens` with `active` where its kernels produce the sum in fp32 anyway."""
        return self.fp32_out and _sums_in_fp32(self.ffn_key, n_tokens, active is not None,
                                               isinstance(active, LowRankLogits))

    def _active(self, x: torch.Tensor):
        """None (exact path), the predictor as a LowRankLogits (`_hands_low_rank`), or the predictor's output."""
        if self.predictor is None:
            return None
        if self._hands_low_rank(x.shape[0]):
            return self.predictor.low_rank_logits()
        return self.predictor(x)

    def extra_repr(self) -> str:
        return f"activation={self.ffn.activation}, backend={self.ffn.backend}, layer_index={self.layer_index}"


@torch.compiler.assume_constant_result
def _sums_in_fp32(ffn_key: int, n_tokens: int, predicted: bool, low_rank: bool) -> bool:
    """SparseFFN.sums_in_fp32 of the FFN registered under `ffn_key` (compiled_decoding.py; plain arguments: torch 2.11
    takes no module here), taken by torch.compile as a constant without a guard on the dispatch: swapping one
    DispatchConfig for another (bench_decode's paths) does not recompile the model. A compiled model whose FFNs then
    stop summing in fp32 stays correct: SparseFFN casts to what the op was asked for."""
    return registered_ffn(ffn_key).sums_in_fp32(n_tokens, predicted, low_rank)


@torch.compiler.assume_constant_result
def _takes_low_rank(ffn_key: int, predicted_kernel: str) -> bool:
    """Whether the FFN registered under `ffn_key` builds a one-token list from a LowRankLogits itself (the rows path;
    other predicted-set kernels would compute its mask inside the op, outside the compiled graph). A constant for
    torch.compile; `predicted_kernel` is passed so that a compiled model recompiles when it changes."""
    return registered_ffn(ffn_key)._lists_from_logits(1)


def swap_in_sparse_ffns(model: nn.Module, backend: str = "triton",
                        dispatch: DispatchConfig | None = None) -> list[SparseDecodingMLP]:
    """Replace each converted FFN of `model` (in place, after moving it to its device and dtype)."""
    swapped = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, SparseGatedMLP):
            continue
        if module.activation not in SPARSE_ACTIVATIONS:
            raise ValueError(f"{name}: activation {module.activation!r} has no exact zeros; sparse decoding "
                             f"supports {', '.join(SPARSE_ACTIVATIONS)} (convert with actsparse sparsify first)")
        ffn = SparseFFN.from_mlp(module, module.activation, module.threshold, backend=backend, dispatch=dispatch)
        new = SparseDecodingMLP(ffn, module.layer_index)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        swapped.append(new)
    if not swapped:
        raise ValueError(f"{type(model).__name__} has no SparseGatedMLP: run actsparse.modeling.sparsify "
                         "(relu / fatrelu / drelu / relu2) before swapping in sparse kernels")
    return swapped


@torch.no_grad()
def calibrate(model: nn.Module, input_ids: torch.Tensor) -> list[float]:
    """One forward over sample tokens; each SparseDecodingMLP records its neurons' activation probability.
    Returns the mean active fraction per layer."""
    mlps = [m for m in model.modules() if isinstance(m, SparseDecodingMLP)]
    for m in mlps:
        m.calibrating = True
    try:
        model(input_ids=input_ids)
    finally:
        for m in mlps:
            m.calibrating = False
    return [float(m.ffn.neuron_prob.mean()) for m in mlps]


def _static_cache(model: nn.Module, max_len: int):
    from transformers import StaticCache
    return StaticCache(config=model.config, max_cache_len=max_len)


def _next_token(model, tokens, cache, positions) -> torch.Tensor:
    logits = model(input_ids=tokens, past_key_values=cache, cache_position=positions, use_cache=True).logits
    return logits[:, -1].argmax(-1, keepdim=True)


def decode_step(model: nn.Module, input_ids: torch.Tensor, cache_len: int, cuda_graph: bool):
    """The prefill of `input_ids` into a static KV cache of `cache_len` positions, then (step, token, position):
    `step()` runs one decode step on the static buffers `token` ([batch, 1], the prefill's greedy choice) and
    `position` (the cache position, the prompt length so far) and returns the next tokens; the caller copies them
    into `token` and advances `position`. cuda_graph: the step is captured in a CUDA graph and replayed."""
    dev = input_ids.device
    prompt = input_ids.shape[1]
    cache = _static_cache(model, cache_len)
    token = _next_token(model, input_ids, cache, torch.arange(prompt, device=dev))
    position = torch.tensor([prompt], device=dev)
    step = lambda: _next_token(model, token, cache, position)  # noqa: E731
    if cuda_graph:
        counters = _write_counters(cache)
        step = _captured(step, dev)
        for counter, value in counters:  # the warm-up steps advanced them; the first replay writes at `prompt`
            counter.copy_(value)
    return step, token, position


@torch.no_grad()
def greedy_decode(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, cuda_graph: bool = False,
                  timing: dict | None = None) -> torch.Tensor:
    """Greedy tokens after `input_ids` ([batch, prompt]) with a static KV cache; returns [batch, prompt+new].

    cuda_graph: capture one decode step (model + argmax) and replay it; the step's inputs live in static
    buffers (token ids, cache position). `timing`, when given, receives `decode_ms` (all decode steps
    after the prefill and graph capture, CUDA events on a GPU, one synchronization at the end) and `steps`.
    """
    dev = input_ids.device
    step, token, position = decode_step(model, input_ids, input_ids.shape[1] + max_new_tokens, cuda_graph)
    generated = [token.clone()]
    start = _mark(dev)
    for _ in range(max_new_tokens - 1):
        nxt = step()
        generated.append(nxt.clone())
        token.copy_(nxt)
        position += 1
    if timing is not None:
        timing.update(decode_ms=_elapsed_ms(start, dev), steps=max_new_tokens - 1)
    return torch.cat([input_ids, *generated], 1)


@torch.no_grad()
def teacher_forced_logits(model: nn.Module, sequence: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """float32 [batch, steps, vocab]: the logits that chose each token after the prompt, with `sequence`'s own
    tokens fed back one at a time (static KV cache, no graph). Two models given the same sequence can be
    compared step by step, without one early difference changing everything after it."""
    dev = sequence.device
    cache = _static_cache(model, sequence.shape[1])
    # Fresh slices with standard strides: a compiled model (compiled_decoding.py) recompiles for other strides.
    fresh = lambda t: t.clone(memory_format=torch.contiguous_format)  # noqa: E731
    logits = [model(input_ids=fresh(sequence[:, :prompt_len]), past_key_values=cache, use_cache=True,
                    cache_position=torch.arange(prompt_len, device=dev)).logits[:, -1].float()]
    for pos in range(prompt_len, sequence.shape[1] - 1):
        logits.append(model(input_ids=fresh(sequence[:, pos:pos + 1]), past_key_values=cache, use_cache=True,
                            cache_position=torch.tensor([pos], device=dev)).logits[:, -1].float())
    return torch.stack(logits, 1)


def logit_agreement(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """Step-by-step comparison of two teacher-forced logit tensors [batch, steps, vocab].

    `argmax_agreement`: share of steps choosing the same token; `max_abs_diff`: largest logit difference;
    `typical_diff`: median over steps of each step's largest difference (the rounding level);
    `near_tie_disagreements`: share of the disagreeing steps whose reference top-2 gap is within twice the
    typical difference (flips that rounding alone explains; a real error flips clear winners too)."""
    same = reference.argmax(-1) == other.argmax(-1)
    diff = (reference - other).abs().amax(-1)
    typical = diff.flatten().median()
    top2 = reference.topk(2, dim=-1).values
    near_tie = (top2[..., 0] - top2[..., 1]) <= 2 * typical
    flips = (~same).sum()
    return dict(argmax_agreement=float(same.float().mean()), max_abs_diff=float(diff.max()),
                typical_diff=float(typical), near_tie_disagreements=float((near_tie & ~same).sum() / flips) if flips else 1.0)


def _write_counters(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(counter, saved value) of every cache layer that keeps its own write position.

    transformers' StaticLayer writes new keys / values at `cumulative_length` (a device tensor it advances in
    place), not at the `cache_position` the model is given. Warm-up and capture run the decode step several
    times, so without a reset the replays write past the end of the cache (a device-side assert in
    `index_copy_`, seen on an H100 with transformers 5.17)."""
    return [(layer.cumulative_length, layer.cumulative_length.clone()) for layer in getattr(cache, "layers", [])
            if torch.is_tensor(getattr(layer, "cumulative_length", None))]


def _captured(step, dev: torch.device):
    """A CUDA graph of `step`; warm-up on a side stream first (autotuning, lazy allocations)."""
    if dev.type != "cuda":
        raise ValueError("cuda_graph=True needs the model on a CUDA device")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # the first decode step, thrice (the caller resets the caches' write counters)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            out = step()
    except RuntimeError as err:
        raise RuntimeError(f"capturing the decode step in a CUDA graph failed ({err}); "
                           "run with cuda_graph=False") from err

    def replay():
        graph.replay()
        return out
    # The graph reads and writes what `step` refers to (the static KV cache, its write counters, the static inputs),
    # which may have no other owner (decode_step's cache): freed, their memory would be reused under the graph
    # (session 11 on an H100: cache writes past the end, a device-side assert).
    replay.captured_step = step
    return replay


def _mark(dev):
    if dev.type == "cuda":
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev
    import time
    return time.perf_counter()


def _elapsed_ms(start, dev) -> float:
    if dev.type == "cuda":
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    import time
    return (time.perf_counter() - start) * 1e3
