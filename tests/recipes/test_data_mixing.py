"""The mixture arithmetic (mixing.py) against its definition, over awkward weights."""
import math
from fractions import Fraction

import numpy as np

from actsparse.recipes.data.mixing import apportion, mixture_rows, mixture_total


def test_apportion_is_largest_remainder():
    assert apportion(5, [3, 2]) == [3, 2]
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]                  # ties go to the lower index
    assert apportion(7, [0.1, 0.3, 0.6]) == [1, 2, 4]             # quotas 0.7, 2.1, 4.2
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights = rng.uniform(0.01, 5, size=rng.integers(1, 6)).tolist()
        total = int(rng.integers(0, 500))
        counts = apportion(total, weights)
        assert sum(counts) == total
        assert all(abs(n - total * w / sum(weights)) < 1 for n, w in zip(counts, weights))


def test_natural_total_is_min_rows_over_share_without_repeats():
    rng = np.random.default_rng(1)
    for _ in range(300):
        weights = [float(w) for w in rng.choice([0.1, 0.2, 0.25, 0.7, 1.0, 3.0], size=rng.integers(1, 5))]
        available = [int(c) for c in rng.integers(1, 300, size=len(weights))]
        total = mixture_total(available, weights)
        decimal = [Fraction(str(w)) for w in weights]       # the weights as written: 0.1 is 1/10
        exact = min(math.floor(c * sum(decimal) / d) for c, d in zip(available, decimal))   # floor(c_i / p_i)
        assert total == exact
        assert all(n <= c for n, c in zip(apportion(total, weights), available))


def test_rows_are_whole_passes_plus_a_seeded_draw():
    picked = mixture_rows([10, 4], [1, 1], seq_len=8, max_tokens=8 * 20, seed=3)
    assert picked[0].tolist() == list(range(10))                  # 10 of 10: one pass, no draw
    assert sorted(set(picked[1].tolist())) == [0, 1, 2, 3] and len(picked[1]) == 10
    assert np.bincount(picked[1]).tolist().count(3) == 2          # 2 passes + 2 rows drawn once more
    again = mixture_rows([10, 4], [1, 1], seq_len=8, max_tokens=8 * 20, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(picked, again))
    natural = mixture_rows([10, 4], [1, 1], seq_len=8, max_tokens=None, seed=3)
    assert [len(p) for p in natural] == [4, 4] and len(set(natural[0].tolist())) == 4   # b is scarcest
