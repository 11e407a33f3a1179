"""ProSparse Algorithm 1 (PAPERS.md (c)) written out as printed, independently of modeling/l1_schedule.py:
the reference the schedule and the recipe's logged lambdas are checked against."""
from __future__ import annotations

import math


def algorithm_1(step: int, stages) -> float:
    """Warm-up constant lambda_1 after stage 0 (lambda 0), then lambda_{i-1} + eta (lambda_i - lambda_{i-1}) with
    eta = (sin(-pi/2 + pi p) + 1) / 2 over each later stage, then lambda_S. `stages`: (lambda_i, accumulated T_i)."""
    lams = [s[0] for s in stages]
    ts = [s[1] for s in stages]
    if step <= ts[0]:
        return 0.0
    if step <= ts[1]:
        return lams[1]
    for i in range(2, len(stages)):
        if ts[i - 1] < step <= ts[i]:
            p = (step - ts[i - 1]) / (ts[i] - ts[i - 1])
            eta = 0.5 * (math.sin(-math.pi / 2 + math.pi * p) + 1)
            return lams[i - 1] + eta * (lams[i] - lams[i - 1])
    return lams[-1]
