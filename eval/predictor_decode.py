"""Predictor-driven decoding: tokens/s and perplexity of the exact path and the predicted-neuron paths.

Paths (rows of the report):
- `exact`: the converted model as it is, every neuron computed, no predictor.
- `predicted-mask`: each FFN runs its predictor and masks x1 in PyTorch (`PredictedSparseMLP`, the reference:
  quality of the prediction, but every neuron is still computed, so it is never faster than `exact`).
- `predicted-kernels`: each FFN runs its predictor and passes the active set to the kernels' `SparseFFN`
  (`ffn(x, active=...)`): gate, up and down rows of unpredicted neurons are skipped. At one token under a
  threshold rule the predictor itself goes to the kernels (`LowRankLogits`), which build the neuron list while
  computing its logits. Backend `triton` on a GPU; backend `torch` runs the same arithmetic anywhere (a
  correctness check, not a speed figure).
Tokens/s: batch 1, greedy decoding of `new_tokens` tokens after a `prompt_len`-token prompt with the HF KV
cache (`generate`), host clock around the whole call after one warm-up call, CUDA synchronized. It includes
the prefill and the decode loop's launch overhead, which the paths share (PAPERS.md (h): a 2x end-to-end
also needs CUDA graphs / a static cache). Perplexity: `actsparse.eval.perplexity` on held-out batches.

    python -m actsparse.eval.predictor_decode --model CKPT --ppl-data heldout.jsonl --backend triton
(run from outside the repo root; predictors default to CKPT/predictors).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn

from actsparse.modeling import load_pretrained
from actsparse.modeling.predictors import (ActiveRule, attach_predictors, detach_predictors, load_predictors,
                                           predicted_mlps)
from actsparse.modeling.predictors.data import token_batches

from .perplexity import perplexity

log = logging.getLogger(__name__)
PATHS = ("exact", "predicted-mask", "predicted-kernels")


def _sparse_ffn_class():
    try:
        from actsparse.kernels import SparseFFN
    except ImportError as err:
        raise RuntimeError("the predicted-kernels path needs actsparse.kernels.SparseFFN (kernels/), which did not "
                           f"import: {err}; run the other paths with --paths exact predicted-mask") from err
    return SparseFFN


@torch.no_grad()
def attach_kernel_ffns(model: nn.Module, backend: str = "triton", calibration_ids: torch.Tensor | None = None
                       ) -> nn.Module:
    """Give every `PredictedSparseMLP` (attach_predictors first) a `SparseFFN` fed by its predicted set.

    With `calibration_ids`, each SparseFFN is calibrated on the FFN inputs of that forward (its dispatcher's
    per-neuron activation probabilities); without, the kernels warn once that they are uncalibrated."""
    mlps = predicted_mlps(model)
    if not mlps:
        raise ValueError("attach_kernel_ffns: no PredictedSparseMLP; call attach_predictors(model, ...) first")
    SparseFFN = _sparse_ffn_class()
    ffn_inputs = {}
    if calibration_ids is not None:
        hooks = [m.register_forward_pre_hook(lambda mod, a, i=i: ffn_inputs.setdefault(i, a[0]))
                 for i, m in enumerate(mlps)]
        model(calibration_ids.to(next(model.parameters()).device))
        for h in hooks:
            h.remove()
    for i, mlp in enumerate(mlps):
        ffn = SparseFFN.from_mlp(mlp, mlp.activation, mlp.threshold, backend=backend)
        if i in ffn_inputs:
            ffn.calibrate(ffn_inputs[i].reshape(-1, ffn_inputs[i].shape[-1]))
        mlp.sparse_ffn = ffn
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode_tokens_per_s(model: nn.Module, prompt_ids: torch.Tensor, new_tokens: int, warmup: int = 1) -> float:
    """Generated tokens per second, batch 1, greedy, KV cache; timed after `warmup` untimed calls."""
    device = next(model.parameters()).device
    prompt_ids = prompt_ids[:1].to(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                  pad_token_id=0)
    for _ in range(warmup):
        model.generate(prompt_ids, **kwargs)
    _sync(device)
    start = time.perf_counter()
    out = model.generate(prompt_ids, **kwargs)
    _sync(device)
    generated = out.shape[1] - prompt_ids.shape[1]
    return generated / (time.perf_counter() - start)


def compare_paths(model: nn.Module, predictors: list, input_location: str, rule: ActiveRule, ppl_batches: list,
                  prompt_ids: torch.Tensor, new_tokens: int, backend: str = "triton", paths=PATHS) -> list[dict]:
    """One row per path: tokens/s and held-out perplexity, same model, data and prompt."""
    rows = []
    for path in paths:
        if path not in PATHS:
            raise ValueError(f"path {path!r}: choose from {', '.join(PATHS)}")
        detach_predictors(model)
        if path != "exact":
            attach_predictors(model, predictors, input_location, rule)
        if path == "predicted-kernels":
            attach_kernel_ffns(model, backend, calibration_ids=prompt_ids[:1])
        rows.append({"path": path, "backend": backend if path == "predicted-kernels" else "torch",
                     "rule": None if path == "exact" else rule.describe(),
                     "perplexity": perplexity(model, ppl_batches),
                     "tokens_per_s": decode_tokens_per_s(model, prompt_ids, new_tokens)})
    detach_predictors(model)
    return rows


def _parse(argv):
    p = argparse.ArgumentParser(prog="predictor_decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder (load_pretrained)")
    p.add_argument("--predictors", help="default: MODEL/predictors")
    p.add_argument("--ppl-data", required=True, help=".jsonl / .txt (with the model's tokenizer) or .pt ids")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--ppl-max-tokens", type=int, default=32768)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rule", choices=("threshold", "topk"), default="threshold")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--topk-percent", type=float, default=20.0)
    p.add_argument("--backend", choices=("triton", "torch"), default="triton")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="JSON file (default: PREDICTORS/decode.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model = load_pretrained(args.model, dtype=args.dtype).to(args.device).eval()
    pred_dir = Path(args.predictors or Path(args.model) / "predictors")
    predictors, pcfg = load_predictors(pred_dir)
    tokenizer = None
    if not args.ppl_data.endswith(".pt"):
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    batches = list(token_batches(args.ppl_data, tokenizer, args.seq_len, 1, args.ppl_max_tokens))
    prompt_ids = batches[0][:, : args.prompt_len]
    rule = ActiveRule(args.rule, args.threshold, args.topk_percent)
    rows = compare_paths(model, predictors, pcfg.input_location, rule, batches, prompt_ids, args.new_tokens,
                         args.backend, args.paths)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report = {"model": args.model, "predictors": str(pred_dir), "device": device_name, "dtype": args.dtype,
              "prompt_len": prompt_ids.shape[1], "new_tokens": args.new_tokens, "rows": rows}
    out = Path(args.out) if args.out else pred_dir / "decode.json"
    out.write_text(json.dumps(report, indent=2))
    _print(report)
    print(f"JSON -> {out}")
    return 0


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"predictor decode on {report['device']} ({report['dtype']}, batch 1, "
                        f"{report['new_tokens']} new tokens)")
    for col in ("path", "backend", "rule", "tokens/s", "perplexity"):
        table.add_column(col, justify="right")
    for r in report["rows"]:
        table.add_row(r["path"], r["backend"], r["rule"] or "-", f"{r['tokens_per_s']:.1f}", f"{r['perplexity']:.4f}")
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
