"""Dispatch between the Triton kernels and the core's reference rules.

The autograd Functions call these three functions instead of the core's
rules; each takes the Triton kernel of :mod:`sparsecore_torch._triton` when

- the fused kernels are enabled (:func:`sparsecore.use_kernels`,
  ``SPARSECORE_KERNELS``),
- the tensors are plain CUDA tensors (not fake, meta or ``torch.func``
  wrapped tensors) of a floating dtype (float32, float64, float16, bfloat16),
- Triton imports,
- and, for backward passes, no graph of the backward is being recorded
  (``create_graph=True`` needs the reference's differentiable operations),

and otherwise runs the reference rule.  Triton is imported on the first call
that could take it, never at import.  For tests only,
:func:`interpret_on_cpu` lets CPU tensors take the kernels when they were
built for Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import array_api_compat.torch as xp
import torch

from sparsecore import topk_sparsemax
from sparsecore.internal import kernels_enabled, raise_on_nan, sparsemax_checked, sparsemax_vjp_checked

__all__ = [
    "interpret_on_cpu",
    "sparsemax_backward",
    "sparsemax_forward",
    "topk_sparsemax_forward",
    "triton_kernels",
]

KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_state: dict[str, Any] = {"module": None, "failed": False, "cpu": False}


def triton_kernels() -> ModuleType | None:
    """The kernel module, imported on first use; ``None`` if Triton does not
    import."""
    if _state["module"] is None and not _state["failed"]:
        try:
            _state["module"] = importlib.import_module("sparsecore_torch._triton")
        except ImportError:
            _state["failed"] = True
    return _state["module"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def interpret_on_cpu() -> Iterator[ModuleType]:
    """Let CPU tensors take the kernels, run by Triton's interpreter (tests only).

    Raises
    ------
    RuntimeError
        If Triton does not import or the kernels were not built for the
        interpreter (``TRITON_INTERPRET=1`` must be set before the kernel
        module is first imported).
    """
    kernels = triton_kernels()
    if kernels is None or not kernels.INTERPRETED:
        raise RuntimeError(
            "interpret_on_cpu needs Triton and TRITON_INTERPRET=1 set before "
            "sparsecore_torch._triton is first imported"
        )
    previous = _state["cpu"]
    _state["cpu"] = True
    try:
        yield kernels
    finally:
        _state["cpu"] = previous


def _plain(x: torch.Tensor) -> bool:
    """A real tensor with storage: not a subclass (fake tensors, ...) nor a
    ``torch.func`` wrapper.

    The wrapper test is private (``torch._C._functorch``): PyTorch has no
    public one (2.x), and a wrapped tensor has no storage a kernel can read,
    so the kernels need it to fall back to the reference path.
    """
    if type(x) not in (torch.Tensor, torch.nn.Parameter):
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(x)


def _kernels_for(*tensors: torch.Tensor) -> ModuleType | None:
    """The kernel module if these tensors take the kernels, else ``None``."""
    first = tensors[0]
    # The device first: the cheapest test, which settles every CPU call.
    if not first.is_cuda and not (_state["cpu"] and first.device.type == "cpu"):
        return None
    if first.dtype not in KERNEL_DTYPES or not all(_plain(x) for x in tensors):
        return None
    if not kernels_enabled():
        return None
    return triton_kernels()


def _rows(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` with ``dim`` last, as a contiguous ``(rows, K)`` tensor."""
    return x.movedim(dim, -1).contiguous().reshape(-1, x.shape[dim])


def _unrows(rows: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
    """Undo :func:`_rows` for an output of the shape of ``like``."""
    moved = (*like.shape[:dim], *like.shape[dim + 1 :], like.shape[dim])
    return rows.reshape(moved).movedim(-1, dim)


def sparsemax_forward(scores: torch.Tensor, dim: int, nan_policy: str) -> torch.Tensor:
    """Sparsemax of ``scores`` along ``dim`` (validated arguments): the kernel
    where it applies, else :func:`sparsecore.internal.sparsemax_checked`."""
    kernels = _kernels_for(scores)
    if kernels is None:
        return sparsemax_checked(scores, dim, nan_policy, xp=xp)  # type: ignore[no-any-return]
    if nan_policy == "raise":
        raise_on_nan(scores, "s", xp=xp)
    if scores.numel() == 0:
        return torch.empty_like(scores)
    return _unrows(kernels.sparsemax_forward_rows(_rows(scores, dim)), scores, dim)


def topk_sparsemax_forward(scores: torch.Tensor, k: int, dim: int, nan_policy: str) -> torch.Tensor:
    """Top-k sparsemax of ``scores`` along ``dim`` (``k`` validated): the
    kernel where it applies, else :func:`sparsecore.topk_sparsemax`."""
    kernels = _kernels_for(scores)
    if kernels is None:
        return topk_sparsemax(scores, k, axis=dim, nan_policy=nan_policy)  # type: ignore[no-any-return]
    if nan_policy == "raise":
        raise_on_nan(scores, "s", xp=xp)
    if scores.numel() == 0:
        return torch.empty_like(scores)
    return _unrows(kernels.topk_sparsemax_forward_rows(_rows(scores, dim), k), scores, dim)


def sparsemax_backward(probs: torch.Tensor, grad_probs: torch.Tensor, dim: int) -> torch.Tensor:
    """The sparsemax VJP at ``probs`` (validated ``dim``): the kernel where it
    applies, else :func:`sparsecore.internal.sparsemax_vjp_checked`."""
    kernels = _kernels_for(grad_probs, probs)
    recording = torch.is_grad_enabled() and (probs.requires_grad or grad_probs.requires_grad)
    if kernels is None or recording or probs.dtype not in KERNEL_DTYPES or probs.shape != grad_probs.shape:
        return sparsemax_vjp_checked(probs, grad_probs, dim, xp=xp)  # type: ignore[no-any-return]
    if grad_probs.numel() == 0:
        return torch.empty_like(grad_probs)
    grad = kernels.sparsemax_backward_rows(_rows(probs, dim), _rows(grad_probs, dim))
    return _unrows(grad, grad_probs, dim)
