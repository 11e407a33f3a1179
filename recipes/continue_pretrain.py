"""Continue pretraining with an activation swap and ProSparse's L1 term, on DeepSpeed (ZeRO-3 by default).

Read top to bottom, this file is the whole run:
  setup   join the process group; derive the DeepSpeed config; load the model on every rank (partitioned
          under ZeRO-3) and swap its activation; build the packed data; AdamW + LR schedule; resume from
          RUN_DIR/checkpoints if a complete checkpoint is there.
  train   per optimizer step: lambda = L1 schedule(step); for each micro-batch:
          loss = CE + lambda * sum over layers L1(x1); DeepSpeed backward / step (accumulation, clipping).
          Log metrics, evaluate held-out loss, checkpoint every N steps or when SIGTERM / SIGUSR1 arrived.
  save    final checkpoint; optionally the consolidated HF export.

Started by `actsparse train` (train_cli.py), directly under torchrun / the deepspeed launcher / srun, or
in-process by `actsparse demo`. Steps count optimizer updates from 1, as ProSparse's T_i do.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import deepspeed
import torch
import torch.distributed as dist
import yaml

from actsparse.modeling import SparsityStats, enable_l1, l1_penalty

from .checkpointing import StopSignal, load_checkpoint, remove_partial_checkpoints, save_checkpoint
from .config import RecipeConfig
from .data import TrainBatches, build_datasets, heldout_batches
from .deepspeed_config import derive_deepspeed_config
from .distributed_env import export_torch_env, read_dist_env
from .metrics_log import MetricsLogger, mfu
from .model_loading import load_model
from .schedules import lr_multiplier_fn

log = logging.getLogger("actsparse.recipe")


@dataclass
class TrainResult:
    run_dir: Path
    final_step: int
    stopped_by_signal: bool
    engine: object


# ---------------------------------------------------------------------------------------------- setup
@contextlib.contextmanager
def process_group(on_gpu: bool):
    """Join (or, alone, create) the job's process group; a single in-process run restores the env after."""
    dist_env = read_dist_env()
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    export_torch_env(dist_env)
    if on_gpu:
        torch.cuda.set_device(dist_env.local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo", verbose=False)
    try:
        yield dist_env
        if dist.is_initialized():
            dist.barrier()   # leave together: rank 0 may still be exporting while the others tear down
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if dist_env.launcher == "single":
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def exit_rank(code: int) -> NoReturn:
    """End this rank's process now, after train() returned: flush the standard streams and logging, then
    os._exit(code), skipping the interpreter's teardown.

    torch's gloo backend has no shutdown: its worker threads outlive destroy_process_group (DeepSpeed and the
    ZeRO-3 parameters keep the groups referenced). A worker that lets go of a tensor with a Python object
    while the interpreter finalizes aborts the process ("terminate called without an active exception",
    pytorch/pytorch#179291), turning a finished run's exit code into SIGABRT (CI saw it once, session 17).
    Everything train() writes is closed and on disk when it returns, and every rank has passed its barrier.
    Scripts that call train() on several ranks should end with this too; `actsparse train` does."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def finish_rank(code: int) -> int:
    """An entry point's last step after train() (or another process_group run) returned: on one rank of several,
    `exit_rank(code)`; in a single-process run (tests call the entry points in-process), `code` back."""
    if read_dist_env().world_size > 1:
        exit_rank(code)
    return code


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("actsparse").setLevel(level)


def adamw_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms and biases (1-D tensors), the usual LLaMA-style split."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        ndim = len(getattr(param, "ds_shape", param.shape))
        (decay if ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def count_params(model: torch.nn.Module) -> int:
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def write_run_files(cfg: RecipeConfig, run_dir: Path, loaded) -> None:
    """Rank 0: the resolved recipe and the pre-swap model config + tokenizer (what export needs)."""
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    loaded.base_config.save_pretrained(run_dir / "model")
    loaded.tokenizer.save_pretrained(run_dir / "model")


def build_engine(cfg: RecipeConfig, model: torch.nn.Module, ds_config: dict, total_steps: int):
    """The DeepSpeed engine: activation checkpointing if configured, AdamW, the LR schedule over `total_steps`."""
    if cfg.train.activation_checkpointing:
        # Non-reentrant: a reentrant checkpoint would hide the L1 term from autograd (modeling/l1.py).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(adamw_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    lr_fn = lr_multiplier_fn(cfg.optim, total_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_fn))
    return engine


# ---------------------------------------------------------------------------------------------- train
def evaluate(engine, batches, stats: SparsityStats | None, device) -> dict:
    """Mean held-out LM loss (same batches on every rank: ZeRO-3 needs every rank in every forward)."""
    engine.eval()
    if stats is not None:
        stats.reset()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            ids = batch["input_ids"].to(device)
            total += engine(input_ids=ids, labels=ids).loss.float().item()
            count += 1
    engine.train()
    result = {"heldout_loss": total / max(count, 1)}
    result["heldout_ppl"] = math.exp(min(result["heldout_loss"], 50.0))
    if stats is not None:
        stats.all_reduce()
        result["heldout_sparsity"] = stats.overall()
        stats.reset()
    return result


def heldout_cett_sparsity(engine, batch, cett: float) -> float:
    """CETT sparsity of one held-out batch (train.cett_every). Every rank runs it on the same batch: under
    ZeRO-3 the forward gathers the partitioned weights, and the capture reads W_down inside that forward."""
    from actsparse.eval.cett import cett_sparsity_on_batch
    return cett_sparsity_on_batch(engine.module, batch, cett)


def mean_over_ranks(values: list[float], device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor.tolist()


def train_step(engine, batches, grad_accum: int, l1_lambda: float, use_l1: bool, device):
    """One optimizer step over `grad_accum` micro-batches: this rank's mean lm_loss, reg_loss, grad norm.

    Losses are summed on the device and read once per step, so the host does not wait on every micro-batch."""
    lm_sum = torch.zeros((), dtype=torch.float32, device=device)
    reg_sum = torch.zeros((), dtype=torch.float32, device=device)
    stage0_norm = None
    for micro in range(grad_accum):
        ids = next(batches)["input_ids"].to(device, non_blocking=True)
        lm_loss = engine(input_ids=ids, labels=ids).loss
        loss = lm_loss
        if use_l1:
            reg = l1_penalty(engine.module)
            loss = lm_loss + l1_lambda * reg
            reg_sum += reg.detach().float()
        engine.backward(loss)
        if micro == grad_accum - 1:
            stage0_norm = boundary_grad_norm(engine)
        engine.step()     # DeepSpeed updates only at the accumulation boundary
        lm_sum += lm_loss.detach().float()
    return (lm_sum / grad_accum).item(), (reg_sum / grad_accum).item(), step_grad_norm(engine, stage0_norm)


def train(cfg: RecipeConfig, on_end=None) -> TrainResult:
    """Run the recipe on this rank. `on_end(engine)`, if given, runs on every rank after the last
    checkpoint while the process group is still up (e.g. to gather the live ZeRO-3 weights)."""
    on_gpu = torch.cuda.is_available()
    with process_group(on_gpu) as dist_env:
        return _train(cfg, dist_env, on_gpu, on_end)


def _train(cfg: RecipeConfig, dist_env, on_gpu: bool, on_end=None) -> TrainResult:
    rank, world = dist_env.rank, dist_env.world_size
    setup_logging(rank)
    device = torch.device("cuda", dist_env.local_rank) if on_gpu else torch.device("cpu")
    run_dir, ckpt_dir = Path(cfg.output_dir), Path(cfg.output_dir) / "checkpoints"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)

    ds_config = derive_deepspeed_config(cfg, world, on_gpu)
    loaded = load_model(cfg.model, ds_config, on_gpu, cfg.train.seed, cfg.source)
    model = loaded.model
    note = "" if loaded.attention == "flash_attention_2" or not on_gpu else " (flash-attn not installed)"
    log.info("attention: %s%s; ZeRO stage %d on %d %s rank(s)", loaded.attention, note,
             cfg.train.zero_stage, world, "GPU" if on_gpu else "CPU")
    data = build_datasets(cfg.data, loaded.tokenizer)   # data errors stop us before anything is written
    if rank == 0:
        write_run_files(cfg, run_dir, loaded)

    l1_schedule = cfg.l1.build()
    if l1_schedule is not None:
        enable_l1(model, cfg.l1.normalization)
    stats = SparsityStats(model) if cfg.train.sparsity_stats else None

    engine = build_engine(cfg, model, ds_config, cfg.train.steps)
    num_params = count_params(model)

    batches = TrainBatches(data.train, cfg.train.micro_batch_size, rank, world, seed=cfg.data.seed)
    heldout = list(heldout_batches(data.heldout, cfg.train.micro_batch_size, cfg.train.eval_batches))
    remove_partial_checkpoints(ckpt_dir)
    resumed = load_checkpoint(engine, ckpt_dir)
    start_step = 0
    if resumed is not None:
        start_step = resumed["step"]
        batches.load_state_dict(resumed["data"])
        log.info("resumed from %s at step %d", ckpt_dir, start_step)

    logger = MetricsLogger(run_dir, rank, cfg.train.steps, start_step)
    stop = StopSignal().install()
    try:
        final_step, stopped = _loop(cfg, engine, batches, heldout, l1_schedule, stats, logger, stop,
                                    start_step, num_params, world, device, ckpt_dir, data.seq_len)
    finally:
        stop.restore()
        logger.close()
    if on_end is not None:
        on_end(engine)
    if cfg.train.export_at_end and not stopped and rank == 0:
        from .consolidate import export_run
        export_run(run_dir, run_dir / "export")
    return TrainResult(run_dir, final_step, stopped, engine)


def _loop(cfg, engine, batches, heldout, l1_schedule, stats, logger, stop, start_step, num_params, world,
          device, ckpt_dir, seq_len) -> tuple[int, bool]:
    train_cfg = cfg.train
    batches_iter = iter(batches)
    tokens_per_step = train_cfg.micro_batch_size * train_cfg.grad_accum * world * seq_len
    if start_step == 0 and heldout:
        logger.log({"step": 0, **evaluate(engine, heldout, stats, device)})
    window_start, window_steps, step, saved_step = time.perf_counter(), 0, start_step, start_step
    engine.train()
    while step < train_cfg.steps:
        step += 1
        l1_lambda = l1_schedule(step) if l1_schedule is not None else 0.0
        lr = engine.get_lr()[0]     # the rate this step's update uses (the scheduler advances in step())
        lm_loss, reg_loss, grad_norm = train_step(engine, batches_iter, train_cfg.grad_accum, l1_lambda,
                                       l1_schedule is not None, device)
        window_steps += 1
        if step % train_cfg.log_every == 0 or step == train_cfg.steps:
            lm_loss, reg_loss = mean_over_ranks([lm_loss, reg_loss], device)
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_steps * tokens_per_step / elapsed
            record = {"step": step, "lm_loss": lm_loss, "reg_loss": reg_loss, "l1_lambda": l1_lambda,
                      "lr": lr, "grad_norm": grad_norm,
                      "tokens": step * tokens_per_step, "tokens_per_s": tokens_per_s,
                      "mfu": mfu(num_params, tokens_per_s, world)}
            if stats is not None:
                stats.all_reduce()
                record.update(sparsity=stats.overall(), sparsity_per_layer=stats.per_layer())
                stats.reset()
            logger.log(record)
            window_start, window_steps = time.perf_counter(), 0
        paused_at = time.perf_counter()   # evaluation and checkpoint time is not training throughput
        if heldout and (step == train_cfg.steps or (train_cfg.eval_every and step % train_cfg.eval_every == 0)):
            logger.log({"step": step, **evaluate(engine, heldout, stats, device)})
        if heldout and train_cfg.cett_every and step % train_cfg.cett_every == 0:
            logger.log({"step": step, "cett_sparsity": heldout_cett_sparsity(engine, heldout[0], train_cfg.cett_target),
                        "cett_target": train_cfg.cett_target})
        logger.advance()
        stop_now = stop.requested(device)
        if stop_now or step == train_cfg.steps or (train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0):
            save_checkpoint(engine, ckpt_dir, step, {"step": step, "l1_lambda": l1_lambda, "data": batches.state_dict()},
                            train_cfg.keep_checkpoints)
            saved_step = step
        window_start += time.perf_counter() - paused_at
        if stop_now:
            log.warning("stop requested (%s): checkpoint saved at step %d, exiting", stop.signal_name or "peer", step)
            return step, True
    return saved_step, False


def boundary_grad_norm(engine) -> float | None:
    """Global gradient norm before clipping, read at the accumulation boundary before `engine.step()`.

    ZeRO stages 1-3 compute it inside their step (`get_global_grad_norm`); the stage-0 engine clips
    without keeping it, so there we compute it from the (unpartitioned, full) gradients."""
    if engine.zero_optimization_stage() > 0:
        return None
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else None


def step_grad_norm(engine, stage0_norm: float | None) -> float | None:
    if stage0_norm is not None:
        return stage0_norm
    norm = engine.get_global_grad_norm()
    if norm is None:
        return None
    return float(norm.item() if torch.is_tensor(norm) else norm)
