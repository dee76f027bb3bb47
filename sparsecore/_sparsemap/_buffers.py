"""Eager-only storage for the active set: growing column buffers written in
place, and rows that leave the batch when they finish (row compaction)."""

from __future__ import annotations

from typing import Any

from array_api_compat import device, is_torch_namespace

from .._lib._namespace import take, take_along_axis
from ._step import _compact, _Rows


def _rank_one(inverse: Any, width: int, direction: Any, coef: Any, *, xp: Any) -> None:
    """``inverse[:, :width, :width] += coef * outer(direction, direction)``, in place."""
    if is_torch_namespace(xp):
        inverse[:, :width, :width].addcmul_(direction[:, :, None], (coef[:, None] * direction)[:, None, :])
        return
    block = inverse[:, :width, :width]
    inverse[:, :width, :width] = block + coef[:, None, None] * (direction[:, :, None] * direction[:, None, :])


def _squeeze(state: _Rows, atoms: Any, inverse: Any, *, xp: Any) -> tuple[_Rows, Any, Any, int]:
    """Move each row's active slots to its first columns; the width becomes the
    largest number of active slots."""
    width = state.active.shape[-1]
    counts = xp.sum(xp.astype(state.active, xp.int32), axis=-1)
    used = max(int(xp.max(counts)), 1)
    columns = xp.argsort(xp.astype(~state.active, xp.int8), axis=-1, stable=True)[:, :used]
    batch, dim = atoms.shape[0], atoms.shape[-1]

    def columns_of(x: Any) -> Any:
        return take_along_axis(x, columns, axis=-1, xp=xp)

    atoms = take_along_axis(
        atoms[:, :width, :], xp.broadcast_to(columns[:, :, None], (batch, used, dim)), axis=1, xp=xp
    )
    inverse = take_along_axis(
        inverse[:, :width, :width], xp.broadcast_to(columns[:, :, None], (batch, used, width)), axis=1, xp=xp
    )
    inverse = take_along_axis(
        inverse, xp.broadcast_to(columns[:, None, :], (batch, used, used)), axis=2, xp=xp
    )
    state = state._replace(
        left=columns_of(state.left),
        right=columns_of(state.right),
        weights=columns_of(state.weights),
        active=columns_of(state.active),
        sizes=columns_of(state.sizes),
    )
    return state, atoms, inverse, used


def _resize(atoms: Any, inverse: Any, capacity: int, *, xp: Any) -> tuple[Any, Any]:
    """Fresh buffers of ``capacity`` columns holding ``atoms`` and ``inverse``."""
    batch, width, dim = atoms.shape
    dev = device(atoms)
    atoms_buffer = xp.zeros((batch, capacity, dim), dtype=atoms.dtype, device=dev)
    atoms_buffer[:, :width, :] = atoms
    inverse_buffer = xp.zeros((batch, capacity, capacity), dtype=inverse.dtype, device=dev)
    inverse_buffer[:, :width, :width] = inverse
    return atoms_buffer, inverse_buffer


def _keep_rows(
    state: _Rows, atoms: Any, inverse: Any, order: Any, keep: Any, *, xp: Any
) -> tuple[_Rows, Any, Any, Any]:
    """The rows ``keep`` (indices) of the batch."""

    def rows_of(x: Any) -> Any:
        return take(x, keep, axis=0, xp=xp)

    kept = _Rows(*(None if x is None else rows_of(x) for x in state))
    return kept, rows_of(atoms), rows_of(inverse), rows_of(order)


def _take_rows(
    state: _Rows, atoms: Any, width: int, order: Any, index: Any, *, xp: Any
) -> tuple[Any, Any, Any, Any, Any]:
    """``(weights, atoms, active, converged, order)`` of rows ``index`` (all if None)."""
    parts = (state.weights, atoms[:, :width, :], state.active, state.converged, order)
    if index is None:
        return parts
    return tuple(take(x, index, axis=0, xp=xp) for x in parts)  # type: ignore[return-value]


def _assemble(
    finished: list[tuple[Any, ...]], rows: int, slots: int, *, xp: Any
) -> tuple[Any, Any, Any, Any]:
    """The finished rows back in their original order, with ``slots`` slots.

    Each chunk's active slots move to its first columns; degenerate atoms
    that ended with weight 0 become padding slots too.  The chunks are padded
    only to the widest one before they are joined and reordered, and the
    result to ``slots`` once, so that the (rows, slots, D) atoms are written
    once rather than at every step.
    """
    parts = []
    for chunk_weights, chunk_atoms, chunk_active, converged, order in finished:
        width = chunk_atoms.shape[1]
        weights, atoms, active, _ = _compact(
            chunk_weights, chunk_atoms, chunk_active, converged, min(width, slots), xp=xp
        )
        parts.append((weights, atoms, active, converged, order))
    used = max(part[0].shape[-1] for part in parts)
    joined = [
        xp.concat([_pad_slots(part[field], used, xp=xp) for part in parts], axis=0)
        if len(parts) > 1
        else _pad_slots(parts[0][field], used, xp=xp)
        for field in range(3)
    ]
    converged = xp.concat([part[3] for part in parts], axis=0) if len(parts) > 1 else parts[0][3]
    order = xp.concat([part[4] for part in parts], axis=0) if len(parts) > 1 else parts[0][4]
    back = xp.argsort(order)
    weights, atoms, active = (_pad_slots(take(x, back, axis=0, xp=xp), slots, xp=xp) for x in joined)
    return weights, atoms, active, take(converged, back, axis=0, xp=xp)


def _pad_slots(x: Any, slots: int, *, xp: Any) -> Any:
    """Pad axis 1 (the slots) of ``x`` with zeros (False) to ``slots`` entries."""
    missing = slots - x.shape[1]
    if missing <= 0:
        return x
    shape = (x.shape[0], missing, *x.shape[2:])
    return xp.concat([x, xp.zeros(shape, dtype=x.dtype, device=device(x))], axis=1)
