"""Sparsemax: the Euclidean projection onto the probability simplex."""

from __future__ import annotations

from typing import Any

from array_api_compat import device, is_cupy_namespace, is_numpy_namespace, is_torch_namespace

from ._kernels._cpu import sparsemax_kernel, sparsemax_vjp_kernel
from ._lib._arrays import from_last, raise_on_nan, to_last
from ._lib._device import on_gpu
from ._lib._namespace import (
    array_namespace,
    concrete_any,
    is_jax_namespace,
    nonnegative_part,
    quiet,
    sign,
    while_loop,
)
from ._lib._validation import check_floating, check_nan_policy, normalize_axis

__all__ = ["sparsemax", "sparsemax_jvp", "sparsemax_vjp"]


def sparsemax(s: Any, axis: int = -1, *, nan_policy: str = "propagate") -> Any:
    r"""Sparsemax of the scores ``s`` along ``axis``.

    The Euclidean projection of the scores onto the probability simplex:

    .. math::

        \operatorname{sparsemax}(s) = \arg\min_{p \in \triangle^K} \|p - s\|_2^2
        = \max(s - \tau, 0),

    with the threshold :math:`\tau` chosen so that :math:`\sum_i p_i = 1`.
    Unlike softmax, the result usually has zeros.

    The threshold is found exactly.  Short rows in small arrays sort (the
    threshold is the largest threshold of a sorted prefix).  Other rows run
    Newton's method on the piecewise-linear equation :math:`\sum_i \max(s_i -
    \tau, 0) = 1` (Michelot's algorithm) from a tight lower bound: the
    threshold of the row's group maxima (the maxima of 8 entries strided
    across the row, found the same way, recursively).  Each step is one pass
    over the scores; a row stops when its mass is 1 up to rounding or its
    support stops shrinking, usually after the first pass, and on NumPy,
    CuPy and PyTorch the later steps of a large array run on the rows that
    have not stopped only.

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
    xp, axis = _check_linear_arguments(p, g, "g", axis)
    return sparsemax_vjp_checked(p, g, axis, xp=xp)


def _check_linear_arguments(p: Any, other: Any, name: str, axis: Any) -> tuple[Any, int]:
    """The namespace and the normalized ``axis`` of a VJP or JVP at ``p``,
    whose vector ``other`` (called ``name``) must have ``p``'s shape."""
    xp = array_namespace(p, other)
    check_floating(p, "p", xp=xp)
    check_floating(other, name, xp=xp)
    if tuple(p.shape) != tuple(other.shape):
        raise ValueError(
            f"{name} must have the shape of p, got {name}.shape={other.shape} and p.shape={p.shape}"
        )
    return xp, normalize_axis(axis, p.ndim)


def sparsemax_checked(s: Any, axis: int, nan_policy: str, *, xp: Any) -> Any:
    """:func:`sparsemax` on validated arguments (``axis`` non-negative).

    The adapters validate at their own boundary and call this, so that a
    call pays for the checks once.  A fused kernel takes the call where one
    applies (see ``sparsecore._kernels``).
    """
    probs = sparsemax_kernel(s, axis, nan_policy, xp=xp)
    if probs is not None:
        return probs
    scores = to_last(s, axis, xp=xp)
    if nan_policy == "raise":
        raise_on_nan(scores, "s", xp=xp)
    with quiet(xp):
        probs = sparsemax_last(scores, xp=xp)
    return from_last(probs, axis, s.dtype, xp=xp)


def sparsemax_vjp_checked(p: Any, g: Any, axis: int, *, xp: Any) -> Any:
    """:func:`sparsemax_vjp` on validated arguments (``axis`` non-negative)."""
    fused = sparsemax_vjp_kernel(p, g, axis, xp=xp)
    if fused is not None:
        return fused
    with quiet(xp):
        grad = sparsemax_vjp_last(to_last(p, axis, xp=xp), to_last(g, axis, xp=xp), xp=xp)
    return from_last(grad, axis, g.dtype, xp=xp)


