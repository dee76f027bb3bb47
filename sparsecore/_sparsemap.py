"""SparseMAP: the projection onto the marginal polytope, by the active-set method."""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from ._lib._namespace import array_namespace, is_jax_namespace, quiet, while_loop
from ._lib._validation import check_floating
from ._structures import _check_positive_int, check_structure_input

__all__ = ["sparsemap", "sparsemap_vjp"]


def sparsemap(
    t: Any,
    structure: Any,
    *,
    max_iter: int | None = None,
    tol: float | None = None,
    max_active: int | None = None,
    method: str = "auto",
    return_converged: bool = False,
) -> Any:
    r"""SparseMAP: the sparse distribution over structures closest to ``t``.

    .. math::

        \mu^\star = \arg\min_{\mu \in \operatorname{conv}\{a_z\}} \|\mu - t\|_2^2,
        \qquad \mu^\star = \sum_z \xi_z a_z,

    found as a sparse convex combination of structures by the active-set
    method, which needs only the structure's ``argmax`` oracle: solve the
    equality-constrained QP on the active atoms (a bordered KKT system with
    their Gram matrix), step back and drop atoms whose weight would turn
    negative, else add the oracle's best atom for ``t - mu`` until the
    duality gap is at most ``tol``.  The batch is solved together, each row
    with its own active set; converged rows stop changing.

    Parameters
    ----------
    t : array of shape (..., D)
        Variable scores of a real floating dtype.
    structure : BitVector, Budget, Categorical or any object with ``argmax``
        The set of structures (see :class:`sparsecore.Structure`).
    max_iter : int, optional
        Most active-set iterations; default ``20 * (max_active + 1)``.
    tol : float, optional
        Relative duality-gap tolerance; the absolute one is
        ``tol * (1 + ||t||^2)``.  Default ``100 * eps`` of the dtype.
    max_active : int, optional
        Number of slots M; default ``D + 1``, enough for an exact solution
        (Carathéodory).  Fewer slots save work when supports are small; a row
        that needs more does not converge.
    method : {"auto", "active_set"}, default "auto"
        ``"auto"`` uses the structure's closed form when it has one (a
        ``sparsemap_closed_form`` method, as :class:`BitVector` does) and the
        active-set method otherwise; ``"active_set"`` always iterates.
        SparseMAP's marginals are unique but its decomposition into atoms
        need not be: the two may return different atoms with equal marginals.
    return_converged : bool, default False
        Also return a boolean array of shape (...) saying which rows
        converged.  Without it an eager call raises ``RuntimeError`` if a row
        did not converge; under ``jax.jit`` those rows' ``probs`` are NaN.

    Returns
    -------
    probs : array of shape (..., M)
        The weights :math:`\xi` of the slots, padding slots exactly 0.
    atoms : array of shape (..., M, D)
        The 0/1 structure of each slot (zeros for padding).
    converged : boolean array of shape (...), only with ``return_converged``

    References
    ----------
    .. [1] V. Niculae, A. F. T. Martins, M. Blondel and C. Cardie, "SparseMAP:
       differentiable sparse structured inference", ICML 2018.
    .. [2] G. M. Correia, V. Niculae, W. Aziz and A. F. T. Martins, "Efficient
       marginalization of discrete and structured latent variables via
       sparsity", NeurIPS 2020, section 4.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsecore import BitVector, sparsemap
    >>> probs, atoms = sparsemap(np.array([0.9, -0.2, 0.5]), BitVector(3))
    >>> probs @ atoms  # the marginals: clip(t, 0, 1) for bit-vectors
    array([0.9, 0. , 0.5])
    """
    xp = array_namespace(t)
    check_floating(t, "t", xp=xp)
    check_structure_input(t, structure, ("argmax",))
    dim = structure.dim
    slots = dim + 1 if max_active is None else _check_positive_int(max_active, "max_active")
    iterations = 20 * (slots + 1) if max_iter is None else _check_positive_int(max_iter, "max_iter")
    if tol is None:
        tol = 100.0 * float(xp.finfo(t.dtype).eps)
    elif not (isinstance(tol, int | float) and tol >= 0):
        raise ValueError(f"tol must be a nonnegative number, got {tol!r}")
    if method not in ("auto", "active_set"):
        raise ValueError(f"method must be 'auto' or 'active_set', got {method!r}")
    batch = t.shape[:-1]
    rows = xp.reshape(t, (-1, dim))
    with quiet(xp):
        if method == "auto" and hasattr(structure, "sparsemap_closed_form"):
            probs, atoms = structure.sparsemap_closed_form(rows)
            probs, atoms, converged = _keep_largest(probs, atoms, slots, xp=xp)
        else:
            probs, atoms, converged = _active_set(rows, structure, slots, iterations, float(tol), xp=xp)
    probs = xp.reshape(probs, (*batch, slots))
    atoms = xp.reshape(atoms, (*batch, slots, dim))
    converged = xp.reshape(converged, batch)
    if return_converged:
        return probs, atoms, converged
    if is_jax_namespace(xp):
        nan = xp.full_like(probs, xp.nan)
        return xp.where(converged[..., None], probs, nan), atoms
    if not bool(xp.all(converged)):
        failed = int(xp.sum(xp.astype(~converged, xp.int32)))
        raise RuntimeError(
            f"sparsemap did not converge on {failed} of {converged.size} rows within "
            f"max_iter={iterations} iterations and max_active={slots} slots; raise them, "
            "or pass return_converged=True to get the rows' status instead"
        )
    return probs, atoms


