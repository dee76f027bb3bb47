"""Autograd Functions over the core's forward and backward rules.

The core is called on the tensors themselves (same device, no copies, no
host round trip); these classes only register its rules with autograd.
Every tensor's namespace is array-api-compat's ``torch`` module, which the
rules get directly (looking it up costs a few microseconds a call).

Each Function has a ``backward`` (reverse mode) and a ``jvp`` (forward mode:
``torch.func.jvp``, ``jacfwd``, ``torch.autograd.forward_ad``).  While
``torch.compile`` or ``torch.export`` traces, the public functions call the
custom operators of ``_ops.py`` instead, which the tracer keeps as opaque
nodes.
"""

from __future__ import annotations

import inspect
from typing import Any

import array_api_compat.torch as xp
import torch

import sparsecore
from sparsecore.internal import check_floating, check_k, check_nan_policy, normalize_axis

# The Triton kernels on CUDA tensors: each _gpu call falls back to the core's
# rule it replaces.
from . import _gpu, _ops

__all__ = ["sparsemap", "sparsemax", "topk_is_exact", "topk_sparsemax", "topk_sparsemax_structured"]


def _vmap_dim(dim: int, ndim_unbatched: int) -> int:
    """``dim`` of an unbatched input, seen on the input with a batch dim at 0."""
    return normalize_axis(dim, ndim_unbatched, "dim") + 1


class SparsemaxFunction(torch.autograd.Function):
    """Sparsemax along ``dim`` with the sparsemax VJP as its backward, in the
    ``setup_context`` form that ``torch.func`` transforms need."""

    # ``dim`` arrives non-negative and checked (see :func:`sparsemax`), so the
    # rules run on validated arguments: a call pays for the checks once.
    @staticmethod
    def forward(scores: torch.Tensor, dim: int, nan_policy: str) -> torch.Tensor:  # type: ignore[override]
        return _gpu.sparsemax_forward(scores, dim, nan_policy)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        _, dim, _ = inputs
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)
        ctx.dim = dim

    @staticmethod
    def backward(ctx: Any, grad_probs: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (probs,) = ctx.saved_tensors
        return _gpu.sparsemax_backward(probs, grad_probs, ctx.dim), None, None

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, *_: Any) -> torch.Tensor:
        # The Jacobian is symmetric: the JVP is the VJP's linear map
        # (sparsecore.sparsemax_jvp), on the kernels where they apply.
        (probs,) = ctx.saved_tensors
        return _gpu.sparsemax_backward(probs, tangent, ctx.dim)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], scores: torch.Tensor, dim: int, nan_policy: str) -> Any:
        # The solver stops on data (a host read), so a vmapped call runs the
        # whole batch eagerly with the vmapped dimension moved to the front.
        (batch_dim, _, _) = in_dims
        if batch_dim is None:
            return SparsemaxFunction.apply(scores, dim, nan_policy), None
        scores = scores.movedim(batch_dim, 0)
        return SparsemaxFunction.apply(scores, _vmap_dim(dim, scores.ndim - 1), nan_policy), 0


class SparsemaxEager(torch.autograd.Function):
    """:class:`SparsemaxFunction` in the older ``forward(ctx, ...)`` form.

    Outside ``torch.func`` transforms both compute the same thing, but this
    form skips the argument binding and dispatch layers that ``setup_context``
    functions pay on every call (tens of microseconds, which is most of the
    cost on small inputs); under a transform :func:`sparsemax` takes
    :class:`SparsemaxFunction`, which ``torch.func`` requires.
    """

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, dim: int, nan_policy: str) -> torch.Tensor:  # type: ignore[override]
        probs = _gpu.sparsemax_forward(scores, dim, nan_policy)
        ctx.save_for_backward(probs)
        ctx.save_for_forward(probs)
        ctx.dim = dim
        return probs  # type: ignore[no-any-return]

    backward = SparsemaxFunction.backward
    jvp = SparsemaxFunction.jvp


def _transforms_active() -> bool:
    """Whether a ``torch.func`` transform (grad, vmap, ...) is running.

    PyTorch has no public API for this (2.x); the private flag is read
    through ``getattr`` so that its absence in another release takes the
    always-correct :class:`SparsemaxFunction` path instead of failing.
    """
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if active is None else bool(active())


