"""Schedules for the L1 coefficient lambda: ProSparse's progressive sine schedule, constant, linear.

ProSparse Algorithm 1 (PAPERS.md (c)): stages `[(lambda_0=0, T_0), (lambda_1, T_1), ..., (lambda_S, T_S)]`
with accumulated step boundaries T_0 < T_1 < ... < T_S.
- step <= T_0: lambda = 0 (stage 0, ReLU only);
- step in (T_0, T_1]: lambda = lambda_1 (constant warm-up stage);
- step in (T_{i-1}, T_i], i >= 2: p = (step - T_{i-1}) / (T_i - T_{i-1}),
  eta = (1 - cos(pi p)) / 2 = (sin(-pi/2 + pi p) + 1) / 2,  lambda = lambda_{i-1} + eta (lambda_i - lambda_{i-1});
  equal consecutive lambdas give a constant stage;
- step > T_S: lambda = lambda_S.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


class ProgressiveL1Schedule:
    def __init__(self, stages: Sequence[Sequence[float]]):
        stages = [(float(lam), int(t)) for lam, t in stages]
        if len(stages) < 2:
            raise ValueError("ProgressiveL1Schedule needs stage 0 (0.0, T_0) and at least one L1 stage")
        if stages[0][0] != 0.0:
            raise ValueError(f"stage 0 must have lambda 0.0 (ReLU only), got {stages[0][0]}")
        for (lam_prev, t_prev), (lam, t) in zip(stages, stages[1:]):
            if t <= t_prev:
                raise ValueError(f"stage boundaries must increase (accumulated steps): {t_prev} then {t}")
            if lam < lam_prev:
                raise ValueError(f"lambdas must not decrease: {lam_prev} then {lam}")
        if stages[0][1] < 0:
            raise ValueError("T_0 must be >= 0")
        self.stages = stages

    @property
    def total_steps(self) -> int:
        return self.stages[-1][1]

    def __call__(self, step: int) -> float:
        (_, t0), (lam1, _) = self.stages[0], self.stages[1]
        if step <= t0:
            return 0.0
        if step <= self.stages[1][1]:
            return lam1
        for (lam_prev, t_prev), (lam, t) in zip(self.stages[1:], self.stages[2:]):
            if step <= t:
                p = (step - t_prev) / (t - t_prev)
                eta = 0.5 * (math.sin(-math.pi / 2 + math.pi * p) + 1.0)
                return lam_prev + eta * (lam - lam_prev)
        return self.stages[-1][0]

    def __repr__(self) -> str:
        return f"ProgressiveL1Schedule({self.stages})"


@dataclass(frozen=True)
class ConstantL1Schedule:
    """lambda from `start_step` on (ProSparse's "constant lambda" ablation); 0 before."""

    l1_lambda: float
    start_step: int = 0

    def __call__(self, step: int) -> float:
        return self.l1_lambda if step > self.start_step else 0.0


@dataclass(frozen=True)
class LinearL1Schedule:
    """0 up to `start_step`, then a straight ramp to `l1_lambda` at `end_step`, constant after."""

    l1_lambda: float
    start_step: int
    end_step: int

    def __post_init__(self):
        if self.end_step <= self.start_step:
            raise ValueError(f"end_step ({self.end_step}) must be after start_step ({self.start_step})")

    def __call__(self, step: int) -> float:
        if step <= self.start_step:
            return 0.0
        if step >= self.end_step:
            return self.l1_lambda
        return self.l1_lambda * (step - self.start_step) / (self.end_step - self.start_step)