def sparsemap_vjp(probs: Any, atoms: Any, grad_probs: Any, grad_marginals: Any = None) -> Any:
    r"""Vector-Jacobian product of :func:`sparsemap` w.r.t. ``t``.

    On the support S (slots with positive weight), with Gram matrix
    :math:`G = A_S A_S^\top` and :math:`Z = G^{-1}`,

    .. math::

        \frac{\partial \xi_S}{\partial t} =
        \Bigl(Z - \frac{Z \mathbf{1}\mathbf{1}^\top Z}{\mathbf{1}^\top Z \mathbf{1}}\Bigr) A_S,

    applied through the bordered KKT system (never an explicit inverse).
    The cotangent of the marginals :math:`\mu = A^\top \xi` enters as
    :math:`g_\xi + A g_\mu`.

    Parameters
    ----------
    probs, atoms : arrays of shapes (..., M) and (..., M, D)
        The outputs of :func:`sparsemap`.
    grad_probs : array of shape (..., M)
        Cotangent of ``probs``.
    grad_marginals : array of shape (..., D), optional
        Cotangent of the marginals ``mu = sum_m probs[m] * atoms[m]``.

    Returns
    -------
    grad_t : array of shape (..., D)
    """
    xp = array_namespace(probs, atoms, grad_probs)
    if tuple(grad_probs.shape) != tuple(probs.shape):
        raise ValueError(f"grad_probs must have the shape of probs, got {grad_probs.shape} and {probs.shape}")
    cotangent = grad_probs
    if grad_marginals is not None:
        if tuple(grad_marginals.shape) != (*probs.shape[:-1], atoms.shape[-1]):
            raise ValueError(
                f"grad_marginals must have shape {(*probs.shape[:-1], atoms.shape[-1])}, "
                f"got {grad_marginals.shape}"
            )
        cotangent = cotangent + (atoms @ grad_marginals[..., None])[..., 0]
    support = xp.astype(probs > 0, probs.dtype)
    with quiet(xp):
        gram = atoms @ xp.matrix_transpose(atoms)
        weights = _kkt_solve(gram, support, cotangent * support, 0.0, xp=xp)
    return (weights[..., None, :] @ atoms)[..., 0, :]


def _keep_largest(probs: Any, atoms: Any, slots: int, *, xp: Any) -> tuple[Any, Any, Any]:
    """Keep the ``slots`` heaviest slots; a row that loses weight did not fit."""
    if probs.shape[-1] == slots:
        return probs, atoms, xp.ones(probs.shape[:-1], dtype=xp.bool, device=device(probs))
    order = xp.argsort(probs, axis=-1, descending=True, stable=True)
    probs = xp.take_along_axis(probs, order, axis=-1)
    atoms = xp.take_along_axis(atoms, order[..., None], axis=-2)
    if probs.shape[-1] < slots:
        missing = slots - probs.shape[-1]
        pad = xp.zeros((*probs.shape[:-1], missing), dtype=probs.dtype, device=device(probs))
        pad_atoms = xp.zeros(
            (*atoms.shape[:-2], missing, atoms.shape[-1]), dtype=atoms.dtype, device=device(atoms)
        )
        return (
            xp.concat([probs, pad], axis=-1),
            xp.concat([atoms, pad_atoms], axis=-2),
            xp.ones(probs.shape[:-1], dtype=xp.bool, device=device(probs)),
        )
    fits = xp.all(probs[..., slots:] == 0, axis=-1)
    return probs[..., :slots], atoms[..., :slots, :], fits


