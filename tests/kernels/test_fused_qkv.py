"""fuse_qkv: one q/k/v product per attention block gives the unfused model's logits and greedy tokens (float64),
on LLaMA (GQA), Mistral and Qwen2 (q/k/v bias); k / v on another input compute their own product."""
import copy

import pytest
import torch

from actsparse.kernels.fused_qkv import FusedProjection, fuse_qkv
from actsparse.kernels.sparse_decoding import greedy_decode
from tiny_models import random_ids, tiny_llama, tiny_mistral, tiny_qwen2


@pytest.mark.parametrize("build", [tiny_llama, tiny_mistral, tiny_qwen2], ids=["llama", "mistral", "qwen2"])
def test_fused_model_matches_unfused(build):
    ref = build(dtype=torch.float64)
    fused = copy.deepcopy(ref)
    assert fuse_qkv(fused) == ref.config.num_hidden_layers
    ids = random_ids(batch=2, seq=6)
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, ref(ids).logits, rtol=0, atol=1e-12)
    assert torch.equal(greedy_decode(fused, ids, 4), greedy_decode(ref, ids, 4))
    # One fused weight per block in the state dict, in place of three.
    keys = fused.state_dict().keys()
    assert not any(k.endswith(("k_proj.weight", "v_proj.weight")) for k in keys)
    assert sum(k.endswith("q_proj.weight") for k in keys) == ref.config.num_hidden_layers
    # After a forward no block keeps its product (v_proj dropped it).
    assert all(m.last.value is None for m in fused.modules() if isinstance(m, FusedProjection) and m.owner is m)


def test_k_and_v_on_another_input_compute_their_own_product():
    ref = tiny_qwen2(dtype=torch.float64)
    attn_ref = ref.model.layers[0].self_attn
    fused = copy.deepcopy(ref)
    fuse_qkv(fused)
    attn = fused.model.layers[0].self_attn
    assert isinstance(attn.k_proj, FusedProjection)
    x, other = torch.randn(2, ref.config.hidden_size, dtype=torch.float64).unbind(0)
    with torch.no_grad():
        attn.q_proj(x)                       # keeps x's product
        for name in ("k_proj", "v_proj"):    # `other` is not that input: its own product
            torch.testing.assert_close(getattr(attn, name)(other), getattr(attn_ref, name)(other), rtol=0, atol=1e-12)
            torch.testing.assert_close(getattr(attn, name)(x), getattr(attn_ref, name)(x), rtol=0, atol=1e-12)


def test_compiled_forward_has_one_product_per_block():
    model = tiny_llama(num_hidden_layers=2)
    fuse_qkv(model)
    graphs = torch._dynamo.explain(model.forward)(input_ids=random_ids(batch=1, seq=4))
    assert graphs.graph_break_count == 0
    linears = sum(1 for g in graphs.graphs for n in g.graph.nodes if "linear" in str(n.target))
    assert linears == 2 * 5 + 1   # per layer: qkv, o, gate, up, down; and the LM head


def test_model_without_attention_projections_is_an_error():
    with pytest.raises(ValueError, match="no attention"):
        fuse_qkv(torch.nn.Sequential(torch.nn.Linear(4, 4)))