def prepare_rows(scores: Any, *, xp: Any, maxima: Any | None = None) -> tuple[Any, Any, Any, Any]:
    """Shift each row so that its maximum is 0 and tame non-finite rows.

    Returns ``(base, offset, maxima, fix)``.  The shifted rows are ``base -
    offset`` (``base`` itself when ``offset`` is ``None``): finite with
    maximum 0, or with ``-inf`` entries.  Ordinary rows keep the scores as
    ``base`` and their maxima as ``offset``, so that the shifted rows need not
    be stored.  ``maxima`` are the shifted rows' :func:`group_maxima` when the
    caller passed the scores' own (which hold each row's maximum, so no pass
    over the scores is needed to find it), else ``None``.  ``fix`` is
    ``None`` when every row is ordinary, else ``(nan_rows, empty_rows)`` to
    apply to the result with :func:`apply_fix`.
    """
    row_max = xp.max(scores if maxima is None else maxima, axis=-1, keepdims=True)
    # One test finds every special row: the maximum propagates NaN, is +inf
    # when a row holds +inf and -inf when a row holds only -inf.
    # (``m - m`` is 0 exactly when ``m`` is finite: one operation where
    # PyTorch's ``isfinite`` makes five.)
    special = (row_max - row_max) != 0.0
    if not concrete_any(special, xp=xp):
        return scores, row_max, None if maxima is None else maxima - row_max, None
    # Special rows: NaN, +inf (the row's +inf entries share the mass: they
    # become 0 and everything else -inf) or only -inf.  Rows of NaN or of
    # only -inf are solved on zeros and overwritten after.  The NaN rows are
    # found on the scores: XLA's CPU maximum need not propagate NaN.  The
    # same elementwise map takes the group maxima along (the maxima of the
    # mapped groups), so they need no second pass over the scores.
    nan_rows = xp.any(xp.isnan(scores), axis=-1, keepdims=True)
    posinf_rows = (row_max == xp.inf) & ~nan_rows
    empty_rows = special & ~posinf_rows & ~nan_rows
    blank = nan_rows | empty_rows
    safe_max = xp.where(special, xp.zeros_like(row_max), row_max)

    def tame(x: Any) -> Any:
        zeros = xp.zeros_like(x)
        top = xp.where(x == xp.inf, zeros, xp.full_like(x, -xp.inf))
        return xp.where(posinf_rows, top, xp.where(blank, zeros, x - safe_max))

    return tame(scores), None, None if maxima is None else tame(maxima), (nan_rows, empty_rows)


def apply_fix(probs: Any, fix: Any, *, xp: Any) -> Any:
    """Write NaN into NaN rows and zeros into all -inf rows."""
    if fix is None:
        return probs
    nan_rows, empty_rows = fix
    probs = xp.where(empty_rows, xp.zeros_like(probs), probs)
    return xp.where(nan_rows, xp.full_like(probs, xp.nan), probs)


def shift(base: Any, offset: Any | None) -> Any:
    """The shifted rows ``base - offset`` (``base`` itself when ``offset`` is
    ``None``; callers never write into it)."""
    return base if offset is None else base - offset


# Rows at least this long start Newton's method from the threshold of their
# group maxima: the maxima of GROUP_SIZE entries strided across the row.
GROUP_MIN_SIZE = 32
GROUP_SIZE = 8
# Newton's method stops once the mass at the threshold exceeds 1 by at most
# this many units in the last place: the threshold is then exact up to
# rounding.  (A row whose rounding errors exceed it takes one more step and
# stops because its support no longer shrinks.)
MASS_ULPS = 8.0


def group_maxima(x: Any, *, xp: Any) -> Any:
    """The maxima of groups of ``GROUP_SIZE`` entries of each row.

    Group ``j`` holds the entries ``j, j + G, j + 2G, ...`` of a row of
    ``G * GROUP_SIZE`` entries (a reduction over a strided axis, which
    vectorizes along the contiguous one); the last ``K mod GROUP_SIZE``
    entries join as themselves.  The result is a subset of the row holding its
    maximum, so its sparsemax threshold bounds the row's from below.
    """
    size = x.shape[-1]
    groups = size // GROUP_SIZE
    body = x if groups * GROUP_SIZE == size else x[..., : groups * GROUP_SIZE]
    maxima = xp.max(xp.reshape(body, (*x.shape[:-1], GROUP_SIZE, groups)), axis=-2)
    if groups * GROUP_SIZE < size:
        maxima = xp.concat([maxima, x[..., groups * GROUP_SIZE :]], axis=-1)
    return maxima


