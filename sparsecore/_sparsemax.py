"""Sparsemax: the Euclidean projection onto the probability simplex."""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from ._lib._arrays import from_last, raise_on_nan, to_last
from ._lib._namespace import array_namespace, concrete_any, is_jax_namespace, quiet, sign, while_loop
from ._lib._select import largest_values
from ._lib._validation import check_floating, check_nan_policy, normalize_axis

__all__ = ["sparsemax", "sparsemax_vjp"]


def sparsemax(s: Any, axis: int = -1, *, nan_policy: str = "propagate") -> Any:
    r"""Sparsemax of the scores ``s`` along ``axis``.

    The Euclidean projection of the scores onto the probability simplex:

    .. math::

        \operatorname{sparsemax}(s) = \arg\min_{p \in \triangle^K} \|p - s\|_2^2
        = \max(s - \tau, 0),

    with the threshold :math:`\tau` chosen so that :math:`\sum_i p_i = 1`.
    Unlike softmax, the result usually has zeros.

    The threshold is found exactly by Newton's method on the piecewise-linear
    equation :math:`\sum_i \max(s_i - \tau, 0) = 1` (Michelot's algorithm),
    started from the lower bound :math:`\max(\max_i s_i - 1, (\sum_i s_i -
    1)/K)`.  Each step is one pass over the scores; the support shrinks at
    every step and the iteration stops when it no longer does, at which point
    the threshold is exact (at most ``K + 1`` steps, a handful in practice).
    No sort is needed.

    Parameters
    ----------
    s : array of shape (..., K, ...)
        Scores, of a real floating dtype, in any array-API namespace (NumPy,
        CuPy, PyTorch, JAX, array-api-strict).  ``-inf`` entries are masked
        out (probability 0); ``+inf`` entries share the mass equally; a row of
        only ``-inf`` gives all zeros.  float16 and bfloat16 are computed in
        float32 and returned in their own dtype.
    axis : int, default -1
        The axis of the ``K`` categories.
    nan_policy : {"propagate", "raise"}, default "propagate"
        With ``"propagate"`` a row holding NaN gives a row of NaN and leaves
        the other rows untouched; ``"raise"`` raises ``ValueError`` instead
        (eager arrays only).

    Returns
    -------
    probs : array of the shape, namespace, device and dtype of ``s``
        Nonnegative, summing to 1 along ``axis``.

    Raises
    ------
    TypeError
        If ``s`` is not of a real floating dtype or ``axis`` is not an integer.
    ValueError
        If ``axis`` is out of range or has size 0.

    See Also
    --------
    sparsemax_vjp : its vector-Jacobian product.
    topk_sparsemax : sparsemax restricted to the ``k`` largest scores.

    References
    ----------
    .. [1] A. F. T. Martins and R. F. Astudillo, "From softmax to sparsemax: a
       sparse model of attention and multi-label classification", ICML 2016.
    .. [2] G. M. Correia, V. Niculae, W. Aziz and A. F. T. Martins, "Efficient
       marginalization of discrete and structured latent variables via
       sparsity", NeurIPS 2020.
    .. [3] C. Michelot, "A finite algorithm for finding the projection of a
       point onto the canonical simplex of R^n", JOTA 50(1), 1986.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsecore import sparsemax
    >>> sparsemax(np.array([0.0, 0.5, 1.0]))
    array([0.  , 0.25, 0.75])
    >>> sparsemax(np.array([0.0, -np.inf, 0.0]))
    array([0.5, 0. , 0.5])
    """
    xp = array_namespace(s)
    check_floating(s, "s", xp=xp)
    nan_policy = check_nan_policy(nan_policy)
    axis = normalize_axis(axis, s.ndim)
    if s.shape[axis] == 0:
        raise ValueError(f"sparsemax needs at least one category along axis={axis}, got shape {s.shape}")
    return sparsemax_checked(s, axis, nan_policy, xp=xp)