def _kkt_solve(gram: Any, active: Any, rhs: Any, total: float, *, xp: Any) -> Any:
    """Solve min x^T G x - 2 rhs.x subject to sum(x) = total on active slots.

    The bordered system ``[[G, 1], [1^T, 0]] [x; nu] = [rhs; total]`` with the
    Gram matrix ``G = A A^T`` restricted to the ``active`` slots (0/1
    floats); inactive slots get identity rows, so their ``x`` is 0.
    """
    slots = gram.shape[-1]
    dtype = gram.dtype
    batch = gram.shape[:-2]
    eye = xp.eye(slots, dtype=dtype, device=device(gram))
    gram = gram * active[..., :, None] * active[..., None, :] + eye * (1.0 - active)[..., :, None]
    border = active[..., :, None]
    corner = xp.zeros((*batch, 1, 1), dtype=dtype, device=device(gram))
    top = xp.concat([gram, border], axis=-1)
    bottom = xp.concat([xp.matrix_transpose(border), corner], axis=-1)
    system = xp.concat([top, bottom], axis=-2)
    last = xp.full((*batch, 1), total, dtype=dtype, device=device(gram))
    solution = xp.linalg.solve(system, xp.concat([rhs * active, last], axis=-1)[..., None])[..., 0]
    return solution[..., :slots] * active


def _grow(state: tuple[Any, ...], capacity: int, *, xp: Any) -> tuple[Any, ...]:
    """Pad the slot axis of the loop state to ``capacity`` (eager only)."""
    weights, atoms, gram, scores, active, done, converged, count = state
    extra = capacity - weights.shape[-1]
    dev = device(weights)

    def pad(x: Any, axis: int) -> Any:
        shape = list(x.shape)
        shape[axis] = extra
        return xp.concat([x, xp.zeros(tuple(shape), dtype=x.dtype, device=dev)], axis=axis)

    gram = pad(pad(gram, -1), -2)
    return pad(weights, -1), pad(atoms, -2), gram, pad(scores, -1), pad(active, -1), done, converged, count