def groups(size: int) -> bool:
    """Whether rows of ``size`` entries start from their group maxima."""
    return size >= GROUP_MIN_SIZE and size > GROUP_SIZE


def threshold_last(shifted: Any, *, xp: Any) -> Any:
    """The sparsemax threshold of rows whose maximum is 0 (no special rows)."""
    if sorts(shifted, xp=xp):
        return sorted_threshold(shifted, xp=xp)
    maxima = group_maxima(shifted, xp=xp) if groups(shifted.shape[-1]) else None
    return solve(shifted, None, initial_threshold(shifted, None, maxima, xp=xp), xp=xp)[0]


def initial_threshold(base: Any, offset: Any | None, maxima: Any | None, *, xp: Any) -> Any:
    """A lower bound on the threshold of the shifted rows ``base - offset``
    (maximum 0), from their group ``maxima`` when given.

    The threshold of any subset of a row is a lower bound on the row's (the
    subset's mass function lies below the row's), so the group maxima, which
    are biased towards the largest entries, give a tight start.
    """
    if maxima is not None:
        return threshold_last(maxima, xp=xp)
    # Two lower bounds: the threshold of all entries, and -1, the threshold
    # of the maximum alone (p_max <= 1).
    size = base.shape[-1]
    row_total = xp.sum(shift(base, offset), axis=-1, keepdims=True)
    return xp.clip((row_total - 1.0) / size, min=-1.0)


def solve(base: Any, offset: Any | None, tau: Any, *, xp: Any) -> tuple[Any, Any]:
    """Newton's method (Michelot's algorithm) on the threshold of the shifted
    rows ``base - offset`` from ``tau``, a lower bound.  Returns ``(tau,
    probs)``.

    Each step is one pass over the rows: from a lower bound the mass is at
    least 1, and the step to the threshold of the current support stays a
    lower bound, so the support only shrinks.  A row stops when its mass is 1
    up to rounding, or when its support stops shrinking (its threshold is
    then exact): at most ``K + 1`` passes, one from a tight start.  Where the
    namespace allows data-dependent shapes, the steps after the first run on
    the rows that have not stopped only.
    """
    if on_gpu(base, xp=xp):
        return solve_on_gpu(base, offset, tau, xp=xp)
    if offset is None:
        probs = base - tau
    else:
        # Both subtractions into one fresh array (in place where the
        # namespace allows): the shifted rows are never stored.
        probs = base - offset
        probs -= tau
    probs = nonnegative_part(probs, xp=xp)
    mass = xp.sum(probs, axis=-1, keepdims=True)
    slack = MASS_ULPS * float(xp.finfo(base.dtype).eps)
    active = mass > 1.0 + slack
    if not concrete_any(active, xp=xp):
        return tau, probs
    if compacts(base, xp=xp):
        return solve_compacted(base, offset, tau, probs, mass, active, slack, xp=xp)
    return solve_masked(shift(base, offset), tau, probs, mass, slack, xp=xp)


# Arrays of at least this many entries gather the rows still iterating after
# the first pass; on smaller ones the per-operation overhead of gathering
# costs more than the passes it saves.
COMPACT_MIN_ELEMENTS = 65536


def compacts(x: Any, *, xp: Any) -> bool:
    """Whether Newton's later steps gather the rows still iterating (large
    arrays of eager namespaces with integer-array indexing: NumPy, CuPy,
    PyTorch)."""
    if x.shape[-1] * batch_size(x) < COMPACT_MIN_ELEMENTS:
        return False
    return bool(is_numpy_namespace(xp) or is_torch_namespace(xp) or is_cupy_namespace(xp))


