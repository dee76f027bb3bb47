"""Top-k sparsemax: sparsemax restricted to the k largest scores."""

from __future__ import annotations

from typing import Any

from ._kernels._cpu import topk_sparsemax_kernel
from ._lib._arrays import from_last, raise_on_nan, to_last
from ._lib._namespace import array_namespace, quiet
from ._lib._select import kth_largest
from ._lib._validation import check_floating, check_k, check_nan_policy, normalize_axis
from ._sparsemax import sparsemax_jvp, sparsemax_last, sparsemax_vjp

__all__ = ["topk_is_exact", "topk_mask", "topk_sparsemax", "topk_sparsemax_jvp", "topk_sparsemax_vjp"]


def topk_sparsemax(s: Any, k: int, axis: int = -1, *, nan_policy: str = "propagate") -> Any:
    r"""Sparsemax over the ``k`` largest scores of ``s`` along ``axis``.

    Entries outside the ``k`` largest are masked to :math:`-\infty` before
    :func:`sparsemax`, so the output has at most ``k`` nonzeros:

    .. math::

        \operatorname{topk\_sparsemax}(s) =
        \operatorname{sparsemax}(s \text{ with } s_i = -\infty
        \text{ for } i \notin \operatorname{top}_k(s)).

    Ties at the k-th largest value are broken by position (lower index
    first), as :func:`torch.topk` does.  Whenever the output has fewer than
    ``k`` nonzeros it equals :func:`sparsemax` exactly; :func:`topk_is_exact`
    reports that certificate per row.

    Parameters
    ----------
    s : array of shape (..., K, ...)
        Scores of a real floating dtype (see :func:`sparsemax` for the
        handling of ``-inf``, ``+inf``, NaN and half precisions).
    k : int
        How many of the largest scores to keep, ``1 <= k <= K``.
    axis : int, default -1
        The axis of the ``K`` categories.
    nan_policy : {"propagate", "raise"}, default "propagate"
        As in :func:`sparsemax`.

    Returns
    -------
    probs : array of the shape, namespace, device and dtype of ``s``
        Nonnegative, summing to 1 along ``axis``, at most ``k`` nonzeros.

    Raises
    ------
    TypeError
        If ``k`` is not an integer or ``s`` is not of a real floating dtype.
    ValueError
        If ``k`` is outside ``1..K``.

    References
    ----------
    .. [1] G. M. Correia, V. Niculae, W. Aziz and A. F. T. Martins, "Efficient
       marginalization of discrete and structured latent variables via
       sparsity", NeurIPS 2020, section 3.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsecore import topk_sparsemax, topk_is_exact
    >>> probs = topk_sparsemax(np.array([1.0, 0.9, 0.8, 0.0]), k=2)
    >>> probs
    array([0.55, 0.45, 0.  , 0.  ])
    >>> bool(topk_is_exact(probs, k=2))
    False
    """
    xp = array_namespace(s)
    check_floating(s, "s", xp=xp)
    nan_policy = check_nan_policy(nan_policy)
    axis = normalize_axis(axis, s.ndim)
    size = s.shape[axis]
    k = check_k(k, size)
    fused = topk_sparsemax_kernel(s, k, axis, nan_policy, xp=xp)
    if fused is not None:
        return fused
    scores = to_last(s, axis, xp=xp)
    if nan_policy == "raise":
        raise_on_nan(scores, "s", xp=xp)
    with quiet(xp):
        if k < size:
            # NaN entries stay, so that their row comes out NaN as in sparsemax.
            kept = topk_mask(scores, k, xp=xp) | xp.isnan(scores)
            scores = xp.where(kept, scores, xp.full_like(scores, -xp.inf))
        probs = sparsemax_last(scores, xp=xp)
    return from_last(probs, axis, s.dtype, xp=xp)


def topk_sparsemax_vjp(p: Any, g: Any, axis: int = -1) -> Any:
    """Vector-Jacobian product of :func:`topk_sparsemax` at its output ``p``.

    The top-k selection is locally constant, so this is the sparsemax VJP
    on the output's support (:func:`sparsemax_vjp`).
    """
    return sparsemax_vjp(p, g, axis=axis)


def topk_is_exact(probs: Any, k: int, axis: int = -1) -> Any:
    """Whether each top-k sparsemax row equals the full sparsemax.

    A row with fewer than ``k`` nonzeros (or with ``k >= K``) is certified
    exact: the k-th largest score then got probability 0, so every score
    outside the top k lies below the threshold too.

    Parameters
    ----------
    probs : array of shape (..., K, ...)
        An output of :func:`topk_sparsemax`.
    k : int
        The ``k`` it was computed with.
    axis : int, default -1
        The axis of the ``K`` categories.

    Returns
    -------
    exact : boolean array of shape ``probs.shape`` without ``axis``
    """
    xp = array_namespace(probs)
    check_floating(probs, "probs", xp=xp)
    axis = normalize_axis(axis, probs.ndim)
    size = probs.shape[axis]
    k = check_k(k, size)
    nonzeros = xp.sum(xp.astype(probs > 0, xp.int32), axis=axis)
    if k == size:
        return nonzeros >= 0
    return nonzeros < k


def topk_mask(scores: Any, k: int, *, xp: Any) -> Any:
    """Boolean mask of the k largest entries of each row (last axis).

    Exactly ``k`` entries are kept in every row without NaN; ties at the
    k-th largest value are broken by position.
    """
    kth = kth_largest(scores, k, xp=xp)
    above = scores > kth
    at = scores == kth
    room = k - xp.sum(xp.astype(above, xp.int32), axis=-1, keepdims=True)
    rank_at = xp.cumulative_sum(xp.astype(at, xp.int32), axis=-1)
    return above | (at & (rank_at <= room))


def topk_sparsemax_jvp(p: Any, v: Any, axis: int = -1) -> Any:
    """Jacobian-vector product of :func:`topk_sparsemax` at its output ``p``.

    The top-k selection is locally constant, so this is the sparsemax JVP on
    the output's support (:func:`sparsemax_jvp`): ``v`` projected onto the
    support and centered there.
    """
    return sparsemax_jvp(p, v, axis=axis)
