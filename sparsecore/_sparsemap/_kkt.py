"""The KKT algebra of SparseMAP: the bordered system on a support, solved
directly (the derivatives, the float32 re-solve) or inverted (a row's fresh
state in the active set)."""

from __future__ import annotations

from typing import Any

from array_api_compat import device

from .._lib._namespace import concat
from .._structures import unchecked_argmax

__all__ = ["_kkt_solve", "_polish", "_refresh", "_resolve_on_support"]


def _kkt_solve(gram: Any, active: Any, rhs: Any, total: float, *, xp: Any) -> Any:
    """Solve min x^T G x - 2 rhs.x subject to sum(x) = total on active slots.

    The bordered system ``[[G, 1], [1^T, 0]] [x; nu] = [rhs; total]`` with the
    Gram matrix ``G = A A^T`` restricted to the ``active`` slots (0/1
    floats); inactive slots get identity rows, so their ``x`` is 0.
    """
    slots = gram.shape[-1]
    dtype = gram.dtype
    batch = gram.shape[:-2]
    eye = xp.eye(slots, dtype=dtype, device=device(gram))
    gram = gram * active[..., :, None] * active[..., None, :] + eye * (1.0 - active)[..., :, None]
    border = active[..., :, None]
    corner = xp.zeros((*batch, 1, 1), dtype=dtype, device=device(gram))
    top = concat([gram, border], -1, xp=xp)
    bottom = concat([xp.matrix_transpose(border), corner], -1, xp=xp)
    system = concat([top, bottom], -2, xp=xp)
    last = xp.full((*batch, 1), total, dtype=dtype, device=device(gram))
    solution = xp.linalg.solve(system, concat([rhs * active, last], -1, xp=xp)[..., None])[..., 0]
    return solution[..., :slots] * active


def _resolve_on_support(t: Any, probs: Any, atoms: Any, *, xp: Any) -> tuple[Any, Any]:
    """The weights of rows ``t`` (N, D) on the support of ``probs`` (N, M),
    solved anew by :func:`_solve_support`; rows whose solution it rejects
    keep ``probs``.  Returns ``(probs, atoms)``, the atoms of slots that
    lost their weight zeroed.

    In float32 the active set's rank-one updates drift by about 1e-5; the
    Gram matrix of 0/1 atoms is exact, so a direct solve is accurate to the
    system's conditioning.
    """
    weights, good = _solve_support(t, probs > 0, atoms, xp=xp)
    weights = xp.where(good, weights, probs)
    return weights, xp.where((weights > 0)[:, :, None], atoms, xp.zeros_like(atoms))


# Weights of an enlarged support may dip below 0 by rounding only: a real
# negative weight means the active set would have stepped back instead.
FLOOR = 16.0


def _polish(
    t: Any, probs: Any, atoms: Any, structure: Any, gap_tol: Any, *, rounds: int = 2, xp: Any
) -> tuple[Any, Any]:
    """:func:`_resolve_on_support`, then ``rounds`` active-set steps that
    only add atoms, each checked from the re-solved marginals.

    A float32 active set stops once the duality gap, computed from drifted
    marginals, is at most ``gap_tol`` (N,): it can miss an atom whose true
    weight is about 1e-5.  From the re-solved marginals the oracle's atom
    for the residual has a trustworthy gap; where it exceeds ``gap_tol``, is
    not in the support and a slot is free, the atom joins the support and
    the weights are solved anew, kept only where that solution is accepted
    (weights nonnegative up to rounding: the support found was the true one
    but for the missing atom).
    """
    probs, atoms = _resolve_on_support(t, probs, atoms, xp=xp)
    eps = float(xp.finfo(probs.dtype).eps)
    positions = xp.arange(probs.shape[-1], device=device(probs))
    for _ in range(rounds):
        marginals = (probs[:, None, :] @ atoms)[:, 0, :]
        residual = t - marginals
        candidate = unchecked_argmax(structure, residual, xp=xp)
        gap = xp.sum((candidate - marginals) * residual, axis=-1)
        support = probs > 0
        known = xp.any(support & xp.all(atoms == candidate[:, None, :], axis=-1), axis=-1)
        free = ~support
        first_free = xp.argmax(xp.astype(free, xp.int32), axis=-1)
        add = (
            (gap > gap_tol) & ~known & xp.any(free, axis=-1) & _outside_hull(support, atoms, candidate, xp=xp)
        )
        slot = (positions[None, :] == first_free[:, None]) & add[:, None]
        trial = xp.where(slot[:, :, None], candidate[:, None, :], atoms)
        weights, good = _solve_support(t, support | slot, trial, floor=-FLOOR * eps, xp=xp)
        take = add[:, None] & good & xp.any(slot & (weights > 0), axis=-1, keepdims=True)
        probs = xp.where(take, weights, probs)
        atoms = xp.where(take[:, :, None], trial, atoms)
        atoms = xp.where((probs > 0)[:, :, None], atoms, xp.zeros_like(atoms))
    return probs, atoms