def solve_compacted(
    base: Any, offset: Any | None, tau: Any, probs: Any, mass: Any, active: Any, slack: float, *, xp: Any
) -> tuple[Any, Any]:
    """:func:`solve`'s later steps on the rows still iterating, gathered once
    (then masked) and written back once."""
    shape = probs.shape
    size = shape[-1]
    probs = xp.reshape(probs, (-1, size))
    tau = xp.reshape(tau, (-1, 1))
    rows = xp.nonzero(xp.reshape(active, (-1,)))[0]
    shifted = xp.reshape(base, (-1, size))[rows]
    if offset is not None:
        shifted -= xp.reshape(offset, (-1, 1))[rows]
    part_tau, part_probs = solve_masked(
        shifted, tau[rows], probs[rows], xp.reshape(mass, (-1, 1))[rows], slack, xp=xp
    )
    probs[rows] = part_probs
    tau[rows] = part_tau
    return xp.reshape(tau, (*shape[:-1], 1)), xp.reshape(probs, shape)


def solve_masked(shifted: Any, tau: Any, probs: Any, mass: Any, slack: float, *, xp: Any) -> tuple[Any, Any]:
    """Newton's steps on every row (converged rows frozen) after a first
    pass that gave ``probs`` and ``mass`` at ``tau``."""
    count = xp.sum(sign(probs, xp=xp), axis=-1, keepdims=True)
    active = mass > 1.0 + slack

    def step(state: tuple[Any, Any, Any, Any, Any]) -> tuple[Any, Any, Any, Any, Any]:
        tau, count, _, mass, active = state
        tau = xp.where(active, tau + (mass - 1.0) / count, tau)
        probs = nonnegative_part(shifted - tau, xp=xp)
        mass = xp.sum(probs, axis=-1, keepdims=True)
        new_count = xp.sum(sign(probs, xp=xp), axis=-1, keepdims=True)
        active = active & (new_count < count) & (mass > 1.0 + slack)
        return tau, new_count, probs, mass, active

    tau, _, probs, _, _ = while_loop(
        lambda state: xp.any(state[4]), step, (tau, count, probs, mass, active), xp=xp
    )
    return tau, probs


# On a GPU, Newton's method runs this many steps on every row before the host
# reads whether any row still iterates: from the tight start, rows converge
# within a few steps, and a converged row's step changes nothing.
GPU_FIXED_STEPS = 4


def newton_step(shifted: Any, slack: float, state: tuple[Any, ...], *, xp: Any) -> tuple[Any, ...]:
    """One Newton step on the rows still ``active`` (the others frozen);
    ``state`` is ``(tau, count, probs, mass, active)``."""
    tau, count, probs, mass, active = state
    tau = xp.where(active, tau + (mass - 1.0) / count, tau)
    probs = nonnegative_part(shifted - tau, xp=xp)
    mass = xp.sum(probs, axis=-1, keepdims=True)
    new_count = xp.sum(sign(probs, xp=xp), axis=-1, keepdims=True)
    active = active & (new_count < count) & (mass > 1.0 + slack)
    return tau, new_count, probs, mass, active


def solve_on_gpu(base: Any, offset: Any | None, tau: Any, *, xp: Any) -> tuple[Any, Any]:
    """:func:`solve` without a host read per step, for GPU arrays.

    The first pass and ``GPU_FIXED_STEPS`` Newton steps run on every row with
    no read of a device value; then one read tells whether a row still
    iterates (rare), and only then do the later steps go on from there, on
    those rows only in large arrays (:func:`solve_compacted`).
    """
    shifted = shift(base, offset)
    probs = nonnegative_part(shifted - tau, xp=xp)
    mass = xp.sum(probs, axis=-1, keepdims=True)
    slack = MASS_ULPS * float(xp.finfo(base.dtype).eps)
    count = xp.sum(sign(probs, xp=xp), axis=-1, keepdims=True)
    state = (tau, count, probs, mass, mass > 1.0 + slack)
    for _ in range(GPU_FIXED_STEPS):
        state = newton_step(shifted, slack, state, xp=xp)
    tau, _, probs, mass, active = state
    if not concrete_any(active, xp=xp):
        return tau, probs
    if compacts(base, xp=xp):
        return solve_compacted(base, offset, tau, probs, mass, active, slack, xp=xp)
    return solve_masked(shifted, tau, probs, mass, slack, xp=xp)


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
    if sorts(scores, xp=xp):
        base, offset, _, fix = prepare_rows(scores, xp=xp)
        shifted = shift(base, offset)
        probs = shifted - sorted_threshold(shifted, xp=xp)
        return apply_fix(nonnegative_part(probs, xp=xp), fix, xp=xp)
    # The scores' group maxima hold each row's maximum: one small pass finds
    # both the shift and the subset that starts Newton's method.
    maxima = group_maxima(scores, xp=xp) if groups(scores.shape[-1]) else None
    base, offset, maxima, fix = prepare_rows(scores, xp=xp, maxima=maxima)
    probs = solve(base, offset, initial_threshold(base, offset, maxima, xp=xp), xp=xp)[1]
    return apply_fix(probs, fix, xp=xp)


