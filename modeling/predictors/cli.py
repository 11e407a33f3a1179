"""`actsparse predictors collect | train | eval [--config FILE] [key=value ...]`.

    actsparse predictors collect model=CKPT collect.data=calib.jsonl            # -> CKPT/predictor_data
    actsparse predictors collect model=CKPT collect.data=heldout.jsonl collect.out_dir=CKPT/heldout_data
    actsparse predictors train   model=CKPT train.rank=384 device=cuda          # -> CKPT/predictors
    actsparse predictors eval    model=CKPT eval.data_dir=CKPT/heldout_data eval.ppl_data=heldout.jsonl

Fields: see config.py. `eval` prints a table and writes JSON (default CKPT/predictors/eval.json).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import torch

from ..activations import SUPPORTED_ACTIVATIONS
from ..load import load_pretrained
from ..sparsify import sparse_mlps, sparsify
from .collect import collect_activations
from .config import ConfigError, PredictorsConfig, load_config
from .data import token_batches
from .evaluate import PROSPARSE_7B_PUBLISHED, perplexity_impact, score_rules_on_collection, size_report
from .metrics import layer_mean
from .predictor import ActiveRule, load_predictors
from .train import train_predictors

log = logging.getLogger("actsparse.predictors")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_model(cfg: PredictorsConfig):
    """The checkpoint, converted (`load_pretrained` reads its activation; `activation=` re-converts)."""
    model = load_pretrained(str(cfg.require_model()), dtype=cfg.dtype).to(cfg.device).eval()
    if cfg.activation:
        sparsify(model, cfg.activation, cfg.activation_threshold)
    activation = sparse_mlps(model)[0].activation
    if activation == "silu":
        raise ConfigError("activation: the checkpoint's FFNs use silu, whose x1 has no exact zeros to predict; "
                          f"set activation= one of {', '.join(a for a in SUPPORTED_ACTIVATIONS if a != 'silu')}")
    return model


def _batches(cfg: PredictorsConfig, path: str, seq_len: int, batch_size: int, max_tokens: int):
    tokenizer = None
    if not path.endswith(".pt"):
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(cfg.collect.tokenizer or str(cfg.require_model()))
    return lambda: token_batches(path, tokenizer, seq_len, batch_size, max_tokens, cfg.collect.text_field)


def run_collect(cfg: PredictorsConfig) -> dict:
    c = cfg.collect
    if not c.data:
        raise ConfigError("collect.data: not set (a .jsonl, .txt or .pt file)")
    model = load_model(cfg)
    batches = _batches(cfg, c.data, c.seq_len, c.batch_size, c.max_tokens)()
    manifest = collect_activations(model, batches, cfg.collect_dir(), c.input_location, c.flush_tokens,
                                   c.max_tokens, c.clip_percent, c.store_dtype,
                                   extra_info={"model": str(cfg.model), "data": c.data})
    print(f"collected {manifest['tokens']} tokens x {manifest['num_layers']} layers -> {cfg.collect_dir()}")
    return manifest


def run_train(cfg: PredictorsConfig) -> list:
    _, results = train_predictors(cfg.collect_dir(), cfg.predictor_dir(), cfg.train)
    for r in results:
        print(f"layer {r.layer:02d}: best epoch {r.best_epoch}/{len(r.history) - 1}  recall {r.best.recall:.4f}  "
              f"precision {r.best.precision:.4f}  predicted sparsity {r.best.predicted_sparsity:.4f}")
    print(f"predictors -> {cfg.predictor_dir()}")
    return results


def run_eval(cfg: PredictorsConfig) -> dict:
    e = cfg.eval
    if not e.data_dir:
        raise ConfigError("eval.data_dir: not set; collect a held-out set "
                          "(collect.data=HELDOUT collect.out_dir=DIR) and pass eval.data_dir=DIR")
    rule = ActiveRule(e.rule, e.threshold, e.topk_percent)
    predictors, pcfg = load_predictors(cfg.predictor_dir())
    sweep = [ActiveRule("threshold", t) for t in (e.sweep_thresholds or [])]
    per_rule = score_rules_on_collection(predictors, e.data_dir, [rule, *sweep], pcfg.label, device=cfg.device)
    per_layer = per_rule[0]
    report = {"rule": rule.describe(), "input_location": pcfg.input_location, "rank": pcfg.rank,
              "label": pcfg.label, "data_dir": e.data_dir,
              "layers": [{"layer": i, **c.summary()} for i, c in enumerate(per_layer)],
              "overall": layer_mean(per_layer),
              "size": size_report(pcfg.d_model, pcfg.d_ff, pcfg.rank, DTYPES[cfg.dtype].itemsize,
                                  (e.reference_d_model, e.reference_d_ff), e.budget_fraction),
              "sweep": [{"rule": r.describe(), **layer_mean(c)} for r, c in zip(sweep, per_rule[1:])],
              "published_reference_prosparse_7b": PROSPARSE_7B_PUBLISHED}
    if e.ppl_data:
        model = load_model(cfg)
        make = _batches(cfg, e.ppl_data, e.ppl_seq_len, e.ppl_batch_size, e.ppl_max_tokens)
        report["perplexity"] = perplexity_impact(model, predictors, pcfg.input_location, rule, make)
    out = Path(e.out_json) if e.out_json else cfg.predictor_dir() / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=_json_safe))
    print_report(report)
    print(f"JSON -> {out}")
    return report


def _json_safe(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"predictors ({report['input_location']}, rank {report['rank']}, {report['rule']})")
    for col in ("layer", "recall", "precision", "predicted sparsity", "true sparsity"):
        table.add_column(col, justify="right")
    rows = [(str(r["layer"]), r) for r in report["layers"]] + [("mean", report["overall"])]
    for name, r in rows:
        table.add_row(name, *(f"{100 * r[k]:.2f}%" for k in ("recall", "precision", "predicted_sparsity",
                                                           "true_sparsity")))
    console = Console()
    console.print(table)
    for row in report["sweep"]:
        console.print(f"  {row['rule']:>14}: recall {100 * row['recall']:.2f}%, precision "
                      f"{100 * row['precision']:.2f}%, predicted sparsity {100 * row['predicted_sparsity']:.2f}%")
    s = report["size"]
    ref_d, ref_ff = s["reference_shape"]
    console.print(f"predictor {s['predictor_bytes_per_layer']:,} B vs FFN {s['ffn_bytes_per_layer']:,} B per layer "
                  f"({100 * s['fraction']:.2f}%); at {ref_d}x{ref_ff}, r={report['rank']}: "
                  f"{ref_d}*{report['rank']} + {report['rank']}*{ref_ff} = {s['reference_predictor_params']:,} vs "
                  f"3*{ref_d}*{ref_ff} = {s['reference_ffn_params']:,} -> {100 * s['reference_fraction']:.2f}% "
                  f"({'within' if s['within_budget'] else 'OVER'} {100 * s['budget_fraction']:g}%; "
                  f"max rank {s['reference_max_rank_in_budget']})")
    ref = report["published_reference_prosparse_7b"]
    console.print(f"published ProSparse-7B (r={ref['rank']}): recall {100 * ref['recall']:.2f}% at predicted "
                  f"sparsity {100 * ref['predicted_sparsity']:.2f}%")
    if "perplexity" in report:
        p = report["perplexity"]
        console.print(f"held-out perplexity: exact {p['exact']:.4f}, predicted-only {p['predicted']:.4f} "
                      f"(x{p['ratio']:.4f}); in-model recall {100 * p['in_model_overall']['recall']:.2f}%, "
                      f"predicted sparsity {100 * p['in_model_overall']['predicted_sparsity']:.2f}%")


COMMANDS = {"collect": run_collect, "train": run_train, "eval": run_eval}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actsparse predictors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=list(COMMANDS))
    parser.add_argument("--config", help="YAML file (fields: actsparse/modeling/predictors/config.py)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.rank=256")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        COMMANDS[args.command](cfg)
    except (ConfigError, FileNotFoundError) as err:
        print(f"actsparse predictors {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
