"""Learning-rate schedules as `step -> lr multiplier` for `torch.optim.lr_scheduler.LambdaLR`.

- cosine: linear warm-up to the peak, then half a cosine down to `min_lr` at the last step (ProSparse,
  TurboSparse: 5e-5 -> 5e-6 after 1,000 warm-up steps).
- wsd (MiniCPM's warm-up-stable-decay): linear warm-up, constant peak, then a decay over the last
  `decay_fraction` of the steps. MiniCPM decays exponentially (lr * 0.5 ** (t / T_half)); we decay with a
  cosine to `min_lr` so the end point is exact (ours).
- constant: linear warm-up, then the peak.

A multiplier, not an lr, because LambdaLR scales the optimizer's base lr; DeepSpeed saves the scheduler
state (its step count) in every checkpoint, so the schedule resumes where it stopped.
"""
from __future__ import annotations

import math
from typing import Callable


def _warmup(step: int, warmup_steps: int) -> float | None:
    """The warm-up multiplier while warming up, else None. Step 0's update already uses 1/warmup."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return None


def cosine_multiplier(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    warm = _warmup(step, warmup_steps)
    if warm is not None:
        return warm
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def wsd_multiplier(step: int, total_steps: int, warmup_steps: int, min_ratio: float,
                   decay_fraction: float) -> float:
    warm = _warmup(step, warmup_steps)
    if warm is not None:
        return warm
    decay_steps = max(1, round(total_steps * decay_fraction))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_multiplier_fn(optim_cfg, total_steps: int) -> Callable[[int], float]:
    """The configured schedule; `step` counts optimizer updates from 0 (LambdaLR's convention)."""
    min_ratio = optim_cfg.min_lr / optim_cfg.lr if optim_cfg.lr > 0 else 0.0
    warmup = optim_cfg.warmup_steps
    if optim_cfg.lr_schedule == "cosine":
        return lambda step: cosine_multiplier(step, total_steps, warmup, min_ratio)
    if optim_cfg.lr_schedule == "wsd":
        return lambda step: wsd_multiplier(step, total_steps, warmup, min_ratio, optim_cfg.decay_fraction)
    return lambda step: _warmup(step, warmup) or 1.0