def sparsemax_vjp_last(probs: Any, cotangent: Any, *, xp: Any) -> Any:
    """Sparsemax VJP along the last axis (no validation)."""
    support = sign(probs, xp=xp)
    count = xp.sum(support, axis=-1, keepdims=True)
    grad = cotangent * support
    mean = xp.sum(grad, axis=-1, keepdims=True) / xp.clip(count, min=1.0)
    # A NaN row's count, and so its mean, is NaN (the sign of NaN is NaN),
    # except in PyTorch, whose sign of NaN is 0: there ``0 * sum(probs)``,
    # 0 or NaN on a NaN row, keeps the row NaN (one more pass elsewhere).
    if is_torch_namespace(xp):
        mean = mean + 0.0 * xp.sum(probs, axis=-1, keepdims=True)
    # grad = (cotangent - mean) * support, with two temporaries in all (the
    # in-place operators write into ``grad`` where the namespace allows; it is
    # batched under ``torch.func`` whenever any operand is).
    grad -= mean
    grad *= support
    # ``+ 0.0`` turns the ``-0.0`` of entries off the support into ``0.0``.
    grad += 0.0
    return grad


def sparsemax_jvp(p: Any, v: Any, axis: int = -1) -> Any:
    r"""Jacobian-vector product of :func:`sparsemax` at its output ``p``.

    The derivative of :math:`p = \operatorname{sparsemax}(s)` in the
    direction :math:`v` of the scores, with the support
    :math:`S = \{i : p_i > 0\}`:

    .. math::

        \dot p = \mathbb{1}_S \odot
        \Bigl(v - \frac{1}{|S|} \sum_{i \in S} v_i\Bigr).

    The Jacobian :math:`\operatorname{diag}(\mathbb{1}_S) - \mathbb{1}_S
    \mathbb{1}_S^\top / |S|` is symmetric, so this is the same linear map as
    :func:`sparsemax_vjp` (and computed by it); it is linear in ``v``, which
    lets JAX transpose it into the reverse mode.

    Parameters
    ----------
    p : array of shape (..., K, ...)
        An output of :func:`sparsemax` or :func:`topk_sparsemax`.
    v : array of the shape of ``p``
        The tangent: a direction in the space of the scores.
    axis : int, default -1
        The axis of the ``K`` categories.

    Returns
    -------
    tangent : array of the shape, namespace and dtype of ``v``
        The derivative of the output in the direction ``v``.

    Raises
    ------
    TypeError
        If ``p`` or ``v`` is not of a real floating dtype.
    ValueError
        If ``v`` does not have the shape of ``p`` or ``axis`` is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsecore import sparsemax, sparsemax_jvp
    >>> p = sparsemax(np.array([0.0, 0.5, 1.0]))
    >>> sparsemax_jvp(p, np.array([1.0, 2.0, 0.0]))
    array([ 0.,  1., -1.])
    """
    xp, axis = _check_linear_arguments(p, v, "v", axis)
    return sparsemax_jvp_checked(p, v, axis, xp=xp)


def sparsemax_jvp_checked(p: Any, v: Any, axis: int, *, xp: Any) -> Any:
    """:func:`sparsemax_jvp` on validated arguments: the VJP's linear map,
    since the Jacobian is symmetric."""
    return sparsemax_vjp_checked(p, v, axis, xp=xp)
