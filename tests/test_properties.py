"""Property-based tests (hypothesis) on NumPy and PyTorch, float64.

``torch-triton`` runs the PyTorch adapter on its Triton kernels (marked
``triton``; see ``triton_support.py``), ``torch-triton-tiled`` the same with
rows of more than 4 entries over tiles (the kernels for long rows).
"""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
from backends import asarray, require_backend, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from reference import sparsemax_bisect, topk_sparsemax_bruteforce
from triton_support import triton_context

import sparsecore

# Every test runs with the fused kernels allowed and with the reference path forced.
pytestmark = pytest.mark.usefixtures("kernel_path")

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None, database=None)
ATOL = 1e-9

finite_floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
score_arrays = arrays(
    np.float64, array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6), elements=finite_floats
)
score_rows = arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 8)), elements=finite_floats)
# Rows from 28 to 70 entries cross the solver's size thresholds (32, 64).
medium_rows = arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(28, 70)), elements=finite_floats)
unique_rows = st.integers(1, 8).flatmap(
    lambda size: arrays(np.float64, (size,), elements=finite_floats, unique=True)
)


def call(library: str, name: str, s: np.ndarray, *args, axis: int = -1) -> np.ndarray:
    """Run mapping ``name`` of ``library`` on NumPy data and read the result back."""
    if library.startswith("torch-triton"):
        with triton_context() as device, contextlib.ExitStack() as stack:
            import sparsecore_torch
            import torch
            from sparsecore_torch import _gpu

            if library.endswith("tiled"):
                # Rows of more than 4 entries over tiles of 4 (of 16 from 32
                # entries on: the interpreter's time grows with the tile count).
                tile = 4 if s.shape[axis] < 32 else 16
                stack.enter_context(mock.patch.object(_gpu.triton_kernels(), "ONCHIP_MAX", 4))
                stack.enter_context(mock.patch.object(_gpu.triton_kernels(), "TILE", tile))
            function = getattr(sparsecore_torch, name)
            return to_numpy(function(torch.tensor(s, device=device), *args, dim=axis))
    require_backend(library)
    if library == "numpy":
        function = getattr(sparsecore, name)
        return to_numpy(function(asarray("numpy", s), *args, axis=axis))
    import sparsecore_torch

    function = getattr(sparsecore_torch, name)
    return to_numpy(function(asarray("torch", s), *args, dim=axis))


# A parametrization, not a fixture: hypothesis reruns the body, not fixtures.
libraries = pytest.mark.parametrize(
    "library_name",
    [
        "numpy",
        "torch",
        pytest.param("torch-triton", marks=pytest.mark.triton),
        pytest.param("torch-triton-tiled", marks=pytest.mark.triton),
    ],
)


def assert_on_simplex(probs: np.ndarray, axis: int = -1) -> None:
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=axis), 1.0, rtol=0, atol=ATOL)


@libraries
@PROPERTY_SETTINGS
@given(s=score_arrays, data=st.data())
def test_sparsemax_is_on_the_simplex_and_matches_bisection(library_name, s, data):
    axis = data.draw(st.integers(-s.ndim, s.ndim - 1), label="axis")
    probs = call(library_name, "sparsemax", s, axis=axis)
    assert probs.shape == s.shape
    assert_on_simplex(probs, axis)
    expected = np.moveaxis(sparsemax_bisect(np.moveaxis(s, axis, -1)), -1, axis)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=ATOL)


@libraries
@PROPERTY_SETTINGS
@given(s=score_rows, data=st.data())
def test_topk_support_is_at_most_k_and_matches_bruteforce(library_name, s, data):
    k = data.draw(st.integers(1, s.shape[-1]), label="k")
    probs = call(library_name, "topk_sparsemax", s, k)
    assert_on_simplex(probs)
    assert np.all(np.count_nonzero(probs, axis=-1) <= k)
    np.testing.assert_allclose(probs, topk_sparsemax_bruteforce(s, k), rtol=0, atol=ATOL)
    full = sparsemax_bisect(s)
    exact = to_numpy(sparsecore.topk_is_exact(asarray("numpy", probs), k))
    np.testing.assert_allclose(probs[exact], full[exact], rtol=0, atol=ATOL)