def _outside_hull(support: Any, atoms: Any, candidate: Any, *, xp: Any) -> Any:
    """Whether ``candidate`` (N, D) is well outside the affine hull of the
    ``support`` atoms: its squared distance to the hull, the Schur
    complement of the bordered system, exceeds ``eps ** 0.25 * (|z|^2 + 1)``.
    An atom inside would make the enlarged system singular, and one nearly
    inside (supports of ``Budget(64, 16)``, say) ill-conditioned enough that
    its float32 solution is worse than none."""
    rows = support.shape[0]
    dtype = atoms.dtype
    mask = xp.astype(support, dtype)
    links = (atoms @ candidate[:, :, None])[:, :, 0] * mask
    column = xp.concat([links, xp.ones((rows, 1), dtype=dtype, device=device(atoms))], axis=-1)
    image = xp.linalg.solve(_bordered_system(mask, atoms, xp=xp), column[:, :, None])[:, :, 0]
    size = xp.sum(candidate * candidate, axis=-1)
    schur = size - xp.sum(column * image, axis=-1)
    return schur > float(xp.finfo(dtype).eps) ** 0.25 * (size + 1.0)


def _solve_support(
    t: Any, support: Any, atoms: Any, *, floor: float | None = None, xp: Any
) -> tuple[Any, Any]:
    """The weights of rows ``t`` (N, D) on the slots ``support`` (N, M,
    boolean) from the bordered KKT system, with two steps of iterative
    refinement, clipped at 0 and renormalized, and whether each row's
    solution is accepted (N, 1): finite, with no weight below ``-sqrt(eps)``.

    A support that decomposes the marginals in nearly degenerate ways (tiny
    true weights) can get weights of about -1e-6 from the solve: those are
    clipped.  Atoms nearly affinely dependent make the system nearly
    singular: its solution then moves far along the (marginal-preserving)
    null space and clipping it would be wrong, so such rows are rejected.
    """
    rows, slots = support.shape
    dtype = t.dtype
    dev = device(t)
    support = xp.astype(support, dtype)
    system = _bordered_system(support, atoms, xp=xp)
    scores = (atoms @ t[:, :, None])[:, :, 0] * support
    rhs = xp.concat([scores, xp.ones((rows, 1), dtype=dtype, device=dev)], axis=-1)[:, :, None]
    solution = xp.linalg.solve(system, rhs)
    for _ in range(2):
        solution = solution + xp.linalg.solve(system, rhs - system @ solution)
    solved = solution[:, :slots, 0] * support
    if floor is None:
        floor = -(float(xp.finfo(dtype).eps) ** 0.5)
    good = xp.all(xp.isfinite(solved) & (solved >= floor), axis=-1, keepdims=True)
    weights = xp.clip(solved, min=0.0)
    total = xp.sum(weights, axis=-1, keepdims=True)
    good = good & (total > 0)
    return weights / xp.where(good, total, xp.ones_like(total)), good


def _bordered_system(support: Any, atoms: Any, *, xp: Any) -> Any:
    """``[[G, 1], [1^T, 0]]`` (N, M + 1, M + 1) with the Gram matrix ``G`` of
    the ``support`` slots (0/1 floats, (N, M)); other slots get identity rows."""
    rows, slots = support.shape
    dtype = atoms.dtype
    dev = device(atoms)
    outer = support[:, :, None] * support[:, None, :]
    eye = xp.eye(slots, dtype=dtype, device=dev)
    gram = (atoms @ xp.matrix_transpose(atoms)) * outer + eye * (1.0 - support)[:, :, None]
    border = support[:, :, None]
    corner = xp.zeros((rows, 1, 1), dtype=dtype, device=dev)
    top = xp.concat([gram, border], axis=-1)
    return xp.concat([top, xp.concat([xp.matrix_transpose(border), corner], axis=-1)], axis=-2)


def _refresh(t: Any, atoms: Any, active: Any, *, xp: Any) -> tuple[Any, Any, Any]:
    """``inverse``, ``left`` and ``right`` of :class:`_Rows` computed from the atoms."""
    dtype = t.dtype
    mask = xp.astype(active, dtype)
    outer = mask[:, :, None] * mask[:, None, :]
    eye = xp.eye(active.shape[-1], dtype=dtype, device=device(t))
    gram = (atoms @ xp.matrix_transpose(atoms) + 1.0) * outer + eye * (1.0 - mask)[:, :, None]
    inverse = xp.linalg.inv(gram) * outer
    scores = (atoms @ t[:, :, None])[:, :, 0] * mask
    return inverse, (inverse @ scores[:, :, None])[:, :, 0], xp.sum(inverse, axis=-1)
