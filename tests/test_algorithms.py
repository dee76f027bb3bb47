"""Each of sparsemax's threshold strategies agrees with the reference.

Rows are sorted when short, start Newton's method from group maxima when of
medium length, and from their largest entries when long; the thresholds are
module constants, so each strategy is forced here on the same inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from backends import assert_close
from reference import sparsemax_bisect

import sparsecore._sparsemax as implementation
from sparsecore import sparsemax

STRATEGIES = {
    "sort": {"SORT_MAX_SIZE": 10**9},
    "newton": {"SORT_MAX_SIZE": 0, "GROUP_MIN_SIZE": 10**9, "CANDIDATE_MIN_SIZE": 10**9},
    "group_maxima": {"SORT_MAX_SIZE": 0, "GROUP_MIN_SIZE": 1, "CANDIDATE_MIN_SIZE": 10**9},
    "largest_entries": {"SORT_MAX_SIZE": 0, "CANDIDATE_MIN_SIZE": 1},
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("size", [1, 2, 7, 8, 9, 17, 33, 100])
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_strategies_match_reference(xp, make, monkeypatch, strategy, size, scale):
    for name, value in STRATEGIES[strategy].items():
        monkeypatch.setattr(implementation, name, value)
    rng = np.random.default_rng(size)
    data = rng.standard_normal((6, size)) * scale
    data[0, : size // 2] = -np.inf  # masked entries, including a whole first group
    data[1] = np.round(data[1])  # ties
    probs = sparsemax(make(data))
    assert_close(probs, sparsemax_bisect(data), "float64")