def sparsemax_vjp(p: Any, g: Any, axis: int = -1) -> Any:
    r"""Vector-Jacobian product of :func:`sparsemax` at its output ``p``.

    With the support :math:`S = \{i : p_i > 0\}`,

    .. math::

        \frac{\partial \ell}{\partial s} = \mathbb{1}_S \odot
        \Bigl(g - \frac{1}{|S|} \sum_{i \in S} g_i\Bigr).

    Only the output is needed, not the scores.  Masked (``-inf``) entries and
    rows of all zeros get gradient 0; a NaN row gets a NaN row.

    Parameters
    ----------
    p : array of shape (..., K, ...)
        An output of :func:`sparsemax` or :func:`topk_sparsemax`.
    g : array of the shape of ``p``
        The cotangent: the gradient of the loss w.r.t. ``p``.
    axis : int, default -1
        The axis of the ``K`` categories.

    Returns
    -------
    grad : array of the shape, namespace and dtype of ``g``
        The gradient w.r.t. the scores.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsecore import sparsemax, sparsemax_vjp
    >>> p = sparsemax(np.array([0.0, 0.5, 1.0]))
    >>> sparsemax_vjp(p, np.array([1.0, 2.0, 0.0]))
    array([ 0.,  1., -1.])
    """
    xp = array_namespace(p, g)
    check_floating(p, "p", xp=xp)
    check_floating(g, "g", xp=xp)
    if tuple(p.shape) != tuple(g.shape):
        raise ValueError(f"g must have the shape of p, got g.shape={g.shape} and p.shape={p.shape}")
    axis = normalize_axis(axis, p.ndim)
    return sparsemax_vjp_checked(p, g, axis, xp=xp)


def sparsemax_checked(s: Any, axis: int, nan_policy: str, *, xp: Any) -> Any:
    """:func:`sparsemax` on validated arguments (``axis`` non-negative).

    The adapters validate at their own boundary and call this, so that a
    call pays for the checks once.
    """
    scores = to_last(s, axis, xp=xp)
    if nan_policy == "raise":
        raise_on_nan(scores, "s", xp=xp)
    with quiet(xp):
        probs = sparsemax_last(scores, xp=xp)
    return from_last(probs, axis, s.dtype, xp=xp)


def sparsemax_vjp_checked(p: Any, g: Any, axis: int, *, xp: Any) -> Any:
    """:func:`sparsemax_vjp` on validated arguments (``axis`` non-negative)."""
    with quiet(xp):
        grad = sparsemax_vjp_last(to_last(p, axis, xp=xp), to_last(g, axis, xp=xp), xp=xp)
    return from_last(grad, axis, g.dtype, xp=xp)


def prepare_rows(scores: Any, *, xp: Any) -> tuple[Any, Any, Any]:
    """Shift each row so that its maximum is 0 and tame non-finite rows.

    Returns ``(shifted, row_total, fix)``: ``shifted`` has finite rows with
    maximum 0 (or ``-inf`` entries); ``row_total`` its row sums; ``fix`` is
    ``None`` when every row is ordinary, else ``(nan_rows, empty_rows)`` to
    apply to the result with :func:`apply_fix`.
    """
    row_max = xp.max(scores, axis=-1, keepdims=True)
    shifted = scores - row_max
    row_total = xp.sum(shifted, axis=-1, keepdims=True)
    # One test finds every special row: a NaN entry, a +inf maximum
    # (inf - inf) and a row of only -inf (-inf + inf) all make the shifted
    # total NaN, while an ordinary row's total is finite or -inf.
    if not concrete_any(xp.isnan(row_total), xp=xp):
        return shifted, row_total, None
    special = ~xp.isfinite(row_max) | xp.isnan(row_total)
    nan_rows = xp.any(xp.isnan(scores), axis=-1, keepdims=True)
    posinf_rows = (row_max == xp.inf) & ~nan_rows
    empty_rows = special & ~posinf_rows & ~nan_rows
    zeros = xp.zeros_like(scores)
    # A row with +inf entries: they share the mass, everything else is -inf.
    posinf_shifted = xp.where(scores == xp.inf, zeros, xp.full_like(scores, -xp.inf))
    # Rows of NaN or of only -inf are solved on zeros and overwritten after.
    replacement = xp.where(posinf_rows, posinf_shifted, zeros)
    shifted = xp.where(special, replacement, shifted)
    row_total = xp.sum(shifted, axis=-1, keepdims=True)
    return shifted, row_total, (nan_rows, empty_rows)


def apply_fix(probs: Any, fix: Any, *, xp: Any) -> Any:
    """Write NaN into NaN rows and zeros into all -inf rows."""
    if fix is None:
        return probs
    nan_rows, empty_rows = fix
    probs = xp.where(empty_rows, xp.zeros_like(probs), probs)
    return xp.where(nan_rows, xp.full_like(probs, xp.nan), probs)


