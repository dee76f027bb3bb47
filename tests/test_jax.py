"""The JAX adapter: custom JVPs (both modes) under grad, jit and vmap."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from backends import assert_close, require_backend
from reference import (
    along_axis,
    random_separated_scores,
    sparsemax_bisect,
    sparsemax_jacobian,
    sparsemax_vjp_reference,
    topk_sparsemax_bruteforce,
)

require_backend("jax", module_level=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import sparsecore_jax  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

jax.config.update("jax_enable_x64", True)

INF = float("inf")


def separated(shape: tuple[int, ...], axis: int, seed: int, scale: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    moved = np.moveaxis(np.empty(shape), axis, -1).shape
    return np.moveaxis(random_separated_scores(rng, moved, scale=scale), -1, axis)


def vjp_reference_along(p: np.ndarray, g: np.ndarray, axis: int) -> np.ndarray:
    moved = sparsemax_vjp_reference(np.moveaxis(p, axis, -1), np.moveaxis(g, axis, -1))
    return np.moveaxis(moved, -1, axis)


def mapping(kind: str, k: int | None, axis: int):
    if kind == "sparsemax":
        return lambda s: sparsecore_jax.sparsemax(s, axis=axis)
    return lambda s: sparsecore_jax.topk_sparsemax(s, k, axis=axis)


def reference(kind: str, k: int | None, s: np.ndarray, axis: int) -> np.ndarray:
    if kind == "sparsemax":
        return along_axis(sparsemax_bisect, s, axis)
    return along_axis(topk_sparsemax_bruteforce, s, axis, k)


MAPPINGS = [("sparsemax", None), ("topk", 2)]
MAPPING_IDS = ["sparsemax", "topk2"]
SHAPES_AXES = [((6,), 0), ((4, 5), 0), ((2, 3, 4), 1)]
SHAPE_IDS = ["6-axis0", "4x5-axis0", "2x3x4-axis1"]


@pytest.mark.parametrize(("kind", "k"), MAPPINGS, ids=MAPPING_IDS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES_AXES, ids=SHAPE_IDS)
def test_check_grads(kind, k, shape, axis):
    """Reverse mode against finite differences (jax.test_util.check_grads)."""
    data = separated(shape, axis, seed=len(shape) + 10 * axis + 100)
    scores = jnp.asarray(data)
    assert scores.dtype == jnp.float64
    check_grads(mapping(kind, k, axis), (scores,), order=1, modes=["rev"], eps=1e-6)


@pytest.mark.parametrize(("kind", "k"), MAPPINGS, ids=MAPPING_IDS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES_AXES, ids=SHAPE_IDS)
def test_grad_matches_closed_form(kind, k, shape, axis):
    data = separated(shape, axis, seed=len(shape) + 10 * axis + 100)
    function = mapping(kind, k, axis)
    scores = jnp.asarray(data)
    w = np.random.default_rng(1).standard_normal(shape)
    gradient = jax.grad(lambda s: jnp.sum(function(s) * w))(scores)
    assert gradient.dtype == jnp.float64
    assert_close(gradient, vjp_reference_along(reference(kind, k, data, axis), w, axis))


@pytest.mark.parametrize(("kind", "k"), MAPPINGS, ids=MAPPING_IDS)
def test_vjp_accepts_numpy_cotangent(kind, k):
    """A pullback from jax.vjp may be called with NumPy cotangents, as for any JAX function."""
    data = np.array([[0.0, 0.5, 1.0], [0.2, -INF, 0.1]])
    g = np.array([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]])
    _probs, pullback = jax.vjp(mapping(kind, k, -1), jnp.asarray(data))
    (gradient,) = pullback(g)
    assert_close(gradient, sparsemax_vjp_reference(reference(kind, k, data, -1), g))


@pytest.mark.parametrize(("kind", "k"), MAPPINGS, ids=MAPPING_IDS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES_AXES, ids=SHAPE_IDS)
def test_jit_matches_reference(kind, k, shape, axis):
    """(The eager calls are tested on the "jax" backend of the core tests.)"""
    data = np.random.default_rng(2).standard_normal(shape) * 0.5
    function = mapping(kind, k, axis)
    scores = jnp.asarray(data)
    jitted = jax.jit(function)(scores)
    expected = reference(kind, k, data, axis)
    assert_close(jitted, expected)
    assert jitted.dtype == scores.dtype
    assert jitted.shape == scores.shape


@pytest.mark.parametrize(("kind", "k"), MAPPINGS, ids=MAPPING_IDS)
@pytest.mark.parametrize(("in_axes", "axis"), [(0, -1), (1, 0), (2, 1)])
def test_vmap(kind, k, in_axes, axis):
    data = np.random.default_rng(3).standard_normal((3, 4, 5)) * 0.5
    out = jax.vmap(mapping(kind, k, axis), in_axes=in_axes)(jnp.asarray(data))
    expected = np.stack(
        [reference(kind, k, np.take(data, b, axis=in_axes), axis) for b in range(data.shape[in_axes])]
    )
    assert_close(out, expected)


@pytest.mark.parametrize(("kind", "k"), MAPPINGS, ids=MAPPING_IDS)
@pytest.mark.parametrize("axis", [0, -1])
def test_jit_vmap_grad(kind, k, axis):
    pieces = [separated((4, 5), axis, seed=20 + b) for b in range(3)]
    data = np.stack(pieces)
    w = np.random.default_rng(4).standard_normal((4, 5))
    function = mapping(kind, k, axis)

    def loss(s):
        return jnp.sum(function(s) * w)

    composed = jax.jit(jax.vmap(jax.grad(loss)))(jnp.asarray(data))
    expected = np.stack([vjp_reference_along(reference(kind, k, piece, axis), w, axis) for piece in pieces])
    assert_close(composed, expected)
    eager = np.stack([np.asarray(jax.grad(loss)(jnp.asarray(piece))) for piece in pieces])
    assert_close(composed, eager)


@pytest.mark.parametrize(("kind", "k"), MAPPINGS, ids=MAPPING_IDS)
def test_jacrev(kind, k):
    data = separated((6,), 0, seed=30)
    jacobian = jax.jacrev(mapping(kind, k, -1))(jnp.asarray(data))
    assert_close(jacobian, sparsemax_jacobian(reference(kind, k, data, -1)))


def test_topk_under_jit_with_static_k():
    data = np.random.default_rng(5).standard_normal((3, 6)) * 0.3
    scores = jnp.asarray(data)
    jitted = jax.jit(sparsecore_jax.topk_sparsemax, static_argnums=(1, 2))
    for k in (1, 2, 3):
        assert_close(jitted(scores, k, 0), along_axis(topk_sparsemax_bruteforce, data, 0, k))
    for k in (1, 2, 3, 6):
        assert_close(jitted(scores, k, -1), topk_sparsemax_bruteforce(data, k))
        partial = jax.jit(functools.partial(sparsecore_jax.topk_sparsemax, k=k))
        assert_close(partial(scores), topk_sparsemax_bruteforce(data, k))
    probs = jitted(scores, 2, -1)
    exact = jax.jit(sparsecore_jax.topk_is_exact, static_argnums=(1, 2))(probs, 2, -1)
    expected_exact = np.count_nonzero(topk_sparsemax_bruteforce(data, 2), axis=-1) < 2
    np.testing.assert_array_equal(np.asarray(exact), expected_exact)
    assert exact.dtype == jnp.bool_


def test_masking_and_special_rows_under_jit():
    data = np.array([[0.3, -INF, 0.9, 0.5], [-INF] * 4, [0.1, np.nan, 0.2, 0.3], [INF, 0.0, INF, 1.0]])
    w = np.array([1.0, -2.0, 3.0, 0.5])
    expected = sparsemax_bisect(data)
    scores = jnp.asarray(data)
    assert_close(jax.jit(sparsecore_jax.sparsemax)(scores), expected)
    gradient = jax.jit(jax.grad(lambda s: jnp.sum(sparsecore_jax.sparsemax(s)[:2] * w)))(scores)
    gradient = np.asarray(gradient)
    assert gradient[0, 1] == 0.0
    np.testing.assert_array_equal(gradient[1], 0.0)
    np.testing.assert_allclose(
        gradient[:2], sparsemax_vjp_reference(expected[:2], np.stack([w, w])), atol=1e-12
    )
    assert np.all(np.isnan(gradient[2]))  # documented: a NaN row gets a NaN gradient row
    np.testing.assert_array_equal(gradient[3], 0.0)  # no cotangent reaches row 3


def test_nan_policy_raise_needs_concrete_values():
    scores = jnp.asarray([[0.1, np.nan, 0.3]])
    with pytest.raises(ValueError, match="NaN"):
        sparsecore_jax.sparsemax(scores, nan_policy="raise")
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda s: sparsecore_jax.sparsemax(s, nan_policy="raise"))(scores)
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda s: sparsecore_jax.topk_sparsemax(s, 2, nan_policy="raise"))(scores)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_low_precision_under_jit_and_grad(dtype):
    rng = np.random.default_rng(6)
    data = random_separated_scores(rng, (3, 6), scale=1.0, quantum=0.125)
    w = np.round(rng.standard_normal((3, 6)) * 8) / 8
    scores = jnp.asarray(data, dtype=dtype)
    probs = jax.jit(sparsecore_jax.sparsemax)(scores)
    assert probs.dtype == scores.dtype
    assert_close(probs, sparsemax_bisect(data), dtype)
    gradient = jax.jit(
        jax.grad(lambda s: jnp.sum(sparsecore_jax.sparsemax(s) * jnp.asarray(w, dtype=dtype)))
    )(scores)
    assert gradient.dtype == scores.dtype
    assert_close(gradient, sparsemax_vjp_reference(sparsemax_bisect(data), w), dtype)
    topk = jax.jit(functools.partial(sparsecore_jax.topk_sparsemax, k=2))(scores)
    assert topk.dtype == scores.dtype
    assert_close(topk, topk_sparsemax_bruteforce(data, 2), dtype)
