"""Each of sparsemax's threshold strategies agrees with the reference.

Rows are sorted when short and otherwise start Newton's method from the
threshold of their group maxima, the subset's own threshold found by sorting
or (recursively) by Newton's method; Newton's later steps run on all rows
(masked) or on the rows still iterating (gathered).  The thresholds are
module constants, so each strategy is forced here on the same inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from backends import assert_close
from reference import sparsemax_bisect

import sparsecore._sparsemax as implementation
from sparsecore import sparsemax

MASKED = {"COMPACT_MIN_ELEMENTS": 10**9}
GATHERED = {"COMPACT_MIN_ELEMENTS": 0}
STRATEGIES = {
    "sort": {"SORT_MAX_SIZE": 10**9, "SORT_MAX_ELEMENTS": 10**9},
    "newton": {"SORT_MAX_SIZE": 0, "GROUP_MIN_SIZE": 10**9, **MASKED},
    "newton_gathered": {"SORT_MAX_SIZE": 0, "GROUP_MIN_SIZE": 10**9, **GATHERED},
    "group_maxima": {"SORT_MAX_SIZE": 0, "GROUP_MIN_SIZE": 1, **MASKED},
    "group_maxima_gathered": {"SORT_MAX_SIZE": 0, "GROUP_MIN_SIZE": 1, **GATHERED},
    # Rows longer than 16 iterate from the threshold of their group maxima
    # found by sorting.
    "group_maxima_sorted": {"SORT_MAX_SIZE": 16, "GROUP_MIN_SIZE": 1, **MASKED},
    "group_maxima_sorted_gathered": {"SORT_MAX_SIZE": 16, "GROUP_MIN_SIZE": 1, **GATHERED},
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


@pytest.mark.parametrize("strategy", [name for name in STRATEGIES if name.startswith("group_maxima")])
def test_subset_start_that_misses_the_support(xp, make, monkeypatch, strategy):
    # Newton's method starts from the threshold of a subset and stops at once
    # only when the row's support is the subset's: here the group maxima miss
    # support entries (the largest share a group: entries 8 apart, as groups
    # stride across a row of 64) or hold only part of a support of 20.
    for name, value in STRATEGIES[strategy].items():
        monkeypatch.setattr(implementation, name, value)
    rng = np.random.default_rng(7)
    data = rng.standard_normal((4, 64))
    data[0, ::8][:4] = [3.0, 2.9, 2.8, 2.7]  # the top four in the first group of 8
    data[1, 8:28] = 5.0 + 0.001 * np.arange(20)  # a support of 20 entries
    data[2, :8] = 4.0  # every group maximum tied (group j holds entries j, j + 8, ...)
    data[3] *= 0.001  # full support
    probs = sparsemax(make(data))
    expected = sparsemax_bisect(data)
    assert np.count_nonzero(expected[1]) == 20
    assert_close(probs, expected, "float64")