def newton_step(
    shifted: Any, state: tuple[Any, Any, Any, Any], *, xp: Any, start: bool = False
) -> tuple[Any, Any, Any, Any]:
    """One Michelot/Newton step on the threshold, frozen where converged.

    ``state`` is ``(tau, size, probs, active)``: ``tau`` is the threshold of
    a set of ``size`` entries, and ``active`` marks the rows still iterating.
    ``tau`` is exact when that set is the support ``{shifted > tau}``, and
    the sets are nested, so comparing sizes decides.  After a step the set
    holds the new support (the support only shrinks); at the ``start`` it
    may instead lie inside it (a subset's support).
    """
    tau, size, _, active = state
    probs = xp.clip(shifted - tau, min=0.0)
    mass = xp.sum(probs, axis=-1, keepdims=True)
    count = xp.sum(sign(probs, xp=xp), axis=-1, keepdims=True)
    # Once the support stops shrinking the threshold that produced it is
    # exact and ``probs`` is the answer.
    active = active & ((count != size) if start else (count < size))
    tau = xp.where(active, tau + (mass - 1.0) / count, tau)
    return tau, count, probs, active


# Rows at least this long start from the threshold of their largest entries.
CANDIDATE_MIN_SIZE = 2048
# How many of the largest entries: a row whose support is smaller is solved
# by them alone (one more pass writes the output); a larger support still
# starts Newton's method from their threshold, a tight lower bound.
CANDIDATES = 16
# Shorter rows of at least GROUP_MIN_SIZE entries start from the threshold of
# their group maxima (groups of GROUP_SIZE consecutive entries).
GROUP_MIN_SIZE = 64
GROUP_SIZE = 8


def initial_threshold(shifted: Any, row_total: Any | None, *, xp: Any) -> tuple[Any, Any, Any]:
    """A lower bound on the threshold of rows with maximum 0 and sums ``row_total``
    (computed here when ``None`` and needed).

    Returns ``(tau, size, exact)``: ``tau`` is the threshold of a set of
    ``size`` entries that either holds the support or lies inside it (see
    :func:`newton_step`), and ``exact`` marks the rows where it is exact.

    The threshold of any subset of a row is a lower bound on the row's (the
    subset's mass function lies below the row's), so a subset biased towards
    the largest entries gives a tight start for Newton's method.
    """
    size = shifted.shape[-1]
    if size >= CANDIDATE_MIN_SIZE and size > CANDIDATES:
        # The largest entries, by native partial selection: their threshold is
        # exact when the smallest of them gets probability 0, because every
        # other entry lies below it too.
        largest = largest_values(shifted, CANDIDATES, xp=xp)
        subset_tau, subset_size = threshold_last(largest, xp=xp)
        exact = xp.min(largest, axis=-1, keepdims=True) <= subset_tau
    elif size >= GROUP_MIN_SIZE and size > GROUP_SIZE:
        # The maxima of groups of consecutive entries: one cheap reduction.
        # Every entry is in a group (the last one possibly shorter), so the
        # maxima hold the row's maximum 0 and are a subset of the row.
        groups = size // GROUP_SIZE
        grouped = xp.reshape(shifted[..., : groups * GROUP_SIZE], (*shifted.shape[:-1], groups, GROUP_SIZE))
        maxima = xp.max(grouped, axis=-1)
        if groups * GROUP_SIZE < size:
            rest = xp.max(shifted[..., groups * GROUP_SIZE :], axis=-1, keepdims=True)
            maxima = xp.concat([maxima, rest], axis=-1)
        subset_tau, subset_size = threshold_last(maxima, xp=xp)
        exact = xp.zeros(subset_tau.shape, dtype=xp.bool, device=device(shifted))
    else:
        # Two lower bounds: the threshold of all entries, and -1, the
        # threshold of the maximum alone (p_max <= 1).  A subset's threshold
        # is at least -1 (the subset holds the maximum); only rows with an
        # almost full support start lower from it than from all entries, and
        # those take one more step.
        if row_total is None:
            row_total = xp.sum(shifted, axis=-1, keepdims=True)
        full_tau = (row_total - 1.0) / size
        tau = xp.clip(full_tau, min=-1.0)
        tau_size = xp.where(full_tau > -1.0, xp.full_like(tau, size), xp.ones_like(tau))
        return tau, tau_size, xp.zeros(tau.shape, dtype=xp.bool, device=device(shifted))
    return subset_tau, subset_size, exact


