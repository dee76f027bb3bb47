"""topk_sparsemax, its VJP and topk_is_exact on every backend, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from backends import (
    asarray,
    assert_close,
    assert_like,
    backend_params,
    cast_down,
    has_dtype,
    require_backend,
    time_limit,
    to_numpy,
)
from reference import (
    along_axis,
    long_rows,
    random_separated_scores,
    sparsemax_bisect,
    sparsemax_vjp_reference,
    topk_sparsemax_bruteforce,
)

from sparsecore import sparsemax, topk_is_exact, topk_sparsemax, topk_sparsemax_vjp

# Every test runs with the fused kernels allowed and with the reference path forced.
pytestmark = pytest.mark.usefixtures("kernel_path")

CASES = [
    ((7,), 0),
    ((4, 6), 0),
    ((4, 6), -1),
    ((2, 3, 5), 1),
    ((2, 3, 5), -1),
]
# float64 on every case, float32 on a few; JAX (about a second of
# compilation per new shape and dtype in eager mode) on a subset.
FLOAT32_CASES = [((4, 6), 0), ((2, 3, 5), -1)]
DTYPE_CASES = [(shape, axis, "float64") for shape, axis in CASES] + [
    (shape, axis, "float32") for shape, axis in FLOAT32_CASES
]
JAX_CASES = [((7,), 0, "float64"), ((2, 3, 5), 1, "float64"), ((4, 6), 0, "float32")]


def case_id(case: tuple) -> str:
    shape, axis, dtype = case
    return f"{'x'.join(map(str, shape))}-axis{axis}-{dtype}"


PARAMS = backend_params(DTYPE_CASES, jax_cases=JAX_CASES, case_id=case_id)


def seed_of(*parts: object) -> int:
    return sum((index + 1) * ord(char) for index, char in enumerate(repr(parts)))


def nonzeros_along(probs: np.ndarray, axis: int) -> np.ndarray:
    return np.count_nonzero(probs, axis=axis)


@pytest.mark.parametrize(("xp_name", "shape", "axis", "dtype"), PARAMS, indirect=["xp_name"])
def test_topk_matches_bruteforce_for_every_k(xp_name, make, shape, axis, dtype):
    rng = np.random.default_rng(seed_of(shape, axis, dtype))
    # A small scale makes supports larger than k, so the top-k cut matters.
    data = 0.3 * rng.standard_normal(shape)
    exact_input = cast_down(data, dtype)
    scores = make(data, dtype)
    size = shape[axis]
    full = along_axis(sparsemax_bisect, exact_input, axis)
    cut_somewhere = False
    for k in range(1, size + 1):
        probs = topk_sparsemax(scores, k, axis=axis)
        assert_like(probs, scores)
        expected = along_axis(topk_sparsemax_bruteforce, exact_input, axis, k)
        assert_close(probs, expected, err_msg=f"k={k}")
        got = to_numpy(probs).astype(np.float64)
        assert np.all(nonzeros_along(got, axis) <= k)
        assert np.all(got >= 0)
        np.testing.assert_allclose(got.sum(axis=axis), 1.0, rtol=0, atol=1e-5)
        cut_somewhere |= bool(np.any(nonzeros_along(full, axis) > k))
        # The certificate: exact rows equal the full sparsemax (reference).
        exact = to_numpy(topk_is_exact(probs, k, axis=axis))
        assert exact.shape == got.sum(axis=axis).shape
        expected_exact = (nonzeros_along(expected, axis) < k) | (k == size)
        np.testing.assert_array_equal(exact, expected_exact, err_msg=f"k={k}")
        mask = np.expand_dims(exact, axis)
        assert_close(probs, np.where(mask, full, expected), err_msg=f"k={k}")
    assert cut_somewhere, "the test data never exercise the top-k cut"


@pytest.mark.parametrize(
    ("xp_name", "shape", "axis"),
    backend_params(
        CASES,
        jax_cases=[((7,), 0), ((2, 3, 5), 1)],
        case_id=lambda case: f"{'x'.join(map(str, case[0]))}-axis{case[1]}",
    ),
    indirect=["xp_name"],
)
def test_k_equal_to_size_is_sparsemax(xp_name, make, shape, axis):
    rng = np.random.default_rng(seed_of("full", shape, axis))
    data = rng.standard_normal(shape)
    scores = make(data)
    probs = topk_sparsemax(scores, shape[axis], axis=axis)
    assert_close(probs, along_axis(sparsemax_bisect, data, axis))
    assert_close(probs, to_numpy(sparsemax(scores, axis=axis)))
    assert bool(np.all(to_numpy(topk_is_exact(probs, shape[axis], axis=axis))))


@pytest.mark.parametrize(("xp_name", "shape", "axis", "dtype"), PARAMS, indirect=["xp_name"])
def test_topk_vjp_matches_closed_form(xp_name, make, shape, axis, dtype):
    rng = np.random.default_rng(seed_of("vjp", shape, axis, dtype))
    moved = np.moveaxis(np.empty(shape), axis, -1).shape
    data = np.moveaxis(random_separated_scores(rng, moved, scale=0.5), -1, axis)
    cotangent = rng.standard_normal(shape)
    k = 2
    scores, g = make(data, dtype), make(cotangent, dtype)
    probs = topk_sparsemax(scores, k, axis=axis)
    grad = topk_sparsemax_vjp(probs, g, axis=axis)
    assert_like(grad, g)
    reference = np.moveaxis(
        topk_sparsemax_bruteforce(np.moveaxis(cast_down(data, dtype), axis, -1), k), -1, axis
    )
    expected = np.moveaxis(
        sparsemax_vjp_reference(
            np.moveaxis(reference, axis, -1), np.moveaxis(cast_down(cotangent, dtype), axis, -1)
        ),
        -1,
        axis,
    )
    assert_close(grad, expected)


def test_ties_keep_the_lowest_indices(xp_name, make):
    data = [
        [1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, 1.0, 1.0],
        [1.0, 0.0, 1.0, 1.0],
        [2.0, 1.0, 1.0, 1.0],
        [1.0, -np.inf, 1.0, 1.0],
        [5.0, 5.0, 5.0, 5.0],
    ]
    probs = topk_sparsemax(make(data), 2)
    expected = [
        [0.5, 0.5, 0.0, 0.0],
        [0.0, 0.5, 0.5, 0.0],
        [0.5, 0.0, 0.5, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.5, 0.0, 0.5, 0.0],
        [0.5, 0.5, 0.0, 0.0],
    ]
    np.testing.assert_array_equal(to_numpy(probs), expected)
    np.testing.assert_array_equal(expected, topk_sparsemax_bruteforce(np.array(data), 2))
    probs = topk_sparsemax(make(data), 3)
    third = 1.0 / 3.0
    np.testing.assert_allclose(
        to_numpy(probs),
        [
            [third, third, third, 0.0],
            [0.0, third, third, third],
            [third, 0.0, third, third],
            [1.0, 0.0, 0.0, 0.0],
            [third, 0.0, third, third],
            [third, third, third, 0.0],
        ],
        atol=1e-15,
    )
    # Ties along axis 0: the lowest index along that axis wins.
    column = make([[1.0], [1.0], [1.0], [0.0]])
    np.testing.assert_array_equal(to_numpy(topk_sparsemax(column, 2, axis=0))[:, 0], [0.5, 0.5, 0.0, 0.0])


def test_documented_example(xp_name, make):
    probs = topk_sparsemax(make([1.0, 0.9, 0.8, 0.0]), 2)
    np.testing.assert_allclose(to_numpy(probs), [0.55, 0.45, 0.0, 0.0], atol=1e-15)
    assert not bool(np.asarray(to_numpy(topk_is_exact(probs, 2))))
    # The full sparsemax keeps three scores (tau = 0.85 / 1.5), so k = 2 is not exact.
    full = sparsemax_bisect(np.array([1.0, 0.9, 0.8, 0.0]))
    assert np.count_nonzero(full) == 3
    exact_probs = topk_sparsemax(make([1.0, 0.9, 0.8, 0.0]), 4)
    assert_close(exact_probs, full)


def test_topk_is_exact_values(xp_name, make, xp):
    probs = make([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 0.0]])
    cases = {
        1: [False, False, False, True],
        2: [False, True, False, True],
        3: [True, True, False, True],
        4: [True, True, True, True],
    }
    for k, expected in cases.items():
        exact = topk_is_exact(probs, k)
        assert xp.isdtype(exact.dtype, "bool")
        assert type(exact) is type(probs)
        assert tuple(exact.shape) == (4,)
        np.testing.assert_array_equal(to_numpy(exact), expected, err_msg=f"k={k}")
    # Along axis 0, on the transposed layout.
    transposed = make(np.array([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]).T)
    np.testing.assert_array_equal(to_numpy(topk_is_exact(transposed, 2, axis=0)), [False, True])
    # One row: a 0-d answer.
    single = topk_is_exact(make([0.5, 0.5, 0.0]), 3)
    assert tuple(single.shape) == ()
    assert bool(to_numpy(single))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_topk_half_precision(xp_name, make, dtype):
    if not has_dtype(xp_name, dtype):
        pytest.skip(f"{xp_name} has no {dtype}")
    rng = np.random.default_rng(seed_of("half-topk", dtype))
    data = random_separated_scores(rng, (5, 6), scale=0.75, quantum=0.125)
    scores = make(data, dtype)
    for k in (1, 2, 3):
        probs = topk_sparsemax(scores, k)
        assert_like(probs, scores)
        assert_close(probs, topk_sparsemax_bruteforce(data, k), dtype, err_msg=f"k={k}")
        assert np.all(np.count_nonzero(to_numpy(probs), axis=-1) <= k)


def test_topk_stays_on_the_input_device():
    require_backend("array_api_strict")
    import array_api_strict

    other = array_api_strict.Device("device1")
    data = np.array([[0.1, 0.5, 0.4, 0.45], [0.3, -np.inf, 0.2, 0.0]])
    scores = asarray("array_api_strict", data, device=other)
    probs = topk_sparsemax(scores, 2)
    assert probs.device == other
    assert_close(probs, topk_sparsemax_bruteforce(data, 2))
    assert topk_is_exact(probs, 2).device == other
    grad = topk_sparsemax_vjp(probs, asarray("array_api_strict", np.ones((2, 4)), device=other))
    assert grad.device == other


@pytest.mark.parametrize(
    ("xp_name", "size"), backend_params([(104,), (3001,)], jax_cases=[(3001,)]), indirect=["xp_name"]
)
def test_topk_long_rows(xp_name, make, size):
    """Long rows (the solver's subset starts) with ties, masks and +inf; NaN rows are tested apart.

    104 is a multiple of the solver's group size; ragged sizes are tested
    below under a time limit (they can loop forever).
    """
    data = long_rows(size, seed=size + 7)
    data = data[~np.isnan(data).any(axis=-1)]
    scores = make(data)
    for k in (1, 17):
        probs = topk_sparsemax(scores, k)
        assert_like(probs, scores)
        expected = topk_sparsemax_bruteforce(data, k)
        assert_close(probs, expected, err_msg=f"k={k}")
        assert np.all(np.count_nonzero(to_numpy(probs), axis=-1) <= k)
        exact = to_numpy(topk_is_exact(probs, k))
        np.testing.assert_array_equal(exact, np.count_nonzero(expected, axis=-1) < k, err_msg=f"k={k}")


def test_topk_on_a_ragged_long_row_keeps_the_last_entries(xp_name, make):
    """k largest entries all in the last partial group of 8 of a 100-long row."""
    ramp = np.linspace(0.0, 1.0, 100)
    data = np.stack([ramp, ramp[::-1].copy()])
    with time_limit(xp_name, 60.0 if xp_name == "jax" else 20.0, "topk_sparsemax on a 100-long ramp"):
        for k in (1, 3):
            probs = topk_sparsemax(make(data), k)
            assert_close(probs, topk_sparsemax_bruteforce(data, k), err_msg=f"k={k}")
