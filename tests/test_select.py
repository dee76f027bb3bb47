"""The native k-th largest selection (partition / top-k) against the generic sort path.

Both are also checked against ``np.sort``, so that a shared mistake fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from backends import asarray, backend_context, to_numpy

from sparsecore._lib._namespace import array_namespace
from sparsecore._lib._select import kth_largest, kth_largest_generic, largest_values
from sparsecore._topk import topk_mask

INF = np.inf

CASES = {
    "random": np.random.default_rng(0).standard_normal((5, 7)),
    "ties": np.array([[1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]]),
    "minus_inf": np.array([[-INF, 0.5, -INF, 0.1, 0.2, -INF, 0.3], [-INF] * 7]),
    "plus_inf": np.array([[INF, 0.0, INF, -1.0, 1.0, -INF, 2.0]]),
    "batched": np.random.default_rng(1).integers(-3, 3, size=(2, 3, 6)).astype(np.float64),
}


# float32 on the native paths that differ by dtype (NumPy partition, torch
# topk); JAX's top_k in float64 only (each dtype costs it a compilation).
@pytest.mark.parametrize(
    ("library", "dtype"),
    [
        ("numpy", "float64"),
        ("numpy", "float32"),
        ("torch", "float64"),
        ("torch", "float32"),
        ("jax", "float64"),
        ("cupy", "float64"),
        ("cupy", "float32"),
    ],
)
@pytest.mark.parametrize("case", list(CASES))
def test_native_selection_matches_generic_and_sort(library, case, dtype):
    with backend_context(library):
        data = CASES[case].astype(dtype)
        x = asarray(library, data, dtype)
        xp = array_namespace(x)
        size = data.shape[-1]
        for k in range(1, size + 1):
            expected = np.sort(data, axis=-1)[..., size - k : size - k + 1]
            native = kth_largest(x, k, xp=xp)
            generic = kth_largest_generic(x, k, xp=xp)
            assert tuple(native.shape) == (*data.shape[:-1], 1)
            assert native.dtype == x.dtype
            np.testing.assert_array_equal(to_numpy(native), expected, err_msg=f"native k={k}")
            np.testing.assert_array_equal(to_numpy(generic), expected, err_msg=f"generic k={k}")
            np.testing.assert_array_equal(to_numpy(native), to_numpy(generic))


@pytest.mark.parametrize("library", ["numpy", "torch", "jax", "cupy", "array_api_strict"])
@pytest.mark.parametrize("case", list(CASES))
def test_largest_values_match_sort(library, case):
    """The native top-``count`` values (any order) are the ``count`` largest, ties and infinities included."""
    with backend_context(library):
        data = CASES[case]
        x = asarray(library, data)
        xp = array_namespace(x)
        size = data.shape[-1]
        for count in range(1, size + 1):
            values = to_numpy(largest_values(x, count, xp=xp))
            assert values.shape == (*data.shape[:-1], count)
            expected = np.sort(data, axis=-1)[..., size - count :]
            np.testing.assert_array_equal(np.sort(values, axis=-1), expected, err_msg=f"count={count}")


@pytest.mark.parametrize("case", list(CASES))
def test_topk_mask_keeps_k_lowest_indices_among_ties(xp_name, make, case):
    data = CASES[case]
    x = make(data)
    xp = array_namespace(x)
    size = data.shape[-1]
    for k in range(1, size + 1):
        mask = to_numpy(topk_mask(x, k, xp=xp))
        order = np.argsort(-data, axis=-1, kind="stable")
        expected = np.zeros(data.shape, dtype=bool)
        np.put_along_axis(expected, order[..., :k], True, axis=-1)
        np.testing.assert_array_equal(mask, expected, err_msg=f"k={k}")


@pytest.mark.parametrize("library", ["numpy", "torch", "jax", "cupy"])
def test_take_helpers_match_numpy(library):
    # The native gathers (torch's index_select and take_along_dim, which skip
    # array-api-compat's negative-index mapping) against NumPy's, including
    # the broadcast index that SparseMAP uses to reorder atoms.
    from sparsecore._lib._namespace import take, take_along_axis

    rng = np.random.default_rng(5)
    values = rng.standard_normal((4, 3, 5))
    rows = np.array([2, 0, 3, 3])
    order = np.argsort(values[..., 0], axis=-1)  # (4, 3)
    with backend_context(library):
        x = asarray(library, values)
        xp = array_namespace(x)
        taken = take(x, asarray(library, rows, "int64"), 0, xp=xp)
        along = take_along_axis(x, asarray(library, order[..., None], "int64"), -2, xp=xp)
        full = np.argsort(values, axis=1)  # same shape as values: torch's gather
        along_full = take_along_axis(x, asarray(library, full, "int64"), 1, xp=xp)
        np.testing.assert_array_equal(to_numpy(along_full), np.take_along_axis(values, full, axis=1))
        assert array_namespace(taken) is xp and array_namespace(along) is xp
        np.testing.assert_array_equal(to_numpy(taken), values[rows])
        np.testing.assert_array_equal(to_numpy(along), np.take_along_axis(values, order[..., None], axis=-2))
