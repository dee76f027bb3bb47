"""The active set solving the bordered KKT system anew at every step: the
retry for rows whose incremental rank-one updates went astray."""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from .._lib._control import while_loop
from .._lib._device import on_gpu
from .._lib._namespace import is_jax_namespace
from .._structures import unchecked_argmax
from ._kkt import _kkt_solve

# On a GPU the loops read the host (which waits for the queued kernels) at
# every GPU_CHECK_EVERY-th step only; rows that finished in between stay,
# frozen, a few steps.
GPU_CHECK_EVERY = 4


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


def _active_set_fixed(
    t: Any, structure: Any, slots: int, max_iter: int, tol: float, *, xp: Any
) -> tuple[Any, Any, Any]:
    """The batched active-set loop on rows ``t`` of shape (N, D), solving the
    bordered KKT system anew at every step.

    Rows that the incremental loops of :mod:`._driver` leave unconverged
    come here (rare: degenerate, nearly dependent atoms, mostly in float32):
    solving anew at every step does not drift, and atoms enter whenever the
    gap asks for them.  The step is the same active-set step as
    :func:`._step._iterate` (step back and drop the first weight to reach 0,
    else add the oracle's atom), without the rank-one bookkeeping.
    """
    rows, dim = t.shape
    dtype = t.dtype
    dev = device(t)
    gap_tol = tol * (1.0 + xp.sum(t * t, axis=-1))
    # Eager namespaces on the CPU start with few slots and double them when a
    # row runs out (the work grows with the slots in use, not with
    # max_active), a host read at every step; under JAX shapes are static,
    # and on a GPU the host is read every GPU_CHECK_EVERY steps only, so
    # there every slot exists from the start.
    gpu = on_gpu(t, xp=xp)
    growing = not (is_jax_namespace(xp) or gpu)
    capacity = min(slots, 8) if growing else slots
    first = unchecked_argmax(structure, t, xp=xp)
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
        return ~xp.all(state[5])

    def body(state: tuple[Any, ...]) -> tuple[Any, ...]:
        if growing:
            capacity = state[0].shape[-1]
            full = xp.all(state[4], axis=-1) & ~state[5]
            if capacity < slots and bool(xp.any(full)):
                state = _grow(state, min(slots, 2 * capacity), xp=xp)
        weights, atoms, gram, scores, active, done, converged, count = state
        # Rows out of iterations stop, so that steps past a check change nothing.
        done = done | (count >= max_iter)
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
        candidate = unchecked_argmax(structure, residual, xp=xp)
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
    weights, atoms, _, _, active, done, converged, count = while_loop(
        cond, body, state, xp=xp, check_every=GPU_CHECK_EVERY if gpu else 1
    )
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