@libraries
@PROPERTY_SETTINGS
@given(s=score_rows, data=st.data())
def test_sparsemax_is_invariant_to_a_constant_per_row(library_name, s, data):
    shift = data.draw(arrays(np.float64, (s.shape[0], 1), elements=finite_floats), label="shift")
    np.testing.assert_allclose(
        call(library_name, "sparsemax", s + shift), call(library_name, "sparsemax", s), rtol=0, atol=ATOL
    )


@libraries
@PROPERTY_SETTINGS
@given(s=score_rows, data=st.data())
def test_sparsemax_is_permutation_equivariant(library_name, s, data):
    permutation = np.array(data.draw(st.permutations(range(s.shape[-1])), label="permutation"))
    np.testing.assert_allclose(
        call(library_name, "sparsemax", s[:, permutation]),
        call(library_name, "sparsemax", s)[:, permutation],
        rtol=0,
        atol=ATOL,
    )


@libraries
@PROPERTY_SETTINGS
@given(s=unique_rows, data=st.data())
def test_topk_is_permutation_equivariant_without_ties(library_name, s, data):
    k = data.draw(st.integers(1, s.shape[-1]), label="k")
    permutation = np.array(data.draw(st.permutations(range(s.shape[-1])), label="permutation"))
    np.testing.assert_allclose(
        call(library_name, "topk_sparsemax", s[permutation], k),
        call(library_name, "topk_sparsemax", s, k)[permutation],
        rtol=0,
        atol=ATOL,
    )


@libraries
@PROPERTY_SETTINGS
@given(s=score_rows, data=st.data())
def test_masking_with_minus_inf_restricts_sparsemax(library_name, s, data):
    """-inf entries get 0 and the rest is the sparsemax of the unmasked scores."""
    mask = data.draw(arrays(np.bool_, s.shape), label="mask")
    masked = np.where(mask, -np.inf, s)
    probs = call(library_name, "sparsemax", masked)
    assert np.all(probs[mask] == 0)
    np.testing.assert_allclose(probs, sparsemax_bisect(masked), rtol=0, atol=ATOL)
    full_rows = ~mask.all(axis=-1)
    assert_on_simplex(probs[full_rows])
    np.testing.assert_array_equal(probs[~full_rows], 0.0)


@PROPERTY_SETTINGS
@given(s=score_rows, g=st.data())
def test_vjp_is_orthogonal_to_ones_and_zero_off_support(s, g):
    """The sparsemax VJP sums to 0 on each row and vanishes off the support."""
    cotangent = g.draw(arrays(np.float64, s.shape, elements=finite_floats), label="g")
    probs = sparsecore.sparsemax(s)
    grad = sparsecore.sparsemax_vjp(probs, cotangent)
    np.testing.assert_allclose(grad.sum(axis=-1), 0.0, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(grad[probs == 0], 0.0)
    support = probs > 0
    mean = (cotangent * support).sum(axis=-1, keepdims=True) / support.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(grad, np.where(support, cotangent - mean, 0.0), rtol=0, atol=1e-9)


@libraries
@PROPERTY_SETTINGS
@given(s=medium_rows, data=st.data())
def test_medium_rows_match_references(library_name, s, data):
    probs = call(library_name, "sparsemax", s)
    assert_on_simplex(probs)
    np.testing.assert_allclose(probs, sparsemax_bisect(s), rtol=0, atol=ATOL)
    k = data.draw(st.integers(1, s.shape[-1]), label="k")
    top = call(library_name, "topk_sparsemax", s, k)
    assert np.all(np.count_nonzero(top, axis=-1) <= k)
    np.testing.assert_allclose(top, topk_sparsemax_bruteforce(s, k), rtol=0, atol=ATOL)