def threshold_last(shifted: Any, *, xp: Any) -> tuple[Any, Any]:
    """The sparsemax threshold of rows whose maximum is 0 (no special rows),
    and the size of their support."""
    if sorts(shifted, xp=xp):
        tau = sorted_threshold(shifted, xp=xp)
        # The support counted as Newton's step counts it, so that it lies
        # inside the support of any superset at this threshold.
        count = xp.sum(sign(xp.clip(shifted - tau, min=0.0), xp=xp), axis=-1, keepdims=True)
        return tau, count
    tau, size, exact = initial_threshold(shifted, None, xp=xp)
    tau, count, _, _ = solve(shifted, tau, size, exact, xp=xp)
    return tau, count


def solve(shifted: Any, tau: Any, size: Any, exact: Any, *, xp: Any) -> tuple[Any, Any, Any, Any]:
    """Newton's method from ``tau``, the threshold of a set of ``size``
    entries (see :func:`newton_step`); rows in ``exact`` are exact."""
    state = newton_step(shifted, (tau, size, None, ~exact), xp=xp, start=True)
    return while_loop(  # type: ignore[no-any-return]
        lambda state: xp.any(state[3]),
        lambda state: newton_step(shifted, state, xp=xp),
        state,
        xp=xp,
    )


# Rows at most this long sort (a few operations in all, where the per-call
# overhead dominates) when the whole array has at most SORT_MAX_ELEMENTS
# entries (PyTorch's CPU sort slows down sharply on larger arrays); other
# rows iterate.
SORT_MAX_SIZE = 32
SORT_MAX_ELEMENTS = 16384


def sorts(shifted: Any, *, xp: Any) -> bool:
    """Whether the threshold of these rows is found by sorting."""
    # XLA's CPU sort costs more than a few fused Newton passes: JAX iterates.
    size = shifted.shape[-1]
    small = size <= SORT_MAX_SIZE and size * batch_size(shifted) <= SORT_MAX_ELEMENTS
    return small and not is_jax_namespace(xp)


def batch_size(x: Any) -> int:
    """The number of rows of ``x`` (its shape without the last axis)."""
    rows = 1
    for extent in x.shape[:-1]:
        rows *= extent
    return rows


def sorted_threshold(shifted: Any, *, xp: Any) -> Any:
    """The exact threshold by sorting (Martins and Astudillo's algorithm).

    Every prefix of the sorted row has a threshold (its mass at that
    threshold is 1) that bounds the row's from below, and the prefix that is
    the support attains it: the threshold is the largest of them.
    """
    ordered = xp.sort(shifted, axis=-1, descending=True)
    cumulative = xp.cumulative_sum(ordered, axis=-1)
    sizes = xp.arange(1, shifted.shape[-1] + 1, dtype=shifted.dtype, device=device(shifted))
    return xp.max((cumulative - 1.0) / sizes, axis=-1, keepdims=True)


def sparsemax_last(scores: Any, *, xp: Any) -> Any:
    """Sparsemax along the last axis of a floating array (no validation)."""
    shifted, row_total, fix = prepare_rows(scores, xp=xp)
    if sorts(shifted, xp=xp):
        probs = xp.clip(shifted - sorted_threshold(shifted, xp=xp), min=0.0)
    else:
        tau, size, exact = initial_threshold(shifted, row_total, xp=xp)
        probs = solve(shifted, tau, size, exact, xp=xp)[2]
    return apply_fix(probs, fix, xp=xp)


def sparsemax_vjp_last(probs: Any, cotangent: Any, *, xp: Any) -> Any:
    """Sparsemax VJP along the last axis (no validation)."""
    support = sign(probs, xp=xp)
    count = xp.sum(support, axis=-1, keepdims=True)
    # ``0 * sum(probs)`` is 0, or NaN on a NaN row, which then stays NaN.
    nan_guard = 0.0 * xp.sum(probs, axis=-1, keepdims=True)
    mean = xp.sum(cotangent * support, axis=-1, keepdims=True) / xp.clip(count, min=1.0) + nan_guard
    # ``+ 0.0`` turns the ``-0.0`` of entries off the support into ``0.0``.
    return (cotangent - mean) * support + 0.0
