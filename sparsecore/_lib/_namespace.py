"""Array-namespace helpers: compute dtypes, gathers and native one-liners.

Nothing here imports a framework at module level.  The native code paths are
in-place or native elementwise methods where a namespace has them (each a
one-liner with the generic array-API fallback beside it).  The bounded loop
:func:`while_loop` lives in :mod:`._control` (with ``cond``) and is
re-exported here.
"""

from __future__ import annotations

import contextlib
from typing import Any

from array_api_compat import (
    array_namespace,
    is_array_api_strict_namespace,
    is_cupy_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)

from ._control import while_loop

__all__ = [
    "array_namespace",
    "compute_dtype",
    "concat",
    "concrete_any",
    "is_jax_namespace",
    "nonnegative_part",
    "quiet",
    "sign",
    "solver_dtype",
    "take",
    "take_along_axis",
    "while_loop",
]


def compute_dtype(dtype: Any, *, xp: Any) -> Any:
    """The dtype the core computes in: float32 for half precisions."""
    if dtype in (xp.float32, xp.float64):
        return dtype
    half = [xp.float16] if hasattr(xp, "float16") else []
    if hasattr(xp, "bfloat16"):
        half.append(xp.bfloat16)
    if any(dtype == candidate for candidate in half):
        return xp.float32
    return dtype


def solver_dtype(dtype: Any, dev: Any, *, xp: Any) -> Any:
    """The dtype an iterative solver works in: float64 where the namespace
    and device have it (every floating input is widened), else
    :func:`compute_dtype`.

    JAX has float64 only with ``jax_enable_x64``; PyTorch's Apple GPU (MPS)
    has none.
    """
    if is_torch_namespace(xp):
        wide = getattr(dev, "type", None) != "mps"
    else:
        info = xp.__array_namespace_info__()
        wide = "float64" in info.dtypes(device=dev, kind="real floating")
    return xp.float64 if wide else compute_dtype(dtype, xp=xp)


def take(x: Any, indices: Any, axis: int, *, xp: Any) -> Any:
    """``xp.take`` for nonnegative ``indices``.

    PyTorch takes ``index_select`` directly: array-api-compat first maps
    negative indices, three more operations per call, which the solvers'
    row gathers (argsort results, never negative) do not need.
    """
    if is_torch_namespace(xp):
        return x.index_select(axis, indices)
    return xp.take(x, indices, axis=axis)


def concat(arrays: list[Any], axis: int, *, xp: Any) -> Any:
    """``xp.concat`` along ``axis``.

    PyTorch takes ``torch.cat`` directly: ``torch.concat``, which
    array-api-compat calls, has no batching rule for batched forward-mode
    tangents (``torch.func.vmap`` over ``jvp``).
    """
    if is_torch_namespace(xp):
        import torch

        return torch.cat(arrays, dim=axis)
    return xp.concat(arrays, axis=axis)


def take_along_axis(x: Any, indices: Any, axis: int, *, xp: Any) -> Any:
    """``xp.take_along_axis`` for nonnegative ``indices`` (see :func:`take`)."""
    if is_torch_namespace(xp):
        import torch

        # gather when no axis broadcasts: take_along_dim maps every index
        # through a remainder first.
        axis = axis % x.ndim
        if indices.ndim == x.ndim and all(
            indices.shape[other] == x.shape[other] for other in range(x.ndim) if other != axis
        ):
            return torch.gather(x, axis, indices)
        return torch.take_along_dim(x, indices, dim=axis)
    return xp.take_along_axis(x, indices, axis=axis)


def concrete_any(x: Any, *, xp: Any) -> bool:
    """Whether any entry of ``x`` is true, read on the host.

    Under JAX (possibly traced) this answers ``True``: callers use it only to
    skip work that is harmless to do, and XLA fuses that work anyway.
    """
    if is_jax_namespace(xp):
        return True
    return bool(xp.any(x))


def quiet(xp: Any) -> Any:
    """A context that silences NumPy's floating-point warnings.

    The core handles ``inf - inf`` and friends explicitly (those rows are
    repaired afterwards), so NumPy-backed namespaces must not warn about them.
    Other namespaces do not warn; they get a null context.
    """
    if is_numpy_namespace(xp) or is_array_api_strict_namespace(xp):
        import numpy as np

        return np.errstate(all="ignore")
    return contextlib.nullcontext()


def sign(x: Any, *, xp: Any) -> Any:
    """Elementwise sign; NaN gives NaN, except in PyTorch, where it gives 0
    (callers handle that).

    PyTorch takes its native ``Tensor.sign``: the array-api-compat wrapper
    repairs NaN with boolean indexing, which ``torch.func.vmap`` rejects.
    """
    if is_torch_namespace(xp):
        return x.sign()
    return xp.sign(x)


def nonnegative_part(x: Any, *, xp: Any) -> Any:
    """``max(x, 0)`` elementwise, written into ``x`` where the namespace can
    (PyTorch, NumPy, CuPy): callers pass a fresh temporary they own, so a pass
    over the data allocates nothing.  NaN stays NaN.
    """
    if is_torch_namespace(xp):
        return x.clamp_(min=0.0)
    if is_numpy_namespace(xp) or is_cupy_namespace(xp):
        return x.clip(0.0, None, out=x)
    return xp.clip(x, min=0.0)
