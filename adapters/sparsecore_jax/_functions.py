"""``jax.custom_vjp`` registrations of the core's forward and backward rules."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sparsecore
from sparsecore._lib._validation import check_k, check_nan_policy, normalize_axis

__all__ = ["sparsemap", "sparsemax", "topk_is_exact", "topk_sparsemax", "topk_sparsemax_structured"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _sparsemax(scores: jax.Array, axis: int, nan_policy: str) -> jax.Array:
    return sparsecore.sparsemax(scores, axis=axis, nan_policy=nan_policy)


def _sparsemax_fwd(scores: jax.Array, axis: int, nan_policy: str) -> tuple[jax.Array, jax.Array]:
    probs = sparsecore.sparsemax(scores, axis=axis, nan_policy=nan_policy)
    return probs, probs


def _sparsemax_bwd(axis: int, nan_policy: str, probs: jax.Array, grad_probs: jax.Array) -> tuple[jax.Array]:
    return (sparsecore.sparsemax_vjp(probs, jnp.asarray(grad_probs), axis=axis),)


_sparsemax.defvjp(_sparsemax_fwd, _sparsemax_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _topk_sparsemax(scores: jax.Array, k: int, axis: int, nan_policy: str) -> jax.Array:
    return sparsecore.topk_sparsemax(scores, k, axis=axis, nan_policy=nan_policy)


def _topk_sparsemax_fwd(scores: jax.Array, k: int, axis: int, nan_policy: str) -> tuple[jax.Array, jax.Array]:
    probs = sparsecore.topk_sparsemax(scores, k, axis=axis, nan_policy=nan_policy)
    return probs, probs


def _topk_sparsemax_bwd(
    k: int, axis: int, nan_policy: str, probs: jax.Array, grad_probs: jax.Array
) -> tuple[jax.Array]:
    return (sparsecore.topk_sparsemax_vjp(probs, jnp.asarray(grad_probs), axis=axis),)


_topk_sparsemax.defvjp(_topk_sparsemax_fwd, _topk_sparsemax_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _topk_sparsemax_structured(t: jax.Array, structure: Any, k: int) -> tuple[jax.Array, jax.Array]:
    return sparsecore.topk_sparsemax_structured(t, structure, k)  # type: ignore[no-any-return]


def _topk_sparsemax_structured_fwd(t: jax.Array, structure: Any, k: int) -> Any:
    probs, atoms = sparsecore.topk_sparsemax_structured(t, structure, k)
    return (probs, atoms), (probs, atoms)


def _topk_sparsemax_structured_bwd(structure: Any, k: int, residuals: Any, cotangents: Any) -> Any:
    probs, atoms = residuals
    grad_probs, _ = cotangents  # atoms are piecewise constant in t
    return (sparsecore.topk_sparsemax_structured_vjp(probs, atoms, jnp.asarray(grad_probs)),)


_topk_sparsemax_structured.defvjp(_topk_sparsemax_structured_fwd, _topk_sparsemax_structured_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _sparsemap(t: jax.Array, structure: Any, max_iter: Any, tol: Any, max_active: Any) -> Any:
    return sparsecore.sparsemap(t, structure, max_iter=max_iter, tol=tol, max_active=max_active)


def _sparsemap_fwd(t: jax.Array, structure: Any, max_iter: Any, tol: Any, max_active: Any) -> Any:
    probs, atoms = sparsecore.sparsemap(t, structure, max_iter=max_iter, tol=tol, max_active=max_active)
    return (probs, atoms), (probs, atoms)


def _sparsemap_bwd(
    structure: Any, max_iter: Any, tol: Any, max_active: Any, residuals: Any, cotangents: Any
) -> Any:
    probs, atoms = residuals
    grad_probs, _ = cotangents  # atoms are piecewise constant in t
    return (sparsecore.sparsemap_vjp(probs, atoms, jnp.asarray(grad_probs)),)


_sparsemap.defvjp(_sparsemap_fwd, _sparsemap_bwd)


def sparsemax(s: jax.Array, axis: int = -1, *, nan_policy: str = "propagate") -> jax.Array:
    """Sparsemax of ``s`` along ``axis``, differentiable by ``jax.grad``.

    The JAX binding of :func:`sparsecore.sparsemax` (see it for the math and
    the handling of ``-inf``, ``+inf`` and NaN).  ``nan_policy="raise"``
    needs concrete (non-traced) values.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import sparsecore_jax
    >>> jax.jit(sparsecore_jax.sparsemax)(jnp.array([0.0, 0.5, 1.0]))
    Array([0.  , 0.25, 0.75], dtype=float32)
    """
    s = _as_array(s)
    axis = normalize_axis(axis, s.ndim)
    return _sparsemax(s, axis, check_nan_policy(nan_policy))  # type: ignore[no-any-return]


def topk_sparsemax(s: jax.Array, k: int, axis: int = -1, *, nan_policy: str = "propagate") -> jax.Array:
    """Sparsemax over the ``k`` largest entries of ``s`` along ``axis``.

    The JAX binding of :func:`sparsecore.topk_sparsemax`; ``k`` is static.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import sparsecore_jax
    >>> sparsecore_jax.topk_sparsemax(jnp.array([1.0, 0.9, 0.8, 0.0]), k=2)
    Array([0.55, 0.45, 0.  , 0.  ], dtype=float32)
    """
    s = _as_array(s)
    axis = normalize_axis(axis, s.ndim)
    k = check_k(k, s.shape[axis])
    return _topk_sparsemax(s, k, axis, check_nan_policy(nan_policy))  # type: ignore[no-any-return]


def topk_is_exact(probs: jax.Array, k: int, axis: int = -1) -> jax.Array:
    """Per row, whether a :func:`topk_sparsemax` output equals the full sparsemax."""
    return sparsecore.topk_is_exact(jax.lax.stop_gradient(_as_array(probs, "probs")), k, axis=axis)


def _as_array(x: Any, name: str = "s") -> jax.Array:
    if isinstance(x, jax.Array):
        return x
    if isinstance(x, np.ndarray | np.generic):
        return jnp.asarray(x)
    raise TypeError(f"{name} must be a jax.Array (or a NumPy array), got {type(x).__name__}")


def topk_sparsemax_structured(t: jax.Array, structure: Any, k: int) -> tuple[jax.Array, jax.Array]:
    """Sparsemax over the ``k`` best structures for variable scores ``t``.

    The JAX binding of :func:`sparsecore.topk_sparsemax_structured`;
    ``structure`` and ``k`` are static (structures are hashable).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from sparsecore import BitVector
    >>> import sparsecore_jax
    >>> t = jnp.array([0.75, -0.25])
    >>> probs, atoms = sparsecore_jax.topk_sparsemax_structured(t, BitVector(2), k=3)
    >>> probs
    Array([0.625, 0.375, 0.   ], dtype=float32)
    """
    return _topk_sparsemax_structured(_as_array(t, "t"), structure, k)  # type: ignore[no-any-return]


def sparsemap(
    t: jax.Array,
    structure: Any,
    *,
    max_iter: int | None = None,
    tol: float | None = None,
    max_active: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """SparseMAP distribution over structures for variable scores ``t``.

    The JAX binding of :func:`sparsecore.sparsemap`; the active-set loop is a
    bounded ``lax.while_loop``, so it works under ``jax.jit`` and
    ``jax.vmap``.  A row that does not converge within ``max_iter`` gets NaN
    ``probs`` (it is never returned silently).  The function is batched
    already: prefer passing a batch of rows to ``jax.vmap``, under which both
    branches of the loop's ``lax.cond`` run (the recomputation of doubtful
    rows at every step, and the slower solve-per-step loop once).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from sparsecore import BitVector
    >>> import sparsecore_jax
    >>> probs, atoms = sparsecore_jax.sparsemap(jnp.array([0.9, -0.2, 0.5]), BitVector(3))
    >>> probs @ atoms
    Array([0.9, 0. , 0.5], dtype=float32)
    """
    return _sparsemap(_as_array(t, "t"), structure, max_iter, tol, max_active)  # type: ignore[no-any-return]
