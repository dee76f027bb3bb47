"""Dispatch to the numba kernels for NumPy arrays and plain CPU torch tensors.

Each entry point returns the result, or ``None`` when no kernel applies to
the call (kernels switched off, numba missing, another namespace or device,
a non-floating dtype, a tensor that is traced or wrapped by a transform);
the caller then takes the array-API reference path (also for a tensor
that autograd records, so that gradients flow through the core's torch
operations as before).  Neither numba nor
torch is imported here: numba on the first call that can take a kernel,
torch never (a torch tensor's module is already in ``sys.modules``).

Inputs are read through zero-copy views (``Tensor.numpy()`` on CPU
tensors), with the category axis moved last; a copy is made only where the
rows are not contiguous then, or to compute half precisions in float32.
The output is allocated in the input's library and written through its
NumPy view; inputs are never written to.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np
from array_api_compat import is_numpy_namespace, is_torch_namespace

from .._lib._arrays import raise_on_nan
from .._lib._dispatch import kernels_enabled

__all__ = ["sparsemax_kernel", "sparsemax_vjp_kernel", "topk_sparsemax_kernel"]


@functools.cache
def _kernels() -> Any:
    """The numba kernel module, or ``None`` where numba cannot be imported."""
    try:
        from . import _numba
    except ImportError:
        return None
    return _numba


class _Rows:
    """An input seen as C-contiguous float32/float64 rows along ``axis``.

    ``rows`` is a 2-d NumPy array (a view of the input where possible);
    :meth:`empty` allocates an output in the input's library and
    :meth:`finish` gives it back in the input's shape, axis order and dtype.
    """

    def __init__(self, x: Any, axis: int, torch: Any) -> None:
        self.torch = torch
        self.axis = axis
        self.ndim = x.ndim
        self.dtype = x.dtype
        last = x.ndim - 1
        if torch is None:
            if axis != last:
                x = np.moveaxis(x, axis, -1)
            if x.dtype not in (np.float32, np.float64):
                x = x.astype(np.float32)
            self.shape = x.shape
            self.rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
            return
        x = x.detach()
        if axis != last:
            x = x.movedim(axis, -1)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        self.shape = tuple(x.shape)
        self.rows = x.contiguous().numpy().reshape(-1, x.shape[-1])

    def empty(self) -> tuple[Any, np.ndarray]:
        """A fresh output of the rows' shape and compute dtype, and its NumPy view.

        A torch output wraps a fresh NumPy array (``torch.from_numpy``, which
        shares its memory): cheaper than ``torch.empty`` and ``.numpy()``.
        """
        out = np.empty(self.rows.shape, dtype=self.rows.dtype)
        if self.torch is None:
            return out, out
        return self.torch.from_numpy(out), out

    def finish(self, out: Any) -> Any:
        """``out`` (rows) back in the input's shape, axis order and dtype."""
        moved = self.axis != self.ndim - 1
        if self.torch is not None and moved:
            # Move the axis on the NumPy side: a tensor made by from_numpy is
            # not an autograd view, whose forward-mode tangent would have to
            # share its permuted layout.
            out = self.torch.from_numpy(np.moveaxis(out.numpy().reshape(self.shape), -1, self.axis))
            return out if out.dtype == self.dtype else out.to(self.dtype)
        out = out.reshape(self.shape)
        if out.dtype != self.dtype:
            out = out.astype(self.dtype) if self.torch is None else out.to(self.dtype)
        if moved:
            out = np.moveaxis(out, -1, self.axis)
        return out


def _library(x: Any, xp: Any) -> tuple[bool, Any]:
    """``(eligible, torch)``: whether ``x`` can take a CPU kernel, and the
    torch module for a torch tensor (``None`` for a NumPy array)."""
    if is_numpy_namespace(xp):
        return type(x) is np.ndarray and x.dtype in (np.float16, np.float32, np.float64), None
    if not is_torch_namespace(xp):
        return False, None
    torch = sys.modules.get("torch")
    if torch is None or type(x) not in (torch.Tensor, torch.nn.Parameter):
        return False, None
    # A tensor that autograd records (the core called directly on a tensor
    # that requires grad, or a double backward) keeps the reference path,
    # whose torch operations autograd differentiates; the adapter's forward
    # and backward run with grad mode off and take the kernel.
    plain = (
        x.is_cpu
        and not (x.requires_grad and torch.is_grad_enabled())
        and x.layout == torch.strided
        and x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
        and not x.is_conj()
        and not x.is_neg()
        and not torch._C._functorch.is_functorch_wrapped_tensor(x)
        # Legacy batched tensors (gradcheck's batched forward grads) have no
        # CPU backend key, and no storage a NumPy view could read.
        and torch._C._dispatch_keys(x).has(torch._C.DispatchKey.CPU)
    )
    return plain, torch


def _threads(torch: Any, kernels: Any) -> int:
    if torch is not None:
        return int(torch.get_num_threads())
    return int(kernels.numba.get_num_threads())


def _ready(*arrays: Any, xp: Any) -> tuple[Any, Any]:
    """``(kernels, torch)`` when every array can take a kernel, else ``(None, None)``."""
    if not kernels_enabled():
        return None, None
    torch = None
    for x in arrays:
        eligible, torch = _library(x, xp)
        if not eligible:
            return None, None
    kernels = _kernels()
    if kernels is None:
        return None, None
    return kernels, torch


def sparsemax_kernel(s: Any, axis: int, nan_policy: str, *, xp: Any) -> Any | None:
    """Sparsemax of ``s`` along ``axis`` (validated) by a kernel, or ``None``."""
    return _forward(s, axis, nan_policy, lambda kernels: kernels.sparsemax_rows, xp=xp)


def topk_sparsemax_kernel(s: Any, k: int, axis: int, nan_policy: str, *, xp: Any) -> Any | None:
    """Top-k sparsemax of ``s`` along ``axis`` (validated) by a kernel, or ``None``."""

    def rows_kernel(kernels: Any) -> Any:
        return lambda rows, out, threads: kernels.topk_sparsemax_rows(rows, k, out, threads)

    return _forward(s, axis, nan_policy, rows_kernel, xp=xp)


def _forward(s: Any, axis: int, nan_policy: str, rows_kernel: Any, *, xp: Any) -> Any | None:
    """A forward kernel ``rows_kernel(kernels)(rows, out, threads)`` on the
    rows of ``s`` along ``axis``, or ``None`` where no kernel applies."""
    kernels, torch = _ready(s, xp=xp)
    if kernels is None:
        return None
    if nan_policy == "raise":
        raise_on_nan(s, "s", xp=xp)
    scores = _Rows(s, axis, torch)
    out, view = scores.empty()
    if view.size:
        rows_kernel(kernels)(scores.rows, view, _threads(torch, kernels))
    return scores.finish(out)


def sparsemax_vjp_kernel(p: Any, g: Any, axis: int, *, xp: Any) -> Any | None:
    """The sparsemax VJP by a kernel, or ``None`` (also when ``p`` and ``g``
    differ in compute dtype: the reference then promotes)."""
    kernels, torch = _ready(p, g, xp=xp)
    if kernels is None:
        return None
    probs = _Rows(p, axis, torch)
    cotangent = _Rows(g, axis, torch)
    if probs.rows.dtype != cotangent.rows.dtype:
        return None
    out, view = cotangent.empty()
    if view.size:
        kernels.sparsemax_vjp_rows(probs.rows, cotangent.rows, view, _threads(torch, kernels))
    return cotangent.finish(out)
