"""Predictor-driven decode glue: the kernels' SparseFFN fed the predicted set matches the PyTorch mask path."""
import math

import torch

from actsparse.eval.predictor_decode import attach_kernel_ffns, compare_paths, decode_tokens_per_s
from actsparse.modeling import sparsify
from actsparse.modeling.predictors import ActiveRule, LowRankPredictor, attach_predictors, predicted_mlps
from tiny_models import random_ids, tiny_llama


def tiny_with_predictors():
    model = sparsify(tiny_llama(), "relu")
    torch.manual_seed(2)
    predictors = [LowRankPredictor(32, 48, 8) for _ in model.model.layers]
    return model, predictors


def test_kernel_path_equals_mask_path():
    rule = ActiveRule("topk", topk_percent=30)
    model, predictors = tiny_with_predictors()
    attach_predictors(model, predictors, "pre_norm", rule)
    ids = random_ids(batch=1, seq=10)
    with torch.no_grad():
        masked = model(ids).logits
        attach_kernel_ffns(model, backend="torch", calibration_ids=ids)
        assert all(m.sparse_ffn is not None for m in predicted_mlps(model))
        via_kernels = model(ids).logits
    torch.testing.assert_close(via_kernels, masked, rtol=1e-5, atol=1e-5)


def test_compare_paths_reports_each_path():
    rule = ActiveRule("threshold", threshold=0.5)
    model, predictors = tiny_with_predictors()
    batches = [random_ids(batch=2, seq=12, seed=s) for s in range(2)]
    rows = compare_paths(model, predictors, "pre_norm", rule, batches, batches[0][:1, :6], new_tokens=2,
                         backend="torch")
    assert [r["path"] for r in rows] == ["exact", "predicted-mask", "predicted-kernels"]
    assert all(math.isfinite(r["perplexity"]) and r["tokens_per_s"] > 0 for r in rows)
    assert abs(rows[1]["perplexity"] - rows[2]["perplexity"]) < 1e-4 * rows[1]["perplexity"]
    assert not predicted_mlps(model)                       # left as it was found
    assert decode_tokens_per_s(model, batches[0], 3, warmup=0) > 0
