"""Bad and extreme input: masking, NaN, infinities, ties, huge values, empty
shapes, wrong types and arguments.

Every case runs on the core with every backend (``core-<backend>``) and on
the PyTorch (``dim``) and JAX (``axis``) adapters, whose gradients come from
autograd and ``jax.vjp``; ``torch-triton`` runs the PyTorch adapter on its
Triton kernels (marked ``triton``; see ``triton_support.py``), with every
fallback to the reference rules made an error, and ``torch-triton-tiled``
the same with rows of more than 2 entries over tiles of 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from backends import BACKENDS, asarray, assert_close, backend_context, dtype_name, has_dtype, to_numpy
from reference import sparsemax_bisect, sparsemax_vjp_reference, topk_sparsemax_bruteforce
from triton_support import triton_context

import sparsecore

# Every test runs with the fused kernels allowed and with the reference path forced.
pytestmark = pytest.mark.usefixtures("kernel_path")

INF, NAN = np.inf, np.nan


@dataclass(frozen=True)
class Api:
    """One way of calling the mappings: the core on a backend, or an adapter."""

    name: str
    backend: str
    sparsemax: Callable[..., Any]  # (s, axis=-1, **kwargs)
    topk: Callable[..., Any]  # (s, k, axis=-1, **kwargs)
    is_exact: Callable[..., Any]  # (probs, k, axis=-1)
    vjp: Callable[..., Any] | None = None  # (function, s, g): gradient of <g, function(s)>
    device: str | None = None  # where make() puts torch tensors, if not the default

    def make(self, data: Any, dtype: str = "float64") -> Any:
        array = asarray(self.backend, data, dtype)
        return array if self.device is None else array.to(self.device)

    def has_dtype(self, dtype: str) -> bool:
        return has_dtype(self.backend, dtype)

    def grad_sparsemax(self, s: Any, g: Any, axis: int = -1) -> Any:
        if self.vjp is None:  # the core: its own backward rule
            return sparsecore.sparsemax_vjp(self.sparsemax(s, axis), g, axis=axis)
        return self.vjp(lambda x: self.sparsemax(x, axis), s, g)

    def grad_topk(self, s: Any, g: Any, k: int, axis: int = -1) -> Any:
        if self.vjp is None:
            return sparsecore.topk_sparsemax_vjp(self.topk(s, k, axis), g, axis=axis)
        return self.vjp(lambda x: self.topk(x, k, axis), s, g)


def core_api(backend: str) -> Api:
    return Api(
        f"core-{backend}",
        backend,
        lambda s, axis=-1, **kw: sparsecore.sparsemax(s, axis=axis, **kw),
        lambda s, k, axis=-1, **kw: sparsecore.topk_sparsemax(s, k, axis=axis, **kw),
        lambda probs, k, axis=-1: sparsecore.topk_is_exact(probs, k, axis=axis),
    )


def torch_api() -> Api:
    import sparsecore_torch
    import torch

    def vjp(function, s, g):
        leaf = s.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(function(leaf), leaf, grad_outputs=g)
        return grad

    return Api(
        "torch-adapter",
        "torch",
        lambda s, axis=-1, **kw: sparsecore_torch.sparsemax(s, dim=axis, **kw),
        lambda s, k, axis=-1, **kw: sparsecore_torch.topk_sparsemax(s, k, dim=axis, **kw),
        lambda probs, k, axis=-1: sparsecore_torch.topk_is_exact(probs, k, dim=axis),
        vjp,
    )


def jax_api() -> Api:
    import jax
    import sparsecore_jax

    def vjp(function, s, g):
        _, pullback = jax.vjp(function, s)
        (grad,) = pullback(g)
        return grad

    return Api(
        "jax-adapter",
        "jax",
        lambda s, axis=-1, **kw: sparsecore_jax.sparsemax(s, axis=axis, **kw),
        lambda s, k, axis=-1, **kw: sparsecore_jax.topk_sparsemax(s, k, axis=axis, **kw),
        lambda probs, k, axis=-1: sparsecore_jax.topk_is_exact(probs, k, axis=axis),
        vjp,
    )


API_NAMES = [f"core-{name}" for name in BACKENDS] + ["torch-adapter", "jax-adapter"]
API_PARAMS = [
    *API_NAMES,
    pytest.param("torch-triton", marks=pytest.mark.triton),
    pytest.param("torch-triton-tiled", marks=pytest.mark.triton),
]


@pytest.fixture(params=API_PARAMS)
def api(request: pytest.FixtureRequest):
    name = request.param
    if name.startswith("torch-triton"):
        with backend_context("torch"), triton_context() as device:
            if name.endswith("tiled"):  # rows over tiles of 2
                monkeypatch = request.getfixturevalue("monkeypatch")
                from sparsecore_torch import _gpu

                monkeypatch.setattr(_gpu.triton_kernels(), "ONCHIP_MAX", 2)
                monkeypatch.setattr(_gpu.triton_kernels(), "TILE", 2)
            yield dataclasses.replace(torch_api(), name=name, device=device)
        return
    if name.startswith("core-"):
        backend = name.removeprefix("core-")
        with backend_context(backend):
            yield core_api(backend)
        return
    backend = name.removesuffix("-adapter")
    with backend_context(backend):
        yield torch_api() if backend == "torch" else jax_api()


def values(x: Any) -> np.ndarray:
    return to_numpy(x).astype(np.float64)


# ---------------------------------------------------------------------------
# -inf masking, NaN, +inf


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_masked_entry_gives_exactly_half(api, dtype):
    scores = api.make([0.0, -INF, 0.0], dtype)
    for probs in (api.sparsemax(scores), api.topk(scores, 2), api.topk(scores, 3)):
        assert dtype_name(probs) == dtype
        np.testing.assert_array_equal(values(probs), [0.5, 0.0, 0.5])
    batch = api.make([[0.0, -INF, 0.0], [-INF, 0.0, 0.0]], dtype)
    np.testing.assert_array_equal(values(api.sparsemax(batch)), [[0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
    np.testing.assert_array_equal(values(api.sparsemax(batch, 0)), [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    # The masked entry gets gradient exactly 0.
    g = api.make([[1.0, 5.0, 3.0], [7.0, 2.0, -2.0]], dtype)
    np.testing.assert_array_equal(values(api.grad_sparsemax(batch, g)), [[-1.0, 0.0, 1.0], [0.0, 2.0, -2.0]])
    np.testing.assert_array_equal(values(api.grad_topk(batch, g, 2)), [[-1.0, 0.0, 1.0], [0.0, 2.0, -2.0]])


def test_all_masked_row_gives_zeros_and_zero_gradient(api):
    data = [[-INF, -INF, -INF, -INF], [0.1, 0.2, -INF, 0.4], [0.0, -INF, -INF, -INF]]
    scores = api.make(data)
    g = api.make(np.arange(12.0).reshape(3, 4))
    expected = sparsemax_bisect(np.array(data))
    np.testing.assert_array_equal(expected[0], 0.0)
    for probs in (api.sparsemax(scores), api.topk(scores, 2), api.topk(scores, 4)):
        got = values(probs)
        assert not np.any(np.isnan(got))
        np.testing.assert_array_equal(got[0], 0.0)
        np.testing.assert_array_equal(got[2], [1.0, 0.0, 0.0, 0.0])
    assert_close(api.sparsemax(scores), expected)
    assert_close(api.topk(scores, 2), topk_sparsemax_bruteforce(np.array(data), 2))
    for grad in (api.grad_sparsemax(scores, g), api.grad_topk(scores, g, 2)):
        got = values(grad)
        assert not np.any(np.isnan(got))
        np.testing.assert_array_equal(got[0], 0.0)
        np.testing.assert_array_equal(got[2], 0.0)
    expected_grad = sparsemax_vjp_reference(expected, np.arange(12.0).reshape(3, 4))
    assert_close(api.grad_sparsemax(scores, g), expected_grad)


NAN_DATA = [[0.1, NAN, 0.3, 0.2], [0.1, 0.5, 0.3, 0.2], [NAN, NAN, NAN, NAN], [0.9, 0.1, 0.3, NAN]]


def test_nan_row_gives_nan_row_only(api):
    scores = api.make(NAN_DATA)
    probs = values(api.sparsemax(scores))
    assert np.all(np.isnan(probs[[0, 2, 3]]))
    assert_close(api.make(probs[1]), sparsemax_bisect(np.array(NAN_DATA[1])))
    grad = values(api.grad_sparsemax(scores, api.make(np.ones((4, 4)) * [1.0, 2.0, 3.0, 4.0])))
    assert np.all(np.isnan(grad[[0, 2, 3]]))
    expected = sparsemax_vjp_reference(
        sparsemax_bisect(np.array(NAN_DATA[1])), np.array([1.0, 2.0, 3.0, 4.0])
    )
    np.testing.assert_allclose(grad[1], expected, atol=1e-12)
    # Along axis 0: the NaN column only.
    column = values(api.sparsemax(api.make(np.array(NAN_DATA[:2]).T), 0))
    assert np.all(np.isnan(column[:, 0]))
    np.testing.assert_allclose(column[:, 1], sparsemax_bisect(np.array(NAN_DATA[1])), atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_topk_nan_row_gives_nan_row_only(api, k):
    """topk_sparsemax documents the NaN handling of sparsemax: a NaN row gives NaN."""
    scores = api.make(NAN_DATA)
    probs = values(api.topk(scores, k))
    expected = topk_sparsemax_bruteforce(np.array(NAN_DATA), k)
    assert np.all(np.isnan(expected[[0, 2, 3]]))
    np.testing.assert_allclose(probs[1], expected[1], atol=1e-12)
    assert np.all(np.isnan(probs[[0, 2, 3]])), f"k={k}: NaN rows gave {probs[[0, 2, 3]]}"


def test_nan_policy_raise(api):
    scores = api.make(NAN_DATA)
    with pytest.raises(ValueError, match="NaN"):
        api.sparsemax(scores, nan_policy="raise")
    with pytest.raises(ValueError, match="NaN"):
        api.topk(scores, 2, nan_policy="raise")
    clean = api.make(NAN_DATA[1:2])
    assert_close(api.sparsemax(clean, nan_policy="raise"), sparsemax_bisect(np.array(NAN_DATA[1:2])))
    assert_close(
        api.topk(clean, 2, nan_policy="raise"), topk_sparsemax_bruteforce(np.array(NAN_DATA[1:2]), 2)
    )
    for policy in ("omit", None, "RAISE"):
        with pytest.raises(ValueError, match="nan_policy"):
            api.sparsemax(clean, nan_policy=policy)
        with pytest.raises(ValueError, match="nan_policy"):
            api.topk(clean, 2, nan_policy=policy)


def test_positive_infinities_share_the_mass(api):
    data = [[INF, INF, 3.0], [INF, 0.0, -INF], [-INF, INF, INF], [INF, INF, INF]]
    scores = api.make(data)
    third = 1.0 / 3.0
    np.testing.assert_allclose(
        values(api.sparsemax(scores)),
        [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [third, third, third]],
        rtol=0,
        atol=1e-15,
    )
    np.testing.assert_allclose(values(api.sparsemax(scores)), sparsemax_bisect(np.array(data)), atol=1e-15)
    np.testing.assert_array_equal(
        values(api.topk(scores, 2)), [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.5, 0.0]]
    )
    np.testing.assert_array_equal(
        values(api.topk(scores, 1)), [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    )
    g_data = np.array([[1.0, 3.0, 5.0]] * 4)
    grad = values(api.grad_sparsemax(scores, api.make(g_data)))
    np.testing.assert_allclose(
        grad, sparsemax_vjp_reference(sparsemax_bisect(np.array(data)), g_data), atol=1e-15
    )


# ---------------------------------------------------------------------------
# Magnitudes, ties, sizes


@pytest.mark.parametrize(
    ("dtype", "data", "expected"),
    [
        (
            "float64",
            [[1e300, -1e300, 0.0], [1e300, 1e300, -1e300], [1e15, 1e15 + 0.5, 1e15 + 1.0]],
            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.25, 0.75]],
        ),
        (
            "float32",
            [
                [1e30, 1e30, -1e30],
                [1e30, 0.0, -1e30],
                [3e38, -3e38, 0.0],
                [-1e30, -1e30, -1e30],
                [1e6, 1e6 + 0.5, 1e6 + 1],
            ],
            [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.25, 0.75]],
        ),
        (
            "float16",
            [
                [6e4, 6e4, -6e4],
                [6e4, 0.0, -6e4],
                [-6e4, -6e4, -6e4],
                [6e4, 6e4 - 32, -6e4],
                [1000.0, 1000.5, 1001.0],
            ],
            [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.0, 0.25, 0.75]],
        ),
        ("bfloat16", [[3e38, 3e38, -3e38], [1e30, 0.0, -1e30]], [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]),
    ],
    ids=["float64", "float32", "float16", "bfloat16"],
)
def test_huge_magnitudes_give_finite_normalized_outputs(api, dtype, data, expected):
    if not api.has_dtype(dtype):
        pytest.skip(f"{api.backend} has no {dtype}")
    scores = api.make(data, dtype)
    for probs in (api.sparsemax(scores), api.topk(scores, 3)):
        assert dtype_name(probs) == dtype
        got = values(probs)
        assert np.all(np.isfinite(got)), got
        assert_close(probs, np.array(expected), dtype)
        np.testing.assert_allclose(
            got.sum(axis=-1), 1.0, atol=2e-3 if dtype in ("float16", "bfloat16") else 1e-6
        )
    g = api.make(np.ones(np.shape(data)) * [1.0, 2.0, 4.0], dtype)
    grad = values(api.grad_sparsemax(scores, g))
    assert np.all(np.isfinite(grad)), grad


def test_ties(api):
    data = [[0.0, 0.5, 1.0], [1.0, 1.0, 1.0], [2.0, 2.0, 0.0], [0.0, 1.0, 0.0]]
    third = 1.0 / 3.0
    expected = [[0.0, 0.25, 0.75], [third, third, third], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]
    probs = api.sparsemax(api.make(data))
    np.testing.assert_allclose(values(probs), expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(values(probs), sparsemax_bisect(np.array(data)), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(
        values(api.sparsemax(api.make([0.0, 0.5, 1.0], "float32"))), [0.0, 0.25, 0.75]
    )


def test_single_category(api):
    data = [[-5.0], [1e3], [0.0], [-INF]]
    scores = api.make(data)
    for probs in (api.sparsemax(scores), api.topk(scores, 1)):
        np.testing.assert_array_equal(values(probs), [[1.0], [1.0], [1.0], [0.0]])
    np.testing.assert_array_equal(
        values(api.grad_sparsemax(scores, api.make([[2.0], [3.0], [-1.0], [4.0]]))), 0.0
    )
    np.testing.assert_array_equal(values(api.sparsemax(api.make([[1.0, -2.0, 3.0]]), 0)), [[1.0, 1.0, 1.0]])
    assert bool(np.all(to_numpy(api.is_exact(api.sparsemax(scores), 1))))


@pytest.mark.parametrize(("shape", "axis"), [((0, 5), -1), ((2, 0, 5), -1), ((5, 0), 0)])
def test_empty_batch(api, shape, axis):
    scores = api.make(np.zeros(shape))
    for probs in (api.sparsemax(scores, axis), api.topk(scores, 2, axis)):
        assert tuple(probs.shape) == shape
        assert dtype_name(probs) == "float64"
        assert type(probs) is type(scores)
    exact = api.is_exact(api.sparsemax(scores, axis), 2, axis)
    assert tuple(exact.shape) == tuple(np.delete(np.array(shape), axis))
    grad = api.grad_sparsemax(scores, api.make(np.ones(shape)), axis)
    assert tuple(grad.shape) == shape


@pytest.mark.parametrize(("shape", "axis"), [((3, 0), -1), ((0,), 0), ((0, 3), 0), ((2, 0, 3), 1)])
def test_empty_category_axis_raises(api, shape, axis):
    scores = api.make(np.zeros(shape))
    with pytest.raises(ValueError):
        api.sparsemax(scores, axis)
    with pytest.raises(ValueError):
        api.topk(scores, 1, axis)


def test_inputs_are_not_mutated(api):
    data = np.array(
        [[0.3, -INF, 0.1, 0.2], [INF, 1.0, INF, 0.0], [NAN, 0.0, 1.0, 2.0], [-INF] * 4, [0.5, 0.5, 0.5, 0.1]]
    )
    g_data = np.arange(20.0).reshape(5, 4)
    scores, g = api.make(data), api.make(g_data)
    before, g_before = values(scores).copy(), values(g).copy()
    api.sparsemax(scores)
    api.topk(scores, 2)
    api.grad_sparsemax(scores, g)
    api.grad_topk(scores, g, 2)
    api.is_exact(api.sparsemax(scores), 2)
    np.testing.assert_array_equal(values(scores), before)
    np.testing.assert_array_equal(values(g), g_before)
    np.testing.assert_array_equal(before, data)


# ---------------------------------------------------------------------------
# Arguments


def test_bad_k(api):
    scores = api.make([[0.1, 0.5, 0.3], [0.0, 0.0, 1.0]])
    probs = api.sparsemax(scores)
    for k in (0, 4, -1):
        with pytest.raises(ValueError, match="k"):
            api.topk(scores, k)
        with pytest.raises(ValueError, match="k"):
            api.is_exact(probs, k)
    with pytest.raises(ValueError, match="k"):
        api.topk(scores, 3, 0)  # K = 2 along axis 0
    for k in (2.0, True, False, "2", None, np.float64(2.0)):
        with pytest.raises(TypeError, match="k"):
            api.topk(scores, k)
        with pytest.raises(TypeError, match="k"):
            api.is_exact(probs, k)
    expected = topk_sparsemax_bruteforce(np.array([[0.1, 0.5, 0.3], [0.0, 0.0, 1.0]]), 2)
    assert_close(api.topk(scores, np.int64(2)), expected)


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool", "complex128"])
def test_non_floating_input_raises_type_error(api, dtype):
    scores = api.make([[1, 0, 2], [0, 1, 1]], dtype)
    with pytest.raises(TypeError, match="floating"):
        api.sparsemax(scores)
    with pytest.raises(TypeError, match="floating"):
        api.topk(scores, 2)
    with pytest.raises(TypeError, match="floating"):
        api.is_exact(scores, 2)


def test_bad_axis(api):
    scores = api.make([[0.1, 0.5, 0.3], [0.0, 0.0, 1.0]])
    for axis in (2, -3, 10):
        with pytest.raises(ValueError, match="out of range"):
            api.sparsemax(scores, axis)
        with pytest.raises(ValueError, match="out of range"):
            api.topk(scores, 1, axis)
        with pytest.raises(ValueError, match="out of range"):
            api.is_exact(scores, 1, axis)
    for axis in (1.0, "0", None, True):
        with pytest.raises(TypeError):
            api.sparsemax(scores, axis)
        with pytest.raises(TypeError):
            api.topk(scores, 1, axis)
    scalar = api.make(1.0)
    with pytest.raises(ValueError):
        api.sparsemax(scalar)
    with pytest.raises(ValueError):
        api.topk(scalar, 1)


# ---------------------------------------------------------------------------
# Core-only and adapter-only checks


def test_vjp_shape_mismatch_raises(xp_name, make):
    probs = sparsecore.sparsemax(make([[0.1, 0.5, 0.3], [0.0, 0.0, 1.0]]))
    for shape in ((2, 4), (3, 2), (1, 3), (3,), (2, 3, 1)):
        g = make(np.ones(shape))
        with pytest.raises(ValueError, match="shape"):
            sparsecore.sparsemax_vjp(probs, g)
        with pytest.raises(ValueError, match="shape"):
            sparsecore.topk_sparsemax_vjp(probs, g)


def test_vjp_rejects_non_floating(xp_name, make):
    probs = sparsecore.sparsemax(make([[0.1, 0.5, 0.3]]))
    with pytest.raises(TypeError, match="floating"):
        sparsecore.sparsemax_vjp(probs, make([[1, 2, 3]], "int64"))
    with pytest.raises(TypeError, match="floating"):
        sparsecore.sparsemax_vjp(make([[0, 1, 0]], "int64"), make([[1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match="out of range"):
        sparsecore.sparsemax_vjp(probs, make([[1.0, 2.0, 3.0]]), axis=2)


@pytest.mark.parametrize("adapter", ["torch", "jax"])
def test_adapters_reject_foreign_inputs(adapter):
    with backend_context(adapter):
        api = torch_api() if adapter == "torch" else jax_api()
        for foreign in ([0.0, 1.0], (0.0, 1.0), np.array([0.0, 1.0])):
            if adapter == "jax" and isinstance(foreign, np.ndarray):
                continue  # JAX functions commonly accept NumPy arrays; not part of the contract.
            with pytest.raises(TypeError, match="s must be"):
                api.sparsemax(foreign)
            with pytest.raises(TypeError, match="s must be"):
                api.topk(foreign, 1)
