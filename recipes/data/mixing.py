"""Mixing packed sources by weight, counted in tokens.

Every packed row comes from one source and holds exactly seq_len tokens, so a token share is a row
share. With p_i = weight_i / sum(weights) and c_i the training rows source i has:

- total rows N = max_tokens // seq_len when max_tokens is set; otherwise N = min_i floor(c_i / p_i),
  the largest mixture in which no source repeats a row (the scarcest source relative to its weight
  sets the size; the others are subsampled).
- source i gets n_i rows, N apportioned by largest remainder (sum n_i = N, |n_i - p_i N| < 1).
- n_i = q * c_i + r: q full passes over the source's rows plus r rows drawn without replacement by a
  generator seeded with (seed, i). Repeats happen only when max_tokens asks for more than there is.
"""
from __future__ import annotations

import math

import numpy as np


def apportion(total: int, weights: list[float]) -> list[int]:
    """`total` split in proportion to `weights` by the largest-remainder method (ties: lower index)."""
    weight_sum = float(sum(weights))
    quotas = [total * w / weight_sum for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def mixture_total(available_rows: list[int], weights: list[float]) -> int:
    """The largest N whose apportioned share of every source fits in that source's rows."""
    weight_sum = float(sum(weights))
    # the epsilon keeps floor() from losing a row to round-off at exact multiples; the loop undoes any overshoot
    total = min(math.floor(c * weight_sum / w + 1e-9) for c, w in zip(available_rows, weights))
    while total > 0 and any(n > c for n, c in zip(apportion(total, weights), available_rows)):
        total -= 1
    return total


def mixture_rows(available_rows: list[int], weights: list[float], seq_len: int, max_tokens: int | None,
                 seed: int) -> list[np.ndarray]:
    """For each source, the indices of its rows in the mixture (sorted; repeated rows repeat)."""
    total = max_tokens // seq_len if max_tokens is not None else mixture_total(available_rows, weights)
    picked = []
    for i, (count, available) in enumerate(zip(apportion(total, weights), available_rows)):
        passes, rest = divmod(count, available)
        extra = np.random.default_rng([seed, i]).choice(available, size=rest, replace=False)
        picked.append(np.sort(np.concatenate([np.tile(np.arange(available), passes), extra]).astype(np.int64)))
    return picked
