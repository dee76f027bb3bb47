"""sparsemax and sparsemax_vjp on every backend, against independent references."""

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
    finite_difference_jacobian,
    long_rows,
    random_separated_scores,
    sparsemax_bisect,
    sparsemax_jacobian,
    sparsemax_sort,
    sparsemax_vjp_reference,
)

from sparsecore import sparsemax, sparsemax_vjp

# Every test runs with the fused kernels allowed and with the reference path forced.
pytestmark = pytest.mark.usefixtures("kernel_path")

# (shape, axis): every axis of 1-, 2- and 3-d inputs, negative axes, and K = 1.
CASES = [
    ((7,), -1),
    ((7,), 0),
    ((4, 6), 0),
    ((4, 6), 1),
    ((4, 6), -1),
    ((2, 3, 5), 0),
    ((2, 3, 5), 1),
    ((2, 3, 5), -1),
    ((3, 1, 4), 1),
]
# float64 on every case, float32 on a few; JAX (about a second of
# compilation per new shape and dtype in eager mode) on a subset.
FLOAT32_CASES = [((7,), 0), ((4, 6), 0), ((2, 3, 5), 1), ((3, 1, 4), 1)]
DTYPE_CASES = [(shape, axis, "float64") for shape, axis in CASES] + [
    (shape, axis, "float32") for shape, axis in FLOAT32_CASES
]
JAX_CASES = [
    ((7,), 0, "float64"),
    ((4, 6), 0, "float64"),
    ((2, 3, 5), 1, "float64"),
    ((3, 1, 4), 1, "float64"),
    ((4, 6), -1, "float32"),
]


def case_id(case: tuple) -> str:
    shape, axis, dtype = case
    return f"{'x'.join(map(str, shape))}-axis{axis}-{dtype}"


PARAMS = backend_params(DTYPE_CASES, jax_cases=JAX_CASES, case_id=case_id)


def seed_of(*parts: object) -> int:
    """A deterministic seed per test case (not Python's salted hash)."""
    return sum((index + 1) * ord(char) for index, char in enumerate(repr(parts)))


def separated_along(rng: np.random.Generator, shape: tuple[int, ...], axis: int, **kwargs) -> np.ndarray:
    """``random_separated_scores`` whose rows run along ``axis``."""
    moved = np.moveaxis(np.empty(shape), axis, -1).shape
    return np.moveaxis(random_separated_scores(rng, moved, **kwargs), -1, axis)


def vjp_reference_along(p: np.ndarray, g: np.ndarray, axis: int) -> np.ndarray:
    moved = sparsemax_vjp_reference(np.moveaxis(p, axis, -1), np.moveaxis(g, axis, -1))
    return np.moveaxis(moved, -1, axis)


def test_references_agree_with_each_other():
    """The two forward references (bisection, sort) agree, so neither is trivially wrong."""
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((200, 9)) * rng.uniform(0.1, 10.0, size=(200, 1))
    np.testing.assert_allclose(sparsemax_bisect(scores), sparsemax_sort(scores), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sparsemax_bisect([0.0, 0.5, 1.0]), [0.0, 0.25, 0.75], atol=1e-15)


def test_reference_jacobian_matches_finite_differences():
    rng = np.random.default_rng(1)
    for _ in range(5):
        scores = random_separated_scores(rng, (6,), scale=1.0)
        jacobian = sparsemax_jacobian(sparsemax_bisect(scores))
        numeric = finite_difference_jacobian(sparsemax_bisect, scores)
        np.testing.assert_allclose(jacobian, numeric, atol=1e-8)


@pytest.mark.parametrize(("xp_name", "shape", "axis", "dtype"), PARAMS, indirect=["xp_name"])
def test_sparsemax_matches_references(xp_name, make, shape, axis, dtype):
    rng = np.random.default_rng(seed_of(shape, axis, dtype))
    data = 2.0 * rng.standard_normal(shape)
    scores = make(data, dtype)
    probs = sparsemax(scores, axis=axis)
    assert_like(probs, scores)
    exact_input = cast_down(data, dtype)  # the values the library really saw
    assert_close(probs, along_axis(sparsemax_bisect, exact_input, axis))
    assert_close(probs, along_axis(sparsemax_sort, exact_input, axis))


