"""The core's rules as ``torch.library`` custom operators (namespace ``sparsecore``).

``torch.compile`` and ``torch.export`` cannot trace the solvers themselves:
their loops stop on data.  Registered as custom operators with fake (meta)
implementations that give the output shapes and dtypes, the forward and
backward rules become opaque nodes of the traced graph, which then runs them
eagerly, and ``register_autograd`` makes each forward operator
differentiable.  The adapter's public functions call these operators while
tracing (``torch.compiler.is_compiling()``) and the autograd Functions of
``_functions.py`` otherwise: an operator call costs more than a Function call
on small inputs (see the README).

Operators take only tensors, ints, floats and strings.  A structure is passed
by its ``repr`` (its key), which :func:`structure_key` records and
:func:`structure_of` maps back; the core's own structures are rebuilt from
their ``repr`` in a process that has not seen them (an exported program
loaded elsewhere).

Each operator returns contiguous tensors (the fake implementations say so),
so that the traced graph knows the layout of every output.  The operators
run the same rules as the Functions: the Triton kernels on CUDA tensors
(``_gpu``), the core elsewhere.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

import torch

import sparsecore

from . import _gpu

__all__ = ["structure_key", "structure_of"]

_structures: dict[str, Any] = {}
# The core's structures, rebuilt from their repr (frozen dataclasses whose
# fields are numbers and booleans).
_BUILTIN_STRUCTURES = {
    name: getattr(sparsecore, name)
    for name in ("BitVector", "Budget", "Categorical", "DependencyTree", "Sequence")
}


def structure_key(structure: Any) -> str:
    """The string an operator receives for ``structure`` (its ``repr``).

    Raises
    ------
    ValueError
        If another, unequal structure has the same ``repr`` (the operators
        could not tell them apart).
    """
    key = _describe(structure)
    known = _structures.setdefault(key, structure)  # atomic under the GIL
    if known is not structure and known != structure:
        raise ValueError(
            f"structure {key} has the repr of another, unequal structure; give structure classes a "
            "repr that tells their instances apart (a frozen dataclass does)"
        )
    return key


def _describe(structure: Any) -> str:
    """The ``repr`` of a dataclass structure, built from its fields (the
    dataclass ``__repr__`` guards against recursion with a thread lookup
    that ``torch.compile`` cannot trace); ``repr`` of any other object."""
    if not dataclasses.is_dataclass(structure):
        return repr(structure)
    fields = dataclasses.fields(structure)
    described = ", ".join(f"{field.name}={getattr(structure, field.name)!r}" for field in fields)
    return f"{type(structure).__name__}({described})"


def structure_of(key: str) -> Any:
    """The structure recorded under ``key``, or a core structure rebuilt from it."""
    known = _structures.get(key)
    if known is not None:
        return known
    structure = _rebuild(key)
    if structure is None:
        raise ValueError(
            f"unknown structure {key!r}: this process has not seen it; call the sparsecore_torch "
            "function once with the structure (or sparsecore_torch._ops.structure_key(structure)) "
            "before running a program traced with it"
        )
    return _structures.setdefault(key, structure)


def _rebuild(key: str) -> Any:
    """``Budget(size=8, budget=2)`` and the like, parsed without evaluating code."""
    try:
        call = ast.parse(key, mode="eval").body
    except SyntaxError:
        return None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and not call.args):
        return None
    cls = _BUILTIN_STRUCTURES.get(call.func.id)
    if cls is None or any(keyword.arg is None for keyword in call.keywords):
        return None
    try:
        fields = {str(keyword.arg): ast.literal_eval(keyword.value) for keyword in call.keywords}
        return cls(**fields)
    except (TypeError, ValueError):
        return None


def _fresh(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the contiguous layout the fake implementations promise."""
    return x.contiguous()


# ---------------------------------------------------------------------------
# sparsemax and top-k sparsemax


@torch.library.custom_op("sparsecore::sparsemax", mutates_args=())
def sparsemax_op(scores: torch.Tensor, dim: int, nan_policy: str) -> torch.Tensor:
    """Sparsemax along ``dim`` (non-negative, checked by the caller)."""
    return _fresh(_gpu.sparsemax_forward(scores, dim, nan_policy))


@torch.library.custom_op("sparsecore::topk_sparsemax", mutates_args=())
def topk_sparsemax_op(scores: torch.Tensor, k: int, dim: int, nan_policy: str) -> torch.Tensor:
    """Top-k sparsemax along ``dim``."""
    return _fresh(_gpu.topk_sparsemax_forward(scores, k, dim, nan_policy))


@torch.library.custom_op("sparsecore::sparsemax_vjp", mutates_args=())
def sparsemax_vjp_op(probs: torch.Tensor, grad: torch.Tensor, dim: int) -> torch.Tensor:
    """The sparsemax (and top-k sparsemax) VJP at the output ``probs``."""
    return _fresh(_gpu.sparsemax_backward(probs, grad, dim))


@sparsemax_op.register_fake
def _sparsemax_fake(scores: torch.Tensor, dim: int, nan_policy: str) -> torch.Tensor:
    return scores.new_empty(scores.shape)


@topk_sparsemax_op.register_fake
def _topk_sparsemax_fake(scores: torch.Tensor, k: int, dim: int, nan_policy: str) -> torch.Tensor:
    return scores.new_empty(scores.shape)


