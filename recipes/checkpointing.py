"""Atomic DeepSpeed checkpoints with everything needed for an exact resume, and graceful stop on signals.

Layout of `RUN_DIR/checkpoints/`:
    latest                      -> text file naming the newest COMPLETE tag (DeepSpeed's convention)
    global_step<N>/             DeepSpeed's model / optimizer / LR-scheduler shards, plus ours:
        resume_state_rank<R>.pt step, lambda, data position and python/numpy/torch RNG of rank R
    zero_to_fp32.py             DeepSpeed's consolidation script

Atomicity: every rank writes into `tmp-global_step<N>/`; after a barrier (all ranks finished writing),
rank 0 renames it to `global_step<N>/` and only then replaces `latest` (write + fsync + os.replace).
A crash at any point leaves `latest` naming the previous complete checkpoint; leftover `tmp-*` folders
are removed at the next start. Checkpoints live on a file system all ranks share (as DeepSpeed assumes).

Stop on SIGTERM / SIGUSR1 (SLURM sends them before a time limit or preemption; torchrun forwards
SIGTERM): the handler only sets a flag. At the next step boundary the loop all-reduces the flag (a
signal may reach some ranks only), saves a checkpoint and exits 0, so a requeued job resumes.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"
TAG_PREFIX = "global_step"
TMP_PREFIX = "tmp-"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_tag(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint's tag, or None when there is none."""
    path = Path(ckpt_dir) / LATEST
    if not path.exists():
        return None
    tag = path.read_text().strip()
    return tag if (Path(ckpt_dir) / tag).is_dir() else None


def _write_latest(ckpt_dir: Path, tag: str) -> None:
    tmp = ckpt_dir / f"{LATEST}.tmp"
    with open(tmp, "w") as f:
        f.write(tag)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / LATEST)


def complete_tags(ckpt_dir: Path) -> list[str]:
    tags = [p.name for p in Path(ckpt_dir).glob(f"{TAG_PREFIX}*") if p.is_dir()]
    return sorted(tags, key=lambda t: int(t[len(TAG_PREFIX):]))


def remove_partial_checkpoints(ckpt_dir: Path) -> None:
    """Rank 0, at start: delete `tmp-*` folders left by a crash mid-save (never a complete one)."""
    if _rank() == 0:
        for partial in Path(ckpt_dir).glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(partial, ignore_errors=True)
    _barrier()


def save_checkpoint(engine, ckpt_dir: Path, step: int, resume_state: dict, keep: int) -> str:
    """Save on all ranks into a temporary tag, then publish it as complete; returns the tag."""
    ckpt_dir = Path(ckpt_dir)
    tag = f"{TAG_PREFIX}{step}"
    tmp_tag = TMP_PREFIX + tag
    if _rank() == 0:
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    _barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state={"step": step}, save_latest=False)
    torch.save({**resume_state, "rng": rng_state()}, ckpt_dir / tmp_tag / f"resume_state_rank{_rank()}.pt")
    _barrier()   # every rank's shards are on disk
    if _rank() == 0:
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)   # a stale one from before a resume
        os.replace(ckpt_dir / tmp_tag, ckpt_dir / tag)
        _write_latest(ckpt_dir, tag)
        for old in complete_tags(ckpt_dir)[:-keep]:
            if old != tag:
                shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    _barrier()
    return tag


def load_checkpoint(engine, ckpt_dir: Path) -> dict | None:
    """Restore model, optimizer and LR scheduler into `engine`; return this rank's resume state + RNG set.

    Returns None when there is no complete checkpoint (a fresh run)."""
    ckpt_dir = Path(ckpt_dir)
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"{ckpt_dir}/{tag}: DeepSpeed could not load this checkpoint")
    state_file = ckpt_dir / tag / f"resume_state_rank{_rank()}.pt"
    if not state_file.exists():
        raise RuntimeError(f"{state_file} missing: the checkpoint was written by a run with a different world size")
    state = torch.load(state_file, weights_only=False)
    if state["step"] != client_state["step"]:
        raise RuntimeError(f"{ckpt_dir}/{tag}: resume state step {state['step']} != engine step {client_state['step']}")
    set_rng_state(state.pop("rng"))
    return state


class StopSignal:
    """SIGTERM / SIGUSR1 set a flag; `requested()` agrees on it across ranks at a step boundary."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.flag = False
        self.signal_name = None
        self._previous = {}

    def install(self) -> "StopSignal":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.flag = True
        self.signal_name = signal.Signals(signum).name

    def requested(self, device: torch.device) -> bool:
        if not dist.is_initialized():
            return self.flag
        flag = torch.tensor([1.0 if self.flag else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
