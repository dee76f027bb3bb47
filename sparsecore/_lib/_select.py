"""Partial selection: the k-th largest entry along the last axis.

The array API has only full sorts, so the generic path sorts; NumPy, CuPy,
PyTorch and JAX get their native selection (partition or top-k), which is
the fast path.  A test checks every fast path against the generic one.
"""

from __future__ import annotations

from typing import Any

from array_api_compat import (
    is_cupy_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)

__all__ = ["kth_largest", "kth_largest_generic", "largest_values"]


def kth_largest_generic(x: Any, k: int, *, xp: Any) -> Any:
    """The k-th largest entry of each row, by a full sort; shape (..., 1)."""
    ordered = xp.sort(x, axis=-1, descending=True)
    return ordered[..., k - 1 : k]


def kth_largest(x: Any, k: int, *, xp: Any) -> Any:
    """The k-th largest entry of each row (``1 <= k <= K``); shape (..., 1).

    Rows holding NaN may give any value: callers overwrite those rows.
    """
    size = x.shape[-1]
    if is_torch_namespace(xp):
        return x.topk(k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    if is_numpy_namespace(xp) or is_cupy_namespace(xp):
        native = _native_module(xp)
        return native.partition(x, size - k, axis=-1)[..., size - k : size - k + 1]
    if is_jax_namespace(xp):
        if _sharding_possible():
            return kth_largest_generic(x, k, xp=xp)
        import jax

        return jax.lax.top_k(x, k)[0][..., k - 1 : k]
    return kth_largest_generic(x, k, xp=xp)


def largest_values(x: Any, count: int, *, xp: Any) -> Any:
    """The ``count`` largest entries of each row, in any order; shape (..., count)."""
    size = x.shape[-1]
    if is_torch_namespace(xp):
        return x.topk(count, dim=-1, sorted=False).values
    if is_numpy_namespace(xp) or is_cupy_namespace(xp):
        native = _native_module(xp)
        return native.partition(x, size - count, axis=-1)[..., size - count :]
    if is_jax_namespace(xp) and not _sharding_possible():
        import jax

        return jax.lax.top_k(x, count)[0]
    return xp.sort(x, axis=-1, descending=True)[..., :count]


def _sharding_possible() -> bool:
    """Whether JAX has several devices, so that arrays may be sharded.

    XLA's SPMD partitioner has no rule for ``lax.top_k`` (a custom call): on
    an array sharded along a batch axis it gathers the whole array onto every
    device.  A sort along the last axis partitions along the others, so with
    several devices JAX selects by sorting (the same values, a little slower
    on small rows).
    """
    import jax

    return jax.device_count() > 1


def _native_module(xp: Any) -> Any:
    if is_cupy_namespace(xp):
        import cupy

        return cupy
    import numpy

    return numpy