@pytest.mark.parametrize(("xp_name", "shape", "axis", "dtype"), PARAMS, indirect=["xp_name"])
def test_sparsemax_vjp_matches_closed_form(xp_name, make, shape, axis, dtype):
    rng = np.random.default_rng(seed_of("vjp", shape, axis, dtype))
    data = separated_along(rng, shape, axis, scale=1.0)
    cotangent = rng.standard_normal(shape)
    scores, g = make(data, dtype), make(cotangent, dtype)
    probs = sparsemax(scores, axis=axis)
    grad = sparsemax_vjp(probs, g, axis=axis)
    assert_like(grad, g)
    reference_probs = along_axis(sparsemax_bisect, cast_down(data, dtype), axis)
    expected = vjp_reference_along(reference_probs, cast_down(cotangent, dtype), axis)
    assert_close(grad, expected)


def test_sparsemax_vjp_matches_finite_differences(xp_name, make):
    """Row i of the VJP with g = e_i is row i of the Jacobian, by central differences."""
    rng = np.random.default_rng(2)
    size = 6
    supports = []
    for _ in range(3):
        data = random_separated_scores(rng, (size,), scale=0.3)
        numeric = finite_difference_jacobian(sparsemax_bisect, data)
        probs = sparsemax(make(np.tile(data, (size, 1))))
        rows = sparsemax_vjp(probs, make(np.eye(size)))
        np.testing.assert_allclose(to_numpy(rows), numeric, atol=1e-8)
        supports.append(np.count_nonzero(to_numpy(probs)[0]))
    assert max(supports) >= 3, f"supports {supports}: the Jacobians are too trivial to test"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("axis", [0, 1])
def test_half_precision_against_float64_reference(xp_name, make, dtype, axis):
    if not has_dtype(xp_name, dtype):
        pytest.skip(f"{xp_name} has no {dtype}")
    rng = np.random.default_rng(seed_of("half", dtype, axis))
    # Multiples of 1/8 are exact in both half precisions: the reference sees the same input.
    data = separated_along(rng, (5, 6), axis, scale=1.5, quantum=0.125)
    cotangent = np.round(rng.standard_normal((5, 6)) * 8) / 8
    scores, g = make(data, dtype), make(cotangent, dtype)
    probs = sparsemax(scores, axis=axis)
    assert_like(probs, scores)
    reference_probs = along_axis(sparsemax_bisect, data, axis)
    assert_close(probs, reference_probs, dtype)
    np.testing.assert_allclose(to_numpy(probs).astype(np.float64).sum(axis=axis), 1.0, atol=1e-2)
    grad = sparsemax_vjp(probs, g, axis=axis)
    assert_like(grad, g)
    assert_close(grad, vjp_reference_along(reference_probs, cotangent, axis), dtype)


