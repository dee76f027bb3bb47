"""Exact marginalization of a loss over a sparse distribution's support, with static shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Marginal", "marginalize"]


class Marginal(NamedTuple):
    """What :func:`marginalize` returns.

    Attributes
    ----------
    expectation : jax.Array
        Shape (N, ...): the exact expectation of the loss under each
        example's distribution (NaN for an example whose pairs did not fit
        in ``max_pairs``, see ``complete``).
    calls : jax.Array
        Scalar int: the loss evaluations that counted, i.e. the pairs with
        nonzero probability (the paper's "decoder calls" for the whole
        batch).  The loss function itself always runs on ``max_pairs`` rows,
        the padding masked out.
    support : jax.Array
        Shape (N,), int: the number of structures with nonzero probability of
        each example.
    complete : jax.Array
        Scalar bool: whether every nonzero pair fit in ``max_pairs``.
    """

    expectation: jax.Array
    calls: jax.Array
    support: jax.Array
    complete: jax.Array


def _as_array(x: Any, name: str) -> jax.Array:
    if isinstance(x, jax.Array):
        return x
    if isinstance(x, np.ndarray | np.generic):
        return jnp.asarray(x)
    raise TypeError(f"{name} must be a jax.Array (or a NumPy array), got {type(x).__name__}")


def _concrete(x: jax.Array) -> bool | None:
    """``bool(x)`` when ``x`` is concrete, ``None`` under a trace."""
    try:
        return bool(x)
    except jax.errors.ConcretizationTypeError:
        return None


def _split_distribution(distribution: Any) -> tuple[jax.Array, jax.Array | None]:
    """``(probs, atoms)`` from a dense probs array or a ``(probs, atoms)`` pair, checked."""
    if isinstance(distribution, tuple | list) and len(distribution) == 2:
        probs, atoms = _as_array(distribution[0], "probs"), _as_array(distribution[1], "atoms")
    else:
        probs, atoms = _as_array(distribution, "distribution"), None
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        raise TypeError(f"probs must have a floating dtype, got {probs.dtype}")
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (N, K) (one row per example), got shape {probs.shape}")
    if atoms is not None and (atoms.ndim != 3 or atoms.shape[:2] != probs.shape):
        raise ValueError(
            f"atoms must have shape (N, M, D) = {probs.shape} + (D,) to match probs, got shape {atoms.shape}"
        )
    return probs, atoms


def marginalize(
    distribution: jax.Array | tuple[jax.Array, jax.Array],
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    max_pairs: int | None = None,
) -> Marginal:
    r"""Exact expectation of ``loss_fn`` under a sparse distribution, per example.

    .. math::

        \mathbb{E}_{\pi_n}[\ell(n, z)] = \sum_{z:\ \pi_n(z) > 0} \pi_n(z)\, \ell(n, z)

    The (example, structure) pairs with nonzero probability are packed into
    a batch of the static size ``max_pairs`` (padding masked out) and
    ``loss_fn`` is called once on it, so this works under ``jax.jit``,
    ``jax.grad`` and ``jax.vmap``.  Gradients flow into the probabilities
    (and so into the scores) and into whatever ``loss_fn`` closes over.

    Parameters
    ----------
    distribution : jax.Array or tuple of jax.Array
        Dense probabilities of shape (N, K), or a pair ``(probs, atoms)`` of
        shapes (N, M) and (N, M, D) from ``topk_sparsemax_structured`` or
        ``sparsemap``.
    loss_fn : callable
        ``loss_fn(example, structure) -> losses``: ``example`` is an int
        array of shape (P,) indexing the batch, ``structure`` the category
        indices, shape (P,), or the atoms, shape (P, D); it returns the
        losses of shape (P, ...).  ``P = max_pairs``; padding rows repeat a
        real (example, structure) pair and are masked out.
    max_pairs : int, optional
        The packed batch's static size.  Default: every slot (N * K or
        N * M), which always fits; a smaller size (say N times the expected
        support) saves loss evaluations.  If the nonzero pairs do not fit,
        eager calls raise ``ValueError``; traced calls return NaN
        expectations for the examples left out and ``complete = False``.

    Returns
    -------
    Marginal
        ``(expectation, calls, support, complete)``.

    References
    ----------
    Correia, Niculae, Aziz and Martins, "Efficient Marginalization of
    Discrete and Structured Latent Variables via Sparsity", NeurIPS 2020.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import sparsecore_jax
    >>> table = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    >>> def objective(scores):
    ...     probs = sparsecore_jax.sparsemax(scores)
    ...     result = sparsecore_jax.marginalize(probs, lambda n, z: table[n, z], max_pairs=4)
    ...     return result.expectation.sum(), result.calls
    >>> scores = jnp.array([[2.0, 1.5, -1.0], [0.0, 3.0, 0.0]])
    >>> (value, calls), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(scores)
    >>> value, calls
    (Array(6.25, dtype=float32), Array(3, dtype=int32))
    >>> grad[0, :2]
    Array([-0.5,  0.5], dtype=float32)
    """
    probs, atoms = _split_distribution(distribution)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    examples, slots = probs.shape
    total = examples * slots
    if max_pairs is None:
        max_pairs = total
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int | np.integer) or max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive int, got {max_pairs!r}")
    max_pairs = int(min(max_pairs, max(total, 1)))

    invalid = _concrete(jnp.any(jnp.isnan(probs) | (probs < 0)))
    if invalid:
        raise ValueError("probs must be nonnegative and not NaN (a NaN score gives a NaN row)")

    nonzero = (probs != 0).reshape(-1)
    support = jnp.sum((probs != 0).astype(jnp.int32), axis=1)
    calls = jnp.sum(support)
    complete = calls <= max_pairs
    if _concrete(complete) is False:
        raise ValueError(
            f"max_pairs={max_pairs} is too small: the distribution has {int(calls)} nonzero pairs"
        )
    if total == 0:
        expectation = jnp.zeros((examples,), probs.dtype)
        return Marginal(expectation, calls, support, complete)

    (position,) = jnp.nonzero(nonzero, size=max_pairs, fill_value=0)
    valid = jnp.arange(max_pairs) < calls
    example = position // slots
    slot = position % slots
    structure = slot if atoms is None else atoms[example, slot]
    losses = loss_fn(example, structure)
    if not hasattr(losses, "shape") or losses.ndim == 0 or losses.shape[0] != max_pairs:
        raise ValueError(
            f"loss_fn must return one loss per packed pair, shape ({max_pairs}, ...), "
            f"got shape {getattr(losses, 'shape', type(losses).__name__)}"
        )
    trailing = (1,) * (losses.ndim - 1)
    weights = jnp.where(valid, probs.reshape(-1)[position], 0).reshape((max_pairs, *trailing))
    masked = jnp.where(valid.reshape((max_pairs, *trailing)), losses, 0)
    if _concrete(jnp.any(jnp.isnan(masked))):
        raise ValueError("loss_fn returned NaN for a pair with nonzero probability")
    expectation = jax.ops.segment_sum(weights * masked, example, num_segments=examples)
    # Examples with pairs left out of the packed batch have no exact value.
    covered = jax.ops.segment_sum(valid.astype(jnp.int32), example, num_segments=examples)
    exact = (covered == support).reshape((examples, *trailing))
    expectation = jnp.where(exact, expectation, jnp.nan)
    return Marginal(expectation, calls, support, complete)