def _active_set(
    t: Any, structure: Any, slots: int, max_iter: int, tol: float, *, xp: Any
) -> tuple[Any, Any, Any]:
    """The batched active-set loop on rows ``t`` of shape (N, D)."""
    rows, dim = t.shape
    dtype = t.dtype
    dev = device(t)
    gap_tol = tol * (1.0 + xp.sum(t * t, axis=-1))
    # Eager namespaces start with few slots and double them when a row runs
    # out (the work grows with the slots in use, not with max_active);
    # under JAX shapes are static, so every slot exists from the start.
    capacity = slots if is_jax_namespace(xp) else min(slots, 8)
    first = structure.argmax(t)
    atoms = xp.concat(
        [first[:, None, :], xp.zeros((rows, capacity - 1, dim), dtype=dtype, device=dev)], axis=-2
    )
    positions = xp.arange(capacity, device=dev)
    active = positions[None, :] == xp.zeros((rows, 1), dtype=positions.dtype, device=dev)
    weights = xp.astype(active, dtype)
    # The Gram matrix of the slots' atoms and their scores, kept up to date
    # as atoms enter (O(M D) a step instead of O(M^2 D)).
    first_norm = xp.sum(first * first, axis=-1)[:, None, None]
    gram = xp.where(
        (positions[:, None] == 0) & (positions[None, :] == 0), first_norm, xp.zeros_like(first_norm)
    )
    scores = xp.where(active, xp.sum(first * t, axis=-1, keepdims=True), xp.zeros_like(weights))
    done = xp.zeros((rows,), dtype=xp.bool, device=dev)
    converged = xp.zeros((rows,), dtype=xp.bool, device=dev)
    count = xp.zeros((), dtype=xp.int32, device=dev)

    def cond(state: tuple[Any, ...]) -> Any:
        *_, done, _, count = state
        return ~xp.all(done) & (count < max_iter)

    def body(state: tuple[Any, ...]) -> tuple[Any, ...]:
        if not is_jax_namespace(xp):
            capacity = state[0].shape[-1]
            full = xp.all(state[4], axis=-1) & ~state[5]
            if capacity < slots and bool(xp.any(full)):
                state = _grow(state, min(slots, 2 * capacity), xp=xp)
        weights, atoms, gram, scores, active, done, converged, count = state
        positions = xp.arange(weights.shape[-1], device=dev)
        solved = _kkt_solve(gram, xp.astype(active, dtype), scores, 1.0, xp=xp)
        # Step back towards the solution when a weight would turn negative.
        negative = active & (solved < 0)
        backtrack = xp.any(negative, axis=-1)
        safe_gap = xp.where(negative, weights - solved, xp.ones_like(weights))
        ratio = xp.where(negative, weights / safe_gap, xp.full_like(weights, xp.inf))
        step = xp.min(ratio, axis=-1, keepdims=True)
        stepped = weights + xp.where(backtrack[:, None], step, xp.ones_like(step)) * (solved - weights)
        dropped = negative & (ratio <= step)
        stepped = xp.where(dropped | ~active, xp.zeros_like(stepped), xp.clip(stepped, min=0.0))
        # Otherwise ask the oracle for the best atom against the residual.
        marginals = (solved[:, None, :] @ atoms)[:, 0, :]
        residual = t - marginals
        candidate = structure.argmax(residual)
        gap = xp.sum((candidate - marginals) * residual, axis=-1)
        known = xp.any(active & xp.all(atoms == candidate[:, None, :], axis=-1), axis=-1)
        optimal = ~backtrack & ((gap <= gap_tol) | known)
        free = ~active
        has_free = xp.any(free, axis=-1)
        first_free = xp.argmax(xp.astype(free, xp.int32), axis=-1)
        new_slot = (positions[None, :] == first_free[:, None]) & has_free[:, None]
        grow = ~done & ~backtrack & ~optimal & has_free
        stuck = ~done & ~backtrack & ~optimal & ~has_free
        live = ~done
        weights = xp.where(
            (live & backtrack)[:, None], stepped, xp.where((live & ~backtrack)[:, None], solved, weights)
        )
        added = grow[:, None] & new_slot
        atoms = xp.where(added[:, :, None], candidate[:, None, :], atoms)
        links = (atoms @ candidate[:, :, None])[..., 0]
        gram = xp.where(added[:, :, None], links[:, None, :], gram)
        gram = xp.where(added[:, None, :], links[:, :, None], gram)
        scores = xp.where(added, xp.sum(candidate * t, axis=-1, keepdims=True), scores)
        active = xp.where((live & backtrack)[:, None], active & ~dropped, active | added)
        converged = converged | (live & optimal)
        done = done | (live & optimal) | stuck
        return weights, atoms, gram, scores, active, done, converged, count + 1

    state = (weights, atoms, gram, scores, active, done, converged, count)
    weights, atoms, _, _, active, done, converged, count = while_loop(cond, body, state, xp=xp)
    if weights.shape[-1] < slots:  # back to the promised max_active slots
        missing = slots - weights.shape[-1]
        weights = xp.concat([weights, xp.zeros((rows, missing), dtype=dtype, device=dev)], axis=-1)
        active = xp.concat([active, xp.zeros((rows, missing), dtype=xp.bool, device=dev)], axis=-1)
        atoms = xp.concat([atoms, xp.zeros((rows, missing, dim), dtype=dtype, device=dev)], axis=-2)
    # Degenerate atoms that ended with weight 0 become padding slots too.
    active = active & (weights > 0)
    weights = xp.where(active, weights, xp.zeros_like(weights))
    atoms = xp.where(active[:, :, None], atoms, xp.zeros_like(atoms))
    return weights, atoms, converged
