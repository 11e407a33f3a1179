"""The one-token decode attention (triton_decode_attention.py) under TRITON_INTERPRET=1: the op against float64 (RoPE,
cache write, softmax over 0..pos, GQA, bool / additive masks) with the output and the cache beyond pos poisoned, the
positions whole or split (triton_decode_attention_split.py: uneven and empty splits, the state left reset between
calls, the host rule); tiny LLaMA / Qwen2 models greedy-decoded with and without use_decode_attention (and fuse_qkv
before or after, and split): same tokens, close logits and caches, the prefill on the original path; what falls back,
said once."""
import copy
import logging

import pytest
import torch
from decode_attention_reference import case, poisoned_split_state, reference, tickets_zero
from tiny_models import TINY, random_ids, tiny_llama, tiny_mistral, tiny_qwen2
from transformers import MistralConfig, MistralForCausalLM, StaticCache
from triton_interpreter import require_triton_interpreter

require_triton_interpreter()

from actsparse.kernels import dispatch  # noqa: E402
from actsparse.kernels import triton_decode_attention as tda  # noqa: E402
from actsparse.kernels import triton_decode_attention_split as tdas  # noqa: E402
from actsparse.kernels.fused_qkv import fuse_qkv  # noqa: E402
from actsparse.kernels.sparse_decoding import greedy_decode  # noqa: E402

GQA = dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=16)   # 2 kv heads x 3 groups


def _masks(batch, max_len, kind):
    """None, or a [B, 1, 1, max_len] mask hiding positions 1 and 3 of the last sequence (padding), as HF builds them
    for a static cache (sdpa: bool; eager: additive, finfo.min where hidden)."""
    if kind is None:
        return None
    keep = torch.ones(batch, 1, 1, max_len, dtype=torch.bool)
    keep[-1, ..., [1, 3]] = False
    return keep if kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)


