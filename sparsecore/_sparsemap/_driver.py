"""The active-set method on a batch of rows: the loops around the one step.

:func:`_active_set` runs the step of :mod:`._step` until every row is
certified or out of iterations.  Under JAX the rows keep static shapes (a
fixed number of columns per phase; :func:`_run_static`).  Eager namespaces
run the same step on growing buffers from which finished rows leave
(:func:`_run_eager`, with the storage of :mod:`._buffers`).  Rows left
unconverged by either, which cycle on nearly dependent atoms, are solved
again by :mod:`._fixed`, which solves the KKT system anew at every step.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from array_api_compat import device

from .._lib._control import cond, while_loop
from .._lib._device import on_gpu
from .._lib._namespace import array_namespace, is_jax_namespace, take
from ._buffers import _assemble, _keep_rows, _rank_one, _resize, _squeeze, _take_rows
from ._fixed import GPU_CHECK_EVERY, _active_set_fixed
from ._kkt import _refresh
from ._step import _compact, _iterate, _Rows, _start, _step_in_place, _widen


def _gpu_check_step(width: int, capacity: int) -> bool:
    """Whether the eager GPU loop reads the host at this step (``width``
    grows by one a step)."""
    return width % GPU_CHECK_EVERY == 0 or width == capacity


def _active_set(
    t: Any, structure: Any, slots: int, max_iter: int, tol: float, *, xp: Any
) -> tuple[Any, Any, Any]:
    """The batched active-set method on rows ``t`` of shape (N, D).

    Returns ``(weights, atoms, converged)`` with ``slots`` slots per row.
    Rows still running after about twice the most atoms a row can hold are
    cycling on degenerate atoms: they start again in :func:`_retry`, for up
    to ``max_iter`` steps (under JAX inside ``cond``: only when there are
    such rows).
    """
    budget = min(max_iter, 2 * slots + 16)
    again = partial(_retry, structure=structure, slots=slots, max_iter=max_iter, tol=tol)
    if is_jax_namespace(xp):
        first = _run_static(t, structure=structure, slots=slots, budget=budget, tol=tol)

        def retry(current: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
            weights, atoms, converged = again(t)
            keep = current[2]
            return (
                xp.where(keep[:, None], current[0], weights),
                xp.where(keep[:, None, None], current[1], atoms),
                keep | converged,
            )

        return cond(xp.all(first[2]), lambda current: current, retry, first, xp=xp)
    weights, atoms, _, converged = _run_eager(t, structure, slots, budget, tol, xp=xp)
    failed = int(xp.sum(xp.astype(~converged, xp.int32)))
    if failed == 0:
        return weights, atoms, converged
    split = xp.argsort(xp.astype(converged, xp.int8), stable=True)  # unconverged rows first
    kept, retried = split[failed:], again(take(t, split[:failed], axis=0, xp=xp))
    back = xp.argsort(xp.concat([kept, split[:failed]], axis=0))
    return tuple(  # type: ignore[return-value]
        take(xp.concat([take(x, kept, axis=0, xp=xp), y], axis=0), back, axis=0, xp=xp)
        for x, y in zip((weights, atoms, converged), retried, strict=True)
    )


def _retry(t: Any, *, structure: Any, slots: int, max_iter: int, tol: float) -> tuple[Any, Any, Any]:
    """Rows ``t`` solved from the start with the KKT system solved anew at
    every step."""
    return _active_set_fixed(t, structure, slots, max_iter, tol, xp=array_namespace(t))


def _run_static(t: Any, *, structure: Any, slots: int, budget: int, tol: float) -> tuple[Any, Any, Any]:
    """The active set with static shapes, ``budget`` steps at most.

    Each row holds its active atoms in a fixed number of columns, one more
    than it may fill.  The columns double in phases, from 16 up to
    ``slots + 1``: a phase runs until every row is done or out of room, and
    the rows out of room go on in the next, wider phase, so that the work
    follows the widest support found so far rather than ``D + 2`` columns
    from the start.
    """
    xp = array_namespace(t)
    widths = [min(slots + 1, 16)]
    while widths[-1] < slots + 1:
        widths.append(min(slots + 1, 2 * widths[-1]))
    state = _start(t, structure, widths[0], tol, xp=xp)
    count = xp.zeros((), dtype=xp.int32, device=device(t))
    check_every = GPU_CHECK_EVERY if on_gpu(t, xp=xp) else 1
    for width in widths:
        if width > state.atoms.shape[1]:
            # Rows that stopped for want of room go on with more columns.
            full = xp.sum(xp.astype(state.active, xp.int32), axis=-1) == state.atoms.shape[1] - 1
            state = _widen(state, width, xp=xp)
            state = state._replace(done=state.done & ~(full & ~state.converged))
        room = min(slots, width - 1)

        def step(carry: tuple[_Rows, Any], room: int = room) -> tuple[_Rows, Any]:
            rows, steps = carry
            # Rows out of steps stop, so that steps past the check do nothing.
            rows = rows._replace(done=rows.done | (steps >= budget))
            return _step_in_place(rows, structure, room, xp=xp), steps + 1

        state, count = while_loop(
            lambda carry: ~xp.all(carry[0].done), step, (state, count), xp=xp, check_every=check_every
        )
    weights, atoms, _, converged = _compact(
        state.weights, state.atoms, state.active, state.converged, slots, xp=xp
    )
    return weights, atoms, converged


def _run_eager(
    t: Any, structure: Any, slots: int, budget: int, tol: float, *, xp: Any
) -> tuple[Any, Any, Any, Any]:
    """Eager namespaces: entering atoms fill the columns of growing buffers
    in order (a slice assignment, not a pass over every slot), and rows that
    finish leave the batch, so that the work follows the rows still running
    and the slots they use.  Doubtful rows get their inverse recomputed in
    the buffers."""
    rows = t.shape[0]
    dtype = t.dtype
    dev = device(t)
    gpu = on_gpu(t, xp=xp)
    state = _start(t, structure, 1, tol, xp=xp)
    # Columns: at most ``slots`` atoms are active in a row; one more column
    # leaves room for an entering atom.  Buffers start small and double.
    limit = slots + 1
    capacity = min(limit, 8)
    atoms, inverse = _resize(state.atoms, state.inverse, capacity, xp=xp)
    order = xp.arange(rows, device=dev)  # original row of each row in the batch
    width = 1  # columns in use
    finished: list[tuple[Any, ...]] = []
    for _ in range(budget):
        if width == capacity:
            state, atoms, inverse, width = _squeeze(state, atoms, inverse, xp=xp)
            if width + 1 > capacity // 2 and capacity < limit:
                capacity = min(limit, 2 * capacity)
            atoms, inverse = _resize(atoms, inverse, capacity, xp=xp)
        pad = xp.zeros((state.t.shape[0], 1), dtype=dtype, device=dev)
        state = state._replace(
            atoms=atoms[:, : width + 1, :],
            inverse=inverse[:, : width + 1, : width + 1],
            left=xp.concat([state.left, pad], axis=-1),
            right=xp.concat([state.right, pad], axis=-1),
            weights=xp.concat([state.weights, pad], axis=-1),
            active=xp.concat([state.active, pad > 0], axis=-1),
            sizes=xp.concat([state.sizes, pad], axis=-1),
        )
        new_slot = xp.arange(width + 1, device=dev)[None, :] == width
        count = xp.sum(xp.astype(state.active, xp.int32), axis=-1)
        update = _iterate(state, new_slot, count < slots, structure, xp=xp)
        _rank_one(inverse, width + 1, update.direction, update.coef, xp=xp)
        atoms[:, width, :] = xp.where(update.grow[:, None], update.candidate, xp.zeros_like(update.candidate))
        width += 1
        state = _Rows(state.t, state.gap_tol, None, None, *update[:7], update.fresh)
        if gpu and not _gpu_check_step(width, capacity):
            continue  # no host read at this step (see GPU_CHECK_EVERY)
        count_doubtful = int(xp.sum(xp.astype(update.doubtful, xp.int32)))
        if count_doubtful:
            state, inverse = _refresh_rows(
                state, atoms, inverse, update.doubtful, count_doubtful, width, xp=xp
            )
        batch = state.t.shape[0]
        count_done = int(xp.sum(xp.astype(state.done, xp.int32)))
        if count_done == 0 or not (4 * count_done >= batch or width == capacity):
            continue
        # Finished rows leave the batch.
        split = xp.argsort(xp.astype(state.done, xp.int8), stable=True)
        stay = batch - count_done
        finished.append(_take_rows(state, atoms, width, order, split[stay:], xp=xp))
        if stay == 0:
            return _assemble(finished, rows, slots, xp=xp)
        state, atoms, inverse, order = _keep_rows(state, atoms, inverse, order, split[:stay], xp=xp)
    finished.append(_take_rows(state, atoms, width, order, None, xp=xp))
    return _assemble(finished, rows, slots, xp=xp)


def _refresh_rows(
    state: _Rows, atoms: Any, inverse: Any, doubtful: Any, count: int, width: int, *, xp: Any
) -> tuple[_Rows, Any]:
    """Recompute the inverse of the ``doubtful`` rows (``count`` of them) from
    their atoms, in the eager buffers; they are ``fresh`` and repeat the step."""
    index = xp.argsort(xp.astype(~doubtful, xp.int8), stable=True)[:count]
    fresh_inverse, left, right = _refresh(
        take(state.t, index, axis=0, xp=xp),
        take(atoms[:, :width, :], index, axis=0, xp=xp),
        take(state.active, index, axis=0, xp=xp),
        xp=xp,
    )
    # Row i of the batch reads row position[i] of the recomputed ones.
    position = xp.clip(xp.cumulative_sum(xp.astype(doubtful, xp.int32)) - 1, min=0)

    def merged(new: Any, old: Any) -> Any:
        mask = xp.reshape(doubtful, (-1,) + (1,) * (old.ndim - 1))
        return xp.where(mask, take(new, position, axis=0, xp=xp), old)

    inverse[:, :width, :width] = merged(fresh_inverse, inverse[:, :width, :width])
    state = state._replace(left=merged(left, state.left), right=merged(right, state.right), fresh=doubtful)
    return state, inverse
