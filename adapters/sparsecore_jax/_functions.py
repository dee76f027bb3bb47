"""``jax.custom_jvp`` registrations of the core's forward and forward-mode rules."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sparsecore
from sparsecore.internal import check_k, check_nan_policy, normalize_axis

__all__ = ["sparsemap", "sparsemax", "topk_is_exact", "topk_sparsemax", "topk_sparsemax_structured"]


# Each mapping is a ``jax.custom_jvp``: the core's forward rule gives the
# primal output and its ``*_jvp`` rule, a linear map of the tangent, the
# output tangent.  JAX transposes that linear map for the reverse mode, so
# jvp, jacfwd, grad, jacrev and hessian all work, under jit and vmap.  The
# rules get the primal output from the custom function itself, so that
# derivatives of higher order also go through the rules, never through the
# solvers' loops.


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _sparsemax(scores: jax.Array, axis: int, nan_policy: str) -> jax.Array:
    return sparsecore.sparsemax(jnp.asarray(scores), axis=axis, nan_policy=nan_policy)


@_sparsemax.defjvp
def _sparsemax_jvp(axis: int, nan_policy: str, primals: Any, tangents: Any) -> tuple[jax.Array, jax.Array]:
    scores, tangent = _pair(primals, tangents)
    probs = _sparsemax(scores, axis, nan_policy)
    return probs, sparsecore.sparsemax_jvp(probs, tangent, axis=axis)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _topk_sparsemax(scores: jax.Array, k: int, axis: int, nan_policy: str) -> jax.Array:
    return sparsecore.topk_sparsemax(jnp.asarray(scores), k, axis=axis, nan_policy=nan_policy)


@_topk_sparsemax.defjvp
def _topk_sparsemax_jvp(
    k: int, axis: int, nan_policy: str, primals: Any, tangents: Any
) -> tuple[jax.Array, jax.Array]:
    scores, tangent = _pair(primals, tangents)
    probs = _topk_sparsemax(scores, k, axis, nan_policy)
    return probs, sparsecore.topk_sparsemax_jvp(probs, tangent, axis=axis)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _topk_sparsemax_structured(t: jax.Array, structure: Any, k: int) -> tuple[jax.Array, jax.Array]:
    return sparsecore.topk_sparsemax_structured(jnp.asarray(t), structure, k)  # type: ignore[no-any-return]


@_topk_sparsemax_structured.defjvp
def _topk_sparsemax_structured_jvp(structure: Any, k: int, primals: Any, tangents: Any) -> Any:
    t, tangent = _pair(primals, tangents)
    probs, atoms = _topk_sparsemax_structured(t, structure, k)
    tangent_probs = sparsecore.topk_sparsemax_structured_jvp(probs, atoms, tangent)
    # The atoms are piecewise constant in t.
    return (probs, atoms), (tangent_probs, jnp.zeros_like(atoms))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def _sparsemap(t: jax.Array, structure: Any, max_iter: Any, tol: Any, max_active: Any) -> Any:
    return sparsecore.sparsemap(jnp.asarray(t), structure, max_iter=max_iter, tol=tol, max_active=max_active)


@_sparsemap.defjvp
def _sparsemap_jvp(
    structure: Any, max_iter: Any, tol: Any, max_active: Any, primals: Any, tangents: Any
) -> Any:
    t, tangent = _pair(primals, tangents)
    probs, atoms = _sparsemap(t, structure, max_iter, tol, max_active)
    tangent_probs = sparsecore.sparsemap_jvp(probs, atoms, tangent)
    return (probs, atoms), (tangent_probs, jnp.zeros_like(atoms))


def _pair(primals: tuple[Any], tangents: tuple[Any]) -> tuple[jax.Array, jax.Array]:
    """The primal and its tangent as JAX arrays of the primal's dtype (JAX may
    hand the rule NumPy values, e.g. when ``jax.jvp`` is given NumPy arrays,
    and the core would then compute in NumPy)."""
    (primal,), (tangent,) = primals, tangents
    primal = jnp.asarray(primal)
    return primal, jnp.asarray(tangent, dtype=primal.dtype)


def sparsemax(s: jax.Array, axis: int = -1, *, nan_policy: str = "propagate") -> jax.Array:
    """Sparsemax of ``s`` along ``axis``, differentiable in both modes.

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