def test_default_axis_is_last(xp_name, make):
    data = np.array([[0.0, 0.5, 1.0], [3.0, 0.0, -1.0]])
    probs = sparsemax(make(data))
    np.testing.assert_allclose(to_numpy(probs), [[0.0, 0.25, 0.75], [1.0, 0.0, 0.0]], atol=1e-15)
    grad = sparsemax_vjp(probs, make([[1.0, 2.0, 0.0], [1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(to_numpy(grad), [[0.0, 1.0, -1.0], [0.0, 0.0, 0.0]], atol=1e-15)


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_non_contiguous_input(library):
    """Transposed and strided views give the forward and backward of their values."""
    require_backend(library)
    rng = np.random.default_rng(3)
    base_data = rng.standard_normal((6, 8))
    g_data = rng.standard_normal((6, 8))
    base, g_base = asarray(library, base_data), asarray(library, g_data)
    views = {
        "transposed": (lambda a: a.T, lambda a: a.T),
        "strided": (lambda a: a[:, ::2], lambda a: a[:, ::2]),
    }
    for name, (view, view_data) in views.items():
        scores, g = view(base), view(g_base)
        if library == "numpy":
            assert not scores.flags.c_contiguous, name
        else:
            assert not scores.is_contiguous(), name
        values = np.ascontiguousarray(view_data(base_data))
        cotangent = np.ascontiguousarray(view_data(g_data))
        for axis in (0, 1):
            probs = sparsemax(scores, axis=axis)
            expected = along_axis(sparsemax_bisect, values, axis)
            assert_close(probs, expected, err_msg=f"{name} axis={axis}")
            contiguous = sparsemax(asarray(library, values), axis=axis)
            np.testing.assert_allclose(to_numpy(probs), to_numpy(contiguous), rtol=1e-14, atol=1e-15)
            grad = sparsemax_vjp(probs, g, axis=axis)
            assert_close(grad, vjp_reference_along(expected, cotangent, axis), err_msg=f"{name} axis={axis}")


def test_output_stays_on_the_input_device():
    """array-api-strict has several devices and refuses to mix them."""
    require_backend("array_api_strict")
    import array_api_strict

    other = array_api_strict.Device("device1")
    data = np.array([[0.0, 0.5, 1.0], [0.3, -np.inf, 0.2]])
    scores = asarray("array_api_strict", data, device=other)
    probs = sparsemax(scores, axis=-1)
    assert probs.device == other
    assert_close(probs, sparsemax_bisect(data))
    grad = sparsemax_vjp(probs, asarray("array_api_strict", np.ones((2, 3)), device=other))
    assert grad.device == other
    probs0 = sparsemax(scores, axis=0)
    assert probs0.device == other
    assert_close(probs0, along_axis(sparsemax_bisect, data, 0))


@pytest.mark.parametrize(
    ("xp_name", "size", "dtype"),
    backend_params(
        [
            (32, "float64"),
            (33, "float32"),
            (64, "float64"),
            (100, "float32"),
            (2047, "float64"),
            (2048, "float64"),
            (3001, "float32"),
        ],
        jax_cases=[(100, "float32"), (2048, "float64")],
    ),
    indirect=["xp_name"],
)
def test_long_rows(xp_name, make, size, dtype):
    """Rows on both sides of the solver's size thresholds: 32 and less (sorting),
    more (iterating), 64+ and 2048+ (iterating from subset thresholds)."""
    data = long_rows(size, seed=size)
    exact_input = cast_down(data, dtype)
    expected = sparsemax_bisect(exact_input)
    scores = make(data, dtype)
    probs = sparsemax(scores)
    assert_like(probs, scores)
    assert_close(probs, expected)
    # Along axis 0 too (the long axis first).
    probs0 = sparsemax(make(data.T, dtype), axis=0)
    assert_close(probs0, expected.T)
    rng = np.random.default_rng(size + 1)
    cotangent = rng.standard_normal(data.shape)
    grad = sparsemax_vjp(probs, make(cotangent, dtype))
    finite_rows = np.isfinite(expected).all(axis=-1)
    expected_grad = sparsemax_vjp_reference(
        np.where(finite_rows[:, None], expected, 0.0), cast_down(cotangent, dtype)
    )
    got = to_numpy(grad).astype(np.float64)
    rtol, atol = (1e-7, 1e-7) if dtype == "float64" else (1e-5, 1e-5)
    np.testing.assert_allclose(got[finite_rows], expected_grad[finite_rows], rtol=rtol, atol=atol)
    assert np.all(np.isnan(got[~finite_rows]))


def test_long_rows_whose_finite_entries_all_sit_in_the_last_partial_group(xp_name, make):
    """Rows of 64..2047 entries start from the maxima of groups of 8; the last
    ``size % 8`` entries belong to no group.  When every finite entry is there,
    the result must still be correct (and the solver must stop)."""
    # (JAX runs this un-jitted, so that a time limit can interrupt it: one size.)
    for size in (100,) if xp_name == "jax" else (100, 2047):
        tail = size % 8
        rows = np.full((3, size), -np.inf)
        rows[0, -1] = 0.0
        rows[1, -tail:] = np.linspace(0.1, 0.4, tail)
        rows[2, -tail:] = 5.0
        rows[2, 0] = 4.5  # one finite entry inside a group, far below the others
        expected = sparsemax_bisect(rows)
        with time_limit(xp_name, 60.0 if xp_name == "jax" else 20.0, f"sparsemax on {size}-long rows"):
            probs = sparsemax(make(rows))
        assert_close(probs, expected, err_msg=f"size={size}")