class TopKSparsemaxFunction(torch.autograd.Function):
    """Top-k sparsemax along ``dim`` with the sparsemax VJP as its backward."""

    @staticmethod
    def forward(scores: torch.Tensor, k: int, dim: int, nan_policy: str) -> torch.Tensor:  # type: ignore[override]
        return _gpu.topk_sparsemax_forward(scores, k, dim, nan_policy)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        _, _, dim, _ = inputs
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)
        ctx.dim = dim

    @staticmethod
    def backward(ctx: Any, grad_probs: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (probs,) = ctx.saved_tensors
        return _gpu.sparsemax_backward(probs, grad_probs, ctx.dim), None, None, None

    jvp = SparsemaxFunction.jvp

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[Any, ...], scores: torch.Tensor, k: int, dim: int, nan_policy: str
    ) -> Any:
        (batch_dim, _, _, _) = in_dims
        if batch_dim is None:
            return TopKSparsemaxFunction.apply(scores, k, dim, nan_policy), None
        scores = scores.movedim(batch_dim, 0)
        return TopKSparsemaxFunction.apply(scores, k, _vmap_dim(dim, scores.ndim - 1), nan_policy), 0


class TopKSparsemaxStructuredFunction(torch.autograd.Function):
    """Structured top-k sparsemax; ``atoms`` is a non-differentiable output."""

    @staticmethod
    def forward(t: torch.Tensor, structure: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return sparsecore.topk_sparsemax_structured(t, structure, k)  # type: ignore[no-any-return]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        probs, atoms = output
        ctx.mark_non_differentiable(atoms)
        ctx.save_for_backward(probs, atoms)
        ctx.save_for_forward(probs, atoms)

    @staticmethod
    def backward(ctx: Any, grad_probs: torch.Tensor, grad_atoms: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        probs, atoms = ctx.saved_tensors
        return sparsecore.topk_sparsemax_structured_vjp(probs, atoms, grad_probs), None, None

    @staticmethod
    def jvp(ctx: Any, tangent_t: torch.Tensor, *_: Any) -> tuple[torch.Tensor, None]:
        probs, atoms = ctx.saved_tensors
        return sparsecore.topk_sparsemax_structured_jvp(probs, atoms, tangent_t), None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], t: torch.Tensor, structure: Any, k: int) -> Any:
        (batch_dim, _, _) = in_dims
        if batch_dim is None:
            return TopKSparsemaxStructuredFunction.apply(t, structure, k), (None, None)
        outputs = TopKSparsemaxStructuredFunction.apply(t.movedim(batch_dim, 0), structure, k)
        return outputs, (0, 0)


