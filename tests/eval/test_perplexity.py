"""perplexity against exp of a float64 NLL summed token by token."""
import math

import pytest
import torch

from actsparse.eval import apply_thresholds, perplexity
from actsparse.modeling import sparsify
from tiny_models import random_ids, tiny_llama


def manual_ppl(model, batches):
    """exp(mean over every next-token prediction of -log softmax(logits)[target]), float64, by loops."""
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in batches:
            kwargs = {} if mask is None else {"attention_mask": mask}
            logits = model(ids, **kwargs).logits.double()
            valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
            for b in range(ids.shape[0]):
                for t in range(ids.shape[1] - 1):
                    if not (valid[b, t] and valid[b, t + 1]):
                        continue
                    row = logits[b, t]
                    log_z = math.log(sum(math.exp(v) for v in (row - row.max()).tolist())) + float(row.max())
                    total += log_z - float(row[ids[b, t + 1]])
                    count += 1
    return math.exp(total / count)


def test_dense_perplexity_is_token_weighted_over_batches():
    model = sparsify(tiny_llama(), "relu")
    short, long = random_ids(batch=1, seq=4, seed=3), random_ids(batch=2, seq=16, seed=4)
    expected = manual_ppl(model, [(short, None), (long, None)])
    assert perplexity(model, [short, {"input_ids": long}]) == pytest.approx(expected, rel=1e-6)
    # A per-batch mean of means would weight the 3 predictions of `short` like the 30 of `long`.
    per_batch = math.exp((math.log(manual_ppl(model, [(short, None)])) + math.log(manual_ppl(model, [(long, None)]))) / 2)
    assert abs(per_batch - expected) > 1e-3 * expected


def test_padded_positions_are_not_predicted_or_targets():
    model = sparsify(tiny_llama(), "relu")
    ids = random_ids(batch=2, seq=10)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    expected = manual_ppl(model, [(ids, mask)])
    assert perplexity(model, [{"input_ids": ids, "attention_mask": mask}]) == pytest.approx(expected, rel=1e-6)


def test_thresholded_perplexity_matches_hooks_written_out():
    model = sparsify(tiny_llama(), "relu")
    batches = [random_ids(seed=s) for s in range(2)]
    thresholds = [0.002, 0.003]
    handles = []
    for t, layer in zip(thresholds, model.model.layers):
        norms = layer.mlp.down_proj.weight.double().norm(dim=0)

        def drop(module, args, t=t, norms=norms):
            a = args[0]
            return (torch.where(a.double().abs() < t / norms, torch.zeros_like(a), a),)
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(drop))
    expected = manual_ppl(model, [(ids, None) for ids in batches])
    for h in handles:
        h.remove()
    dense = perplexity(model, batches)
    with apply_thresholds(model, thresholds):
        thresholded = perplexity(model, batches)
    assert thresholded == pytest.approx(expected, rel=1e-6)
    assert abs(thresholded - dense) > 1e-6 * dense          # the thresholds do change the model
    assert perplexity(model, batches) == dense              # and leave it as it was afterwards


def test_unconverted_model_and_plain_module():
    model = tiny_llama()
    ids = random_ids()
    assert perplexity(model, ids) == pytest.approx(manual_ppl(model, [(ids, None)]), rel=1e-6)
    assert type(model.model.layers[0].mlp).__name__ == "LlamaMLP"
