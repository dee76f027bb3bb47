"""Axis moves and dtype round trips shared by the public functions."""

from __future__ import annotations

from typing import Any

from ._namespace import compute_dtype

__all__ = ["from_last", "raise_on_nan", "to_last"]


def to_last(x: Any, axis: int, *, xp: Any) -> Any:
    """Move ``axis`` last and cast to the compute dtype (float32 for halves)."""
    if axis != x.ndim - 1:
        x = xp.permute_dims(x, _move_to_last(axis, x.ndim))
    dtype = compute_dtype(x.dtype, xp=xp)
    if dtype != x.dtype:
        x = xp.astype(x, dtype)
    return x


def from_last(x: Any, axis: int, dtype: Any, *, xp: Any) -> Any:
    """Undo :func:`to_last`: move the last axis back and cast to ``dtype``."""
    if x.dtype != dtype:
        x = xp.astype(x, dtype)
    if axis != x.ndim - 1:
        x = xp.permute_dims(x, _move_from_last(axis, x.ndim))
    return x


# Permutations rather than ``moveaxis``: torch.func.vmap has no batching rule
# for ``moveaxis``, and every namespace has ``permute_dims``.
def _move_to_last(axis: int, ndim: int) -> tuple[int, ...]:
    return (*(i for i in range(ndim) if i != axis), axis)


def _move_from_last(axis: int, ndim: int) -> tuple[int, ...]:
    order = list(range(ndim - 1))
    order.insert(axis, ndim - 1)
    return tuple(order)


def raise_on_nan(x: Any, name: str, *, xp: Any) -> None:
    """Raise ``ValueError`` if ``x`` holds a NaN (a host read: eager only)."""
    try:
        has_nan = bool(xp.any(xp.isnan(x)))
    except Exception as error:  # a tracer cannot be read on the host
        raise ValueError(
            "nan_policy='raise' needs concrete values; under a tracing transform "
            "(jax.jit, jax.vmap) use nan_policy='propagate' and check the output"
        ) from error
    if has_nan:
        raise ValueError(f"{name} contains NaN (nan_policy='raise')")