class SparseMAPFunction(torch.autograd.Function):
    """SparseMAP by the active-set method; ``atoms`` is non-differentiable."""

    @staticmethod
    def forward(  # type: ignore[override]
        t: torch.Tensor, structure: Any, max_iter: Any, tol: Any, max_active: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return sparsecore.sparsemap(  # type: ignore[no-any-return]
            t, structure, max_iter=max_iter, tol=tol, max_active=max_active
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        probs, atoms = output
        ctx.mark_non_differentiable(atoms)
        ctx.save_for_backward(probs, atoms)
        ctx.save_for_forward(probs, atoms)

    @staticmethod
    def backward(ctx: Any, grad_probs: torch.Tensor, grad_atoms: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        probs, atoms = ctx.saved_tensors
        return sparsecore.sparsemap_vjp(probs, atoms, grad_probs), None, None, None, None

    @staticmethod
    def jvp(ctx: Any, tangent_t: torch.Tensor, *_: Any) -> tuple[torch.Tensor, None]:
        probs, atoms = ctx.saved_tensors
        return sparsecore.sparsemap_jvp(probs, atoms, tangent_t), None

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[Any, ...],
        t: torch.Tensor,
        structure: Any,
        max_iter: Any,
        tol: Any,
        max_active: Any,
    ) -> Any:
        batch_dim = in_dims[0]
        if batch_dim is None:
            return SparseMAPFunction.apply(t, structure, max_iter, tol, max_active), (None, None)
        outputs = SparseMAPFunction.apply(t.movedim(batch_dim, 0), structure, max_iter, tol, max_active)
        return outputs, (0, 0)


def _cache_signatures(*functions: type[torch.autograd.Function]) -> None:
    """Precompute each ``forward``'s signature.

    ``Function.apply`` binds its arguments with ``inspect.signature(forward)``
    on every call when ``setup_context`` is defined; that takes about 10
    microseconds unless the function carries ``__signature__``.
    """
    for function in functions:
        forward = function.forward
        forward.__signature__ = inspect.signature(forward)  # type: ignore[attr-defined]


_cache_signatures(
    SparsemaxFunction, TopKSparsemaxFunction, TopKSparsemaxStructuredFunction, SparseMAPFunction
)


def sparsemax(s: torch.Tensor, dim: int = -1, *, nan_policy: str = "propagate") -> torch.Tensor:
    """Sparsemax of ``s`` along ``dim``, differentiable by autograd.

    The PyTorch binding of :func:`sparsecore.sparsemax` (see it for the
    math and the handling of ``-inf``, ``+inf`` and NaN).  Works under
    ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``).

    Examples
    --------
    >>> import torch
    >>> import sparsecore_torch
    >>> s = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    >>> sparsecore_torch.sparsemax(s)
    tensor([0.0000, 0.2500, 0.7500], grad_fn=<SparsemaxEagerBackward>)
    """
    _check_tensor(s)
    check_floating(s, "s", xp=xp)
    dim = normalize_axis(dim, s.ndim, "dim")
    if s.shape[dim] == 0:
        raise ValueError(f"sparsemax needs at least one category along dim={dim}, got shape {tuple(s.shape)}")
    nan_policy = check_nan_policy(nan_policy)
    if torch.compiler.is_compiling():
        return _ops.sparsemax_op(s, dim, nan_policy)  # type: ignore[no-any-return]
    function = SparsemaxFunction if _transforms_active() else SparsemaxEager
    return function.apply(s, dim, nan_policy)  # type: ignore[no-any-return]


def topk_sparsemax(s: torch.Tensor, k: int, dim: int = -1, *, nan_policy: str = "propagate") -> torch.Tensor:
    """Sparsemax over the ``k`` largest entries of ``s`` along ``dim``.

    The PyTorch binding of :func:`sparsecore.topk_sparsemax`; the output has
    at most ``k`` nonzeros and equals :func:`sparsemax` whenever it has
    fewer than ``k`` (see :func:`topk_is_exact`).

    Examples
    --------
    >>> import torch
    >>> import sparsecore_torch
    >>> sparsecore_torch.topk_sparsemax(torch.tensor([1.0, 0.9, 0.8, 0.0]), k=2)
    tensor([0.5500, 0.4500, 0.0000, 0.0000])
    """
    _check_tensor(s)
    dim = normalize_axis(dim, s.ndim, "dim")
    k = check_k(k, s.shape[dim])
    nan_policy = check_nan_policy(nan_policy)
    if torch.compiler.is_compiling():
        return _ops.topk_sparsemax_op(s, k, dim, nan_policy)  # type: ignore[no-any-return]
    return TopKSparsemaxFunction.apply(s, k, dim, nan_policy)  # type: ignore[no-any-return]


def topk_is_exact(probs: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """Per row, whether a :func:`topk_sparsemax` output equals the full sparsemax."""
    _check_tensor(probs, "probs")
    dim = normalize_axis(dim, probs.ndim, "dim")
    return sparsecore.topk_is_exact(probs.detach(), k, axis=dim)  # type: ignore[no-any-return]


def _check_tensor(x: Any, name: str = "s") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def topk_sparsemax_structured(t: torch.Tensor, structure: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparsemax over the ``k`` best structures for variable scores ``t``.

    The PyTorch binding of :func:`sparsecore.topk_sparsemax_structured`:
    returns ``(probs, atoms)`` of shapes (..., k) and (..., k, D);
    gradients flow into ``t`` through ``probs``.

    Examples
    --------
    >>> import torch
    >>> from sparsecore import BitVector
    >>> import sparsecore_torch
    >>> t = torch.tensor([0.9, -0.2])
    >>> probs, atoms = sparsecore_torch.topk_sparsemax_structured(t, BitVector(2), k=3)
    >>> probs
    tensor([0.6000, 0.4000, 0.0000])
    """
    _check_tensor(t, "t")
    if torch.compiler.is_compiling():
        return _ops.topk_sparsemax_structured_op(t, _ops.structure_key(structure), k)  # type: ignore[no-any-return]
    return TopKSparsemaxStructuredFunction.apply(t, structure, k)  # type: ignore[no-any-return]


def sparsemap(
    t: torch.Tensor,
    structure: Any,
    *,
    max_iter: int | None = None,
    tol: float | None = None,
    max_active: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseMAP distribution over structures for variable scores ``t``.

    The PyTorch binding of :func:`sparsecore.sparsemap`: returns ``(probs,
    atoms)`` of shapes (..., M) and (..., M, D), raising ``RuntimeError`` if
    a row does not converge.  Gradients flow into ``t`` through ``probs``;
    the marginals ``(probs[..., None] * atoms).sum(-2)`` are differentiable
    too.

    Examples
    --------
    >>> import torch
    >>> from sparsecore import BitVector
    >>> import sparsecore_torch
    >>> probs, atoms = sparsecore_torch.sparsemap(torch.tensor([0.9, -0.2, 0.5]), BitVector(3))
    >>> (probs[:, None] * atoms).sum(0)
    tensor([0.9000, 0.0000, 0.5000])
    """
    _check_tensor(t, "t")
    if torch.compiler.is_compiling():
        key = _ops.structure_key(structure)
        return _ops.sparsemap_op(t, key, max_iter, tol, max_active)  # type: ignore[no-any-return]
    return SparseMAPFunction.apply(t, structure, max_iter, tol, max_active)  # type: ignore[no-any-return]