def _split_case(pos, splits, mask_kind, **shape):
    """One call at `pos`, the positions cut in `splits` ranges (a state of just that size), against float64."""
    q, k, v, cos, sin, k_cache, v_cache, p = case(pos=pos, per_batch_rope=pos != 6, **shape)  # cos [1, D] at pos 6
    mask = _masks(q.shape[0], k_cache.shape[2], mask_kind)
    ref, k_ref, v_ref = reference(q, k, v, cos, sin, k_cache, v_cache, pos, mask, scaling=0.3)
    batch, n_kv, _, head_dim = k_cache.shape
    state = poisoned_split_state(q.shape[1] // n_kv, head_dim, "cpu", batch * n_kv * splits)
    out = torch.full((batch, q.shape[1] * head_dim), float("nan"))
    assert tda.decode_attention_unusable(q, k, v, cos, k_cache, v_cache, mask) is None
    assert tda.decode_attention(q, k, v, cos, sin, k_cache, v_cache, p, mask, 0.3, state, out, splits) is out
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # The write at pos (k rotated), nothing else changed, nothing beyond pos touched; pos advanced, tickets zeroed.
    torch.testing.assert_close(k_cache[:, :, :pos + 1].double(), k_ref[:, :, :pos + 1], rtol=1e-6, atol=1e-6)
    assert torch.equal(v_cache[:, :, :pos + 1].double(), v_ref[:, :, :pos + 1])
    assert torch.isnan(k_cache[:, :, pos + 1:]).all() and torch.isnan(v_cache[:, :, pos + 1:]).all()
    assert int(p) == pos + 1 and tickets_zero(state)


# Splits of the n = pos + 1 positions (max_len 11; the last split ends with pos, the new token): pos 0, every split
# but the last empty; pos 1 at 3 splits, [- | 0 | pos]: the last split has no cached position; pos 6 at 5, uneven
# [0 | 1 | 2 3 | 4 | 5 pos] (the bool / additive masks hide 1 and 3: one split wholly masked); pos 10, the cache's end.
@pytest.mark.parametrize("splits", [1, 2, 3, 5])
@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
@pytest.mark.parametrize("pos", [0, 1, 6, 10])
def test_op_matches_float64(pos, mask_kind, splits):
    _split_case(pos, splits, mask_kind)


@pytest.mark.parametrize("splits", [1, 3])
def test_split_gqa_groups_up_to_the_block(splits):
    """4 q heads per kv head (BLOCK_G 4, no padded rows), 3 kv heads, batch 1, head_dim 32."""
    _split_case(7, splits, "bool", batch=1, n_kv=3, groups=4, head_dim=32, max_len=13)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_mha_batch_one_half_precision(dtype, tol, splits):
    """One q head per kv head (MHA, as LLaMA-2-7B), batch 1, fp16 / bf16, whole or split in 3."""
    q, k, v, cos, sin, k_cache, v_cache, p = case(batch=1, n_kv=3, groups=1, head_dim=32, max_len=9, pos=7, dtype=dtype)
    ref, _, _ = reference(q, k, v, cos, sin, k_cache, v_cache, 7)
    state = poisoned_split_state(1, 32, "cpu")
    out = tda.decode_attention(q, k, v, cos, sin, k_cache, v_cache, p, None, 32 ** -0.5, state, splits=splits)
    assert out.shape == (1, 3 * 32) and out.dtype == dtype and torch.isfinite(out).all()
    assert float((out.double() - ref).norm() / ref.norm()) < tol
    assert int(p) == 8 and tickets_zero(state)


@pytest.mark.parametrize("splits", [1, 3])
def test_past_the_end_writes_nothing_and_gives_nan(splits):
    """pos == max_len (HF: a device assert): no write, a NaN output, pos still advanced (as the whole kernel)."""
    q, k, v, cos, sin, k_cache, v_cache, p = case(pos=11, max_len=11)
    before = k_cache.clone()
    out = tda.decode_attention(q, k, v, cos, sin, k_cache, v_cache, p, None, 0.3, splits=splits)
    assert torch.isnan(out).all() and torch.equal(k_cache, before) and int(p) == 12


def _rule_splits_on_cpu(monkeypatch, n_sms: int) -> list:
    """Make the host rule split the tests' small caches (SMs as given, 2 positions a split); returns the list of
    the splits the calls took."""
    monkeypatch.setattr(tdas, "sm_count", lambda device: n_sms)
    monkeypatch.setattr(tdas, "MIN_SPLIT_POSITIONS", 2)
    taken, real = [], tda.pick_splits

    def pick_splits(*args):
        picked = real(*args)
        taken.append(picked[0])
        return picked
    monkeypatch.setattr(tda, "pick_splits", pick_splits)
    return taken


def test_split_state_is_left_reset_for_the_next_call(monkeypatch):
    """A module's state (split_state, partials poisoned) serves consecutive op calls, the write position advanced by
    the kernel in between: each right, tickets back at 0. The rule picks 3 splits (12 SMs, 2 x 2 heads)."""
    taken = _rule_splits_on_cpu(monkeypatch, n_sms=12)
    state = poisoned_split_state(3, 16, "cpu")
    q, k, v, cos, sin, k_cache, v_cache, p = case(pos=4)
    g = torch.Generator().manual_seed(1)
    for pos in (4, 5, 6):
        for t in (q, k, v):
            t.copy_(torch.randn(t.shape, generator=g))
        ref, k_ref, _ = reference(q, k, v, cos, sin, k_cache, v_cache, pos)
        out = tda.decode_attention_op(q, k, v, cos, sin, k_cache, v_cache, p, None, 16 ** -0.5, state)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(k_cache[:, :, pos].double(), k_ref[:, :, pos], rtol=1e-6, atol=1e-6)
        assert int(p) == pos + 1 and tickets_zero(state) and torch.isnan(k_cache[:, :, pos + 1:]).all()
    assert taken == [3, 3, 3]


def test_split_rule_and_state_sizes(monkeypatch):
    """The host rule at the GPU shapes (132 SMs, max_len 168): 7B 4 splits, 8 kv heads 5; none where the heads fill
    the SMs or the cache is short. A module's state holds the rule's pick; a smaller one bounds it; a too small one
    for given splits: an error. The state is int32 (a module's .half() leaves it alone). split=False: 1 split."""
    assert tdas.split_count(1, 32, 168, 132) == 4 and tdas.split_count(1, 8, 168, 132) == 5
    assert tdas.split_count(8, 32, 168, 132) == 1 and tdas.split_count(1, 32, 40, 132) == 1
    assert tdas.split_count(1, 8, 4096, 132) == tdas.MAX_SPLITS
    monkeypatch.setattr(tdas, "sm_count", lambda device: 132)
    cpu = torch.device("cpu")
    for groups, n_kv, splits in ((1, 32, 4), (4, 8, 5)):
        state = tdas.split_state(groups, 128, cpu)
        assert tdas.pick_splits(state, 1, n_kv, groups, 128, 168, cpu, None)[0] == splits
        small = state[:tdas.STATE_TICKETS + 3 * tdas.partial_floats(n_kv, groups, 128)]
        assert tdas.pick_splits(small, 1, n_kv, groups, 128, 168, cpu, None)[0] == 3
        assert tdas.pick_splits(state[:1], 1, n_kv, groups, 128, 168, cpu, None)[0] == 1
        with pytest.raises(ValueError, match="3 splits"):
            tdas.pick_splits(state[:1], 1, n_kv, groups, 128, 168, cpu, 3)
    module = tda.DecodeAttention(tiny_llama(**GQA).model.layers[0].self_attn).half()
    assert module.state.dtype == torch.int32 and tdas.splits_fitting(module.state, 2, 3, 16) >= tdas.MAX_SPLITS
    whole = tda.DecodeAttention(tiny_llama(**GQA).model.layers[0].self_attn, split=False)
    assert tdas.pick_splits(whole.state, 1, 32, 1, 128, 168, cpu, None)[0] == 1


def test_unusable_shapes_take_torch_ops_said_once(caplog):
    """head_dim 12 (not a power of two): the op runs torch ops (same results), said once."""
    dispatch._warned.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            q, k, v, cos, sin, k_cache, v_cache, p = case(head_dim=12, pos=4)
            ref, k_ref, _ = reference(q, k, v, cos, sin, k_cache, v_cache, 4)
            out = tda.decode_attention_op(q, k, v, cos, sin, k_cache, v_cache, p, None, 12 ** -0.5,
                                          tdas.split_state(3, 12, "cpu"))
            torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(k_cache[:, :, 4].double(), k_ref[:, :, 4], rtol=1e-6, atol=1e-6)
            assert int(p) == 5 and torch.isnan(k_cache[:, :, 5:]).all()
    assert sum("head_dim 12" in r.message for r in caplog.records) == 1


def _kernel_calls(monkeypatch) -> list:
    calls = []
    real = tda.decode_attention
    monkeypatch.setattr(tda, "decode_attention", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    return calls


def _decode(model, ids, steps, **forward):
    """Prefill `ids` and `steps` greedy tokens by hand: (per-step logits, the static cache)."""
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + steps + 2)
    logits, tokens = [], ids
    with torch.no_grad():
        for _ in range(steps):
            out = model(input_ids=tokens, cache=cache, use_cache=True, **forward).logits[:, -1]
            logits.append(out)
            tokens = out.argmax(-1, keepdim=True)
            if "attention_mask" in forward:
                am = forward["attention_mask"]
                forward["attention_mask"] = torch.cat([am, am.new_ones(am.shape[0], 1)], 1)
    return torch.stack(logits, 1), cache


@pytest.mark.parametrize("build,fuse", [(tiny_llama, None), (tiny_llama, "before"), (tiny_llama, "after"),
                                        (tiny_qwen2, "after")], ids=["llama", "llama-fused-before", "llama-fused-after",
                                                                     "qwen2-fused-after"])
def test_model_decodes_like_the_original(build, fuse, monkeypatch):
    ref = tiny_llama(**GQA) if build is tiny_llama else build()
    model = copy.deepcopy(ref)
    if fuse == "before":
        fuse_qkv(model)
    assert tda.use_decode_attention(model) == ref.config.num_hidden_layers
    if fuse == "after":
        assert fuse_qkv(model) == ref.config.num_hidden_layers
    calls = _kernel_calls(monkeypatch)
    ids = random_ids(batch=2, seq=5)
    assert torch.equal(greedy_decode(model, ids, 4), greedy_decode(ref, ids, 4))
    # The prefill took the original path: only the 3 one-token steps of each layer went through the kernel.
    assert len(calls) == 3 * ref.config.num_hidden_layers
    logits, cache = _decode(model, ids, 3)
    ref_logits, ref_cache = _decode(ref, ids, 3)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    for layer, ref_layer in zip(cache.layers, ref_cache.layers):   # same write counters, same keys and values
        assert int(layer.cumulative_length) == int(ref_layer.cumulative_length) == 5 + 2
        torch.testing.assert_close(layer.keys, ref_layer.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.values, ref_layer.values, rtol=1e-5, atol=1e-5)


def test_model_decodes_split_like_the_original(monkeypatch):
    """The rule splitting each layer's positions in 4 (16 SMs, 2 positions a split), on each module's own state: the
    original model's logits, write positions and caches, the tickets back at 0."""
    taken = _rule_splits_on_cpu(monkeypatch, n_sms=16)
    ref = tiny_llama(**GQA)
    model = copy.deepcopy(ref)
    tda.use_decode_attention(model)
    ids = random_ids(batch=2, seq=5)
    logits, cache = _decode(model, ids, 3)
    ref_logits, ref_cache = _decode(ref, ids, 3)
    assert taken and set(taken) == {4}       # min(MAX_SPLITS 8, max_len 10 // 2, 16 SMs // 4 heads)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    for layer, ref_layer in zip(cache.layers, ref_cache.layers):
        assert int(layer.cumulative_length) == int(ref_layer.cumulative_length) == 5 + 2
        torch.testing.assert_close(layer.keys, ref_layer.keys, rtol=1e-5, atol=1e-5)
    assert all(tickets_zero(m.state) for m in model.modules() if isinstance(m, tda.DecodeAttention))


def test_padding_mask_and_eager_masks_are_applied(monkeypatch):
    """A left-padded batch (its 2D attention mask) on sdpa (bool mask) and eager (additive) attention."""
    ids = random_ids(batch=2, seq=6)
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    attention_mask[1, :2] = 0
    for implementation in ("sdpa", "eager"):
        ref = tiny_llama(attn_implementation=implementation, **GQA)
        model = copy.deepcopy(ref)
        tda.use_decode_attention(model)
        calls = _kernel_calls(monkeypatch)
        logits, _ = _decode(model, ids, 4, attention_mask=attention_mask.clone())
        ref_logits, _ = _decode(ref, ids, 4, attention_mask=attention_mask.clone())
        assert len(calls) == 3 * ref.config.num_hidden_layers
        torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


def test_sliding_window_cache_falls_back_said_once(caplog, monkeypatch):
    """Mistral with a sliding window: its StaticCache layers are sliding-window ones (a rolling buffer): the original
    attention, said once. Without a window the kernel serves Mistral too."""
    dispatch._warned.clear()
    ids = random_ids(batch=1, seq=4)
    ref = tiny_mistral()
    model = copy.deepcopy(ref)
    tda.use_decode_attention(model)
    calls = _kernel_calls(monkeypatch)
    with caplog.at_level(logging.WARNING):
        assert torch.equal(greedy_decode(model, ids, 4), greedy_decode(ref, ids, 4))
    assert not calls
    assert sum("StaticSlidingWindowLayer" in r.message for r in caplog.records) == 1
    torch.manual_seed(0)
    ref = MistralForCausalLM(MistralConfig(**TINY, sliding_window=None)).eval()
    model = copy.deepcopy(ref)
    tda.use_decode_attention(model)
    assert torch.equal(greedy_decode(model, ids, 4), greedy_decode(ref, ids, 4))
    assert len(calls) == 3 * ref.config.num_hidden_layers


def test_compiled_decode_keeps_the_op_whole():
    """torch.compile traces a decode step with no graph break, the op in the graph (opaque); a compiled model (the op's
    cache and counter mutations functionalized, aot_eager) decodes the original's tokens."""
    from actsparse.kernels.compiled_decoding import compile_model
    ref = tiny_llama(**GQA)
    model = copy.deepcopy(ref)
    tda.use_decode_attention(model)
    ids = random_ids(batch=1, seq=4)
    cache = StaticCache(config=model.config, max_cache_len=8)
    with torch.no_grad():
        token = model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        explained = torch._dynamo.explain(model.forward)(input_ids=token, cache=cache, use_cache=True)
    assert explained.graph_break_count == 0
    ops = [n.target for g in explained.graphs for n in g.graph.nodes if "decode_attention" in str(n.target)]
    assert len(ops) == model.config.num_hidden_layers
    torch._dynamo.reset()
    compile_model(model, backend="aot_eager")
    assert torch.equal(greedy_decode(model, ids, 4), greedy_decode(ref, ids, 4))


def test_use_decode_attention_swaps_once_and_needs_attention():
    model = tiny_llama()
    assert tda.use_decode_attention(model) == 2
    assert tda.use_decode_attention(model) == 2     # already wrapped: counted, not wrapped again
    assert all(isinstance(layer.self_attn, tda.DecodeAttention) for layer in model.model.layers)
    wrappers = [m for m in model.modules() if isinstance(m, tda.DecodeAttention)]
    assert len(wrappers) == 2 and not any(isinstance(m.attn, tda.DecodeAttention) for m in wrappers)
    with pytest.raises(ValueError, match="no attention"):
        tda.use_decode_attention(torch.nn.Sequential(torch.nn.Linear(4, 4)))


@pytest.mark.parametrize("name", tda.CACHE_KWARGS)
def test_the_cache_reaches_the_original_attention_under_its_own_name(name):
    """transformers 5.24 passes the cache as `cache`, 5.17 (the GPU machines) as `past_key_values`, 4.x as
    `past_key_value`: a prefill through DecodeAttention hands it to the wrapped forward under the name that forward
    takes, whichever name the decoder layer used."""
    received = {}
    scope = {"received": received}
    exec(f"def forward(self, hidden_states, position_embeddings=None, attention_mask=None, {name}=None, **kw):\n"
         f"    received.update(cache={name}, extra=kw)\n"
         f"    return hidden_states, None", scope)

    class Attention(torch.nn.Module):
        layer_idx, config, head_dim = 0, None, 4
        forward = scope["forward"]

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    wrapped, cache = tda.DecodeAttention(Attention()), object()
    for given in tda.CACHE_KWARGS:
        received.clear()
        wrapped(torch.zeros(1, 3, 4), None, None, **{given: cache})
        assert received == dict(cache=cache, extra={})