@sparsemax_vjp_op.register_fake
def _sparsemax_vjp_fake(probs: torch.Tensor, grad: torch.Tensor, dim: int) -> torch.Tensor:
    return grad.new_empty(grad.shape)


def _save_probs(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(output)
    ctx.dim = inputs[-2]


def _sparsemax_backward(ctx: Any, grad_probs: torch.Tensor) -> tuple[Any, ...]:
    (probs,) = ctx.saved_tensors
    return sparsemax_vjp_op(probs, grad_probs, ctx.dim), None, None


def _topk_sparsemax_backward(ctx: Any, grad_probs: torch.Tensor) -> tuple[Any, ...]:
    (probs,) = ctx.saved_tensors
    return sparsemax_vjp_op(probs, grad_probs, ctx.dim), None, None, None


def _save_linear(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    probs, _, dim = inputs
    ctx.save_for_backward(probs)
    ctx.dim = dim


def _sparsemax_vjp_backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
    # Linear in its second argument with a symmetric matrix, and constant in
    # the first (the support does not move): its own VJP.
    (probs,) = ctx.saved_tensors
    return None, sparsemax_vjp_op(probs, grad_output, ctx.dim), None


sparsemax_op.register_autograd(_sparsemax_backward, setup_context=_save_probs)
topk_sparsemax_op.register_autograd(_topk_sparsemax_backward, setup_context=_save_probs)
sparsemax_vjp_op.register_autograd(_sparsemax_vjp_backward, setup_context=_save_linear)


# ---------------------------------------------------------------------------
# Structured top-k sparsemax and SparseMAP: (probs, atoms) over a structure


@torch.library.custom_op("sparsecore::topk_sparsemax_structured", mutates_args=())
def topk_sparsemax_structured_op(
    t: torch.Tensor, structure: str, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured top-k sparsemax for the structure recorded under ``structure``."""
    probs, atoms = sparsecore.topk_sparsemax_structured(t, structure_of(structure), k)
    return _fresh(probs), _fresh(atoms)


@torch.library.custom_op("sparsecore::sparsemap", mutates_args=())
def sparsemap_op(
    t: torch.Tensor, structure: str, max_iter: int | None, tol: float | None, max_active: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseMAP for the structure recorded under ``structure``."""
    probs, atoms = sparsecore.sparsemap(
        t, structure_of(structure), max_iter=max_iter, tol=tol, max_active=max_active
    )
    return _fresh(probs), _fresh(atoms)


@torch.library.custom_op("sparsecore::topk_sparsemax_structured_vjp", mutates_args=())
def topk_sparsemax_structured_vjp_op(
    probs: torch.Tensor, atoms: torch.Tensor, grad_probs: torch.Tensor
) -> torch.Tensor:
    """The VJP of structured top-k sparsemax w.r.t. ``t``."""
    return _fresh(sparsecore.topk_sparsemax_structured_vjp(probs, atoms, grad_probs))


@torch.library.custom_op("sparsecore::sparsemap_vjp", mutates_args=())
def sparsemap_vjp_op(probs: torch.Tensor, atoms: torch.Tensor, grad_probs: torch.Tensor) -> torch.Tensor:
    """The VJP of SparseMAP w.r.t. ``t``."""
    return _fresh(sparsecore.sparsemap_vjp(probs, atoms, grad_probs))


@topk_sparsemax_structured_op.register_fake
def _topk_sparsemax_structured_fake(
    t: torch.Tensor, structure: str, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    dim = t.shape[-1]
    return t.new_empty((*t.shape[:-1], k)), t.new_empty((*t.shape[:-1], k, dim))


@sparsemap_op.register_fake
def _sparsemap_fake(
    t: torch.Tensor, structure: str, max_iter: int | None, tol: float | None, max_active: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    dim = t.shape[-1]
    slots = dim + 1 if max_active is None else max_active
    return t.new_empty((*t.shape[:-1], slots)), t.new_empty((*t.shape[:-1], slots, dim))


def _structured_linear_fake(probs: torch.Tensor, atoms: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return grad.new_empty(atoms.shape[:-2] + atoms.shape[-1:])


topk_sparsemax_structured_vjp_op.register_fake(_structured_linear_fake)
sparsemap_vjp_op.register_fake(_structured_linear_fake)


def _save_distribution(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    probs, atoms = output
    ctx.mark_non_differentiable(atoms)
    ctx.save_for_backward(probs, atoms)
    ctx.inputs = len(inputs)


def _topk_structured_backward(ctx: Any, grad_probs: torch.Tensor, grad_atoms: Any) -> tuple[Any, ...]:
    probs, atoms = ctx.saved_tensors
    return (topk_sparsemax_structured_vjp_op(probs, atoms, grad_probs), *([None] * (ctx.inputs - 1)))


def _sparsemap_backward(ctx: Any, grad_probs: torch.Tensor, grad_atoms: Any) -> tuple[Any, ...]:
    probs, atoms = ctx.saved_tensors
    return (sparsemap_vjp_op(probs, atoms, grad_probs), *([None] * (ctx.inputs - 1)))


topk_sparsemax_structured_op.register_autograd(_topk_structured_backward, setup_context=_save_distribution)
sparsemap_op.register_autograd(_sparsemap_backward, setup_context=_save_distribution)
