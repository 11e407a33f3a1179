"""collect_activations: shards hold the predictor input and x1 != 0 as computed by hand from the weights."""
import math

import pytest
import torch
import torch.nn.functional as F

from actsparse.modeling import sparsify
from actsparse.modeling.predictors import collect_activations, load_layer, read_manifest
from actsparse.modeling.predictors.collect import clip_labels
from tiny_models import random_ids, tiny_llama


def captured_ffn_inputs(model, batches):
    """Per layer, the FFN input (post-norm) of every token, captured with a plain forward hook."""
    seen = [[] for _ in model.model.layers]
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: seen[i].append(a[0].reshape(-1, a[0].shape[-1])))
             for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        for ids in batches:
            model(ids)
    for h in hooks:
        h.remove()
    return [torch.cat(s) for s in seen]


def x1_by_hand(layer, x):
    """relu(x W_gate^T) * (x W_up^T), the ReLU-converted LLaMA FFN written out."""
    return F.relu(x @ layer.mlp.gate_proj.weight.T) * (x @ layer.mlp.up_proj.weight.T)


@pytest.mark.parametrize("location", ["pre_norm", "mlp_input"])
def test_shards_match_hand_computed_masks(tmp_path, location):
    model = sparsify(tiny_llama(), "relu")
    batches = [random_ids(batch=2, seq=12, seed=s) for s in range(3)]
    manifest = collect_activations(model, batches, tmp_path, location, flush_tokens=20, store_dtype="float32",
                                   progress=False)
    assert manifest["tokens"] == 72 and manifest["num_layers"] == 2
    assert manifest["d_model"] == 32 and manifest["d_ff"] == 48 and manifest["input_location"] == location
    assert len(manifest["layers"][0]["shards"]) == 3          # flushed after each 24-token batch (>= 20)
    assert read_manifest(tmp_path) == manifest
    ffn_inputs = captured_ffn_inputs(model, batches)
    for i, layer in enumerate(model.model.layers):
        x, active = load_layer(tmp_path, i)
        expected = x1_by_hand(layer, ffn_inputs[i]) != 0
        assert active.dtype == torch.bool and torch.equal(active, expected)
        assert 0.2 < 1 - active.float().mean() < 0.8
        if location == "mlp_input":
            torch.testing.assert_close(x, ffn_inputs[i])
        else:   # the stored residual, normalized, is what the FFN received
            torch.testing.assert_close(layer.post_attention_layernorm(x), ffn_inputs[i])


def test_padding_excluded_and_token_cap(tmp_path):
    model = sparsify(tiny_llama(), "relu")
    ids = random_ids(batch=2, seq=10)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0                                           # 3 padding tokens
    manifest = collect_activations(model, [{"input_ids": ids, "attention_mask": mask}] * 3, tmp_path,
                                   max_tokens=40, flush_tokens=1000, progress=False)
    assert manifest["tokens"] == 40                           # 17 + 17 + first 6 of the third batch
    x, active = load_layer(tmp_path, 1)
    assert x.shape == (40, 32) and x.dtype == torch.float16 and active.shape == (40, 48)


def test_clip_labels_brute_force():
    g = torch.Generator().manual_seed(0)
    x1 = torch.relu(torch.randn(5, 20, generator=g))
    clip = clip_labels(x1, 15.0)
    k = math.ceil(0.15 * 20)
    for t in range(5):
        order = sorted(range(20), key=lambda j: -abs(float(x1[t, j])))
        expected = {j for j in order[:k] if x1[t, j] != 0}
        assert {j for j in range(20) if clip[t, j]} == expected


def test_unconverted_model_rejected(tmp_path):
    with pytest.raises(ValueError, match="sparsify"):
        collect_activations(tiny_llama(), [random_ids()], tmp_path, progress=False)


def test_recipe_heldout_batches_feed_collect(tmp_path):
    """The recipes' batch dicts ({"input_ids": [B, T]}) go straight into collect_activations."""
    np = pytest.importorskip("numpy")
    from actsparse.recipes.data import PackedSequences, heldout_batches
    rows = np.random.default_rng(0).integers(0, 97, size=(5, 12)).astype(np.int32)
    dataset = PackedSequences(rows, np.zeros(5, dtype=np.int64), ["calib"])
    manifest = collect_activations(sparsify(tiny_llama(), "relu"), heldout_batches(dataset, batch_size=2), tmp_path,
                                   progress=False)
    assert manifest["tokens"] == 60


def test_token_batches_from_text_and_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    from actsparse.modeling.predictors.data import token_batches

    class Words:   # minimal tokenizer: "wN" -> N, EOS 0
        eos_token_id = 0

        def __call__(self, text):
            return {"input_ids": [int(w[1:]) for w in text.split()]}

    (tmp_path / "d.txt").write_text("w1 w2 w3\n\nw4 w5\n")
    pq.write_table(pa.table({"input_ids": [[1, 2, 3], [4, 5]]}), tmp_path / "d.tokens.parquet")
    for name in ("d.txt", "d.tokens.parquet"):
        batches = list(token_batches(tmp_path / name, Words(), seq_len=3, batch_size=2))
        # stream 1 2 3 EOS 4 5 EOS -> two full windows; the 1-token tail predicts nothing and is dropped
        assert [b.tolist() for b in batches] == [[[1, 2, 3], [0, 4, 5]]]
