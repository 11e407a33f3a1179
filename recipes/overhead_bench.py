"""Step-time overhead of the L1 term and the sparsity counters, side by side in one training process.

    cd /tmp && python -m actsparse.recipes.overhead_bench CONFIG [key=value ...] [--rounds 6] [--block 10]
                                                          [--warmup 20] [--lam 0.05] [--out overhead.json]

One process, one DeepSpeed engine, one data stream, built as `continue_pretrain` builds them from the
recipe. After `--warmup` steps, blocks of `--block` optimizer steps rotate over four modes, `--rounds` times:
`off` (plain LM loss), `counters` (zero counts of x1 only), `l1` (the L1 term only, lambda `--lam`), `both`
(what a ProSparse run does). The device is synchronized at each block's ends. Per mode: the median over its
blocks of the step time, and its overhead over `off` as the median of each round's ratio to that round's
`off` block, so slow drift (clocks, allocator) cancels; the spread of those ratios is the noise.
Separate runs (run_summary.py) compare process against process and inherit their start-up differences.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from actsparse.modeling import SparsityStats, disable_l1, enable_l1

from .config import load_recipe
from .continue_pretrain import build_engine, finish_rank, process_group, setup_logging, train_step
from .data import TrainBatches, build_datasets
from .deepspeed_config import derive_deepspeed_config
from .model_loading import load_model

MODES = ("off", "counters", "l1", "both")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="overhead_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="recipe YAML path or shipped config name")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, as for `actsparse train`")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--block", type=int, default=10, help="optimizer steps per timed block")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (compilation, allocator growth)")
    p.add_argument("--lam", type=float, default=0.05, help="L1 lambda in the l1 and both modes")
    p.add_argument("--out", help="write the result as JSON here")
    return p.parse_args(argv)


def set_mode(model, stats: SparsityStats, mode: str, normalization: str) -> bool:
    """Switch the L1 term and the counters for `mode`; returns whether the step adds the L1 term."""
    use_l1 = mode in ("l1", "both")
    if use_l1:
        enable_l1(model, normalization)
    else:
        disable_l1(model)
    for mlp in stats.mlps:
        mlp.zero_counter = stats if mode in ("counters", "both") else None
    return use_l1


def summarize(blocks: list[dict]) -> dict:
    """Per mode: median step time; overhead over `off` per round and its median, min and max."""
    out = {}
    rounds = sorted({b["round"] for b in blocks})
    step_s = {(b["round"], b["mode"]): b["step_s"] for b in blocks}
    for mode in MODES:
        times = [step_s[(r, mode)] for r in rounds if (r, mode) in step_s]
        ratios = [step_s[(r, mode)] / step_s[(r, "off")] - 1.0 for r in rounds
                  if (r, mode) in step_s and (r, "off") in step_s]
        out[mode] = dict(median_step_s=statistics.median(times), overhead=statistics.median(ratios),
                         overhead_min=min(ratios), overhead_max=max(ratios), per_round=ratios)
    return out


def run(args) -> dict:
    cfg = load_recipe(args.config, args.overrides)
    on_gpu = torch.cuda.is_available()
    with process_group(on_gpu) as dist_env:
        setup_logging(dist_env.rank)
        device = torch.device("cuda", dist_env.local_rank) if on_gpu else torch.device("cpu")
        ds_config = derive_deepspeed_config(cfg, dist_env.world_size, on_gpu)
        loaded = load_model(cfg.model, ds_config, on_gpu, cfg.train.seed, cfg.source)
        model = loaded.model
        data = build_datasets(cfg.data, loaded.tokenizer)
        stats = SparsityStats(model)
        engine = build_engine(cfg, model, ds_config, args.warmup + args.rounds * len(MODES) * args.block)
        batches = iter(TrainBatches(data.train, cfg.train.micro_batch_size, dist_env.rank, dist_env.world_size,
                                    seed=cfg.data.seed))
        engine.train()
        sync = torch.cuda.synchronize if on_gpu else (lambda: None)
        use_l1 = set_mode(model, stats, "both", cfg.l1.normalization)
        for _ in range(args.warmup):
            train_step(engine, batches, cfg.train.grad_accum, args.lam, use_l1, device)
        blocks = []
        for r in range(args.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]   # no mode always follows the same one
            for mode in order:
                use_l1 = set_mode(model, stats, mode, cfg.l1.normalization)
                sync()
                start = time.perf_counter()
                for _ in range(args.block):
                    train_step(engine, batches, cfg.train.grad_accum, args.lam, use_l1, device)
                sync()
                blocks.append(dict(round=r, mode=mode, step_s=(time.perf_counter() - start) / args.block))
                stats.reset()
            if dist_env.rank == 0:
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{b['mode']} {b['step_s'] * 1e3:.1f} ms" for b in blocks[-len(MODES):]), flush=True)
        tokens_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum * dist_env.world_size * data.seq_len
    return dict(config=args.config, overrides=list(args.overrides), zero_stage=cfg.train.zero_stage,
                device=torch.cuda.get_device_name() if on_gpu else "cpu", tokens_per_step=tokens_per_step,
                block_steps=args.block, rounds=args.rounds, warmup_steps=args.warmup, l1_lambda=args.lam,
                blocks=blocks, modes=summarize(blocks))


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    rows = result["modes"]
    off = rows["off"]["median_step_s"]
    print(f"{'mode':<9} {'ms/step':>8} {'tokens/s':>10} {'overhead vs off (median of rounds, min..max)':>46}")
    for mode, row in rows.items():
        print(f"{mode:<9} {row['median_step_s'] * 1e3:8.1f} {result['tokens_per_step'] / row['median_step_s']:10,.0f} "
              f"{row['overhead'] * 100:+8.2f}% ({row['overhead_min'] * 100:+.2f}%..{row['overhead_max'] * 100:+.2f}%)")
    print(f"off: {off * 1e3:.1f} ms/step; overhead of the L1 term + counters (both): {rows['both']['overhead'] * 100:+.2f}%")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return finish_rank(0)   # one rank of several: leaves without the interpreter's teardown (exit_rank)


if __name__ == "__main__":
    sys.exit(main())
