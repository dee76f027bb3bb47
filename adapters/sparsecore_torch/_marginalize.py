"""Exact marginalization of a loss over a sparse distribution's support."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

__all__ = ["Marginal", "marginalize"]


class Marginal(NamedTuple):
    """What :func:`marginalize` returns.

    Attributes
    ----------
    expectation : torch.Tensor
        Shape (N, ...): the exact expectation of the loss under each
        example's distribution, differentiable with respect to the
        probabilities and to whatever the loss function depends on.
    calls : int
        The number of loss evaluations made: the rows passed to the loss
        function (the paper's "decoder calls" for the whole batch).
    support : torch.Tensor
        Shape (N,), int64: the number of structures with nonzero probability
        of each example (``calls == support.sum()``).
    """

    expectation: torch.Tensor
    calls: int
    support: torch.Tensor


def _split_distribution(distribution: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(probs, atoms)`` from a dense probs tensor or a ``(probs, atoms)`` pair."""
    if isinstance(distribution, torch.Tensor):
        probs, atoms = distribution, None
    elif isinstance(distribution, tuple | list) and len(distribution) == 2:
        probs, atoms = distribution
        if not isinstance(atoms, torch.Tensor):
            raise TypeError(f"atoms must be a torch.Tensor, got {type(atoms).__name__}")
    else:
        raise TypeError(
            "distribution must be a probs tensor of shape (N, K) or a pair (probs, atoms) of shapes "
            f"(N, M) and (N, M, D), got {type(distribution).__name__}"
        )
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise TypeError(f"probs must have a floating dtype, got {probs.dtype}")
    if probs.ndim != 2:
        raise ValueError(
            f"probs must have shape (N, K) (one row per example), got shape {tuple(probs.shape)}"
        )
    if atoms is not None and (atoms.ndim != 3 or atoms.shape[:2] != probs.shape):
        raise ValueError(
            f"atoms must have shape (N, M, D) = {tuple(probs.shape)} + (D,) to match probs, "
            f"got shape {tuple(atoms.shape)}"
        )
    return probs, atoms


def marginalize(
    distribution: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    check: bool = True,
) -> Marginal:
    r"""Exact expectation of ``loss_fn`` under a sparse distribution, per example.

    .. math::

        \mathbb{E}_{\pi_n}[\ell(n, z)] = \sum_{z:\ \pi_n(z) > 0} \pi_n(z)\, \ell(n, z)

    Every (example, structure) pair with nonzero probability is packed into
    one batch and ``loss_fn`` is called once on it; pairs of probability zero
    are never evaluated.  Gradients flow into the probabilities (and so into
    the scores, by the backward rule of the mapping that made them) and into
    ``loss_fn``'s own parameters.

    Parameters
    ----------
    distribution : torch.Tensor or tuple of torch.Tensor
        Either dense probabilities of shape (N, K) over K categories (from
        ``sparsemax``, ``topk_sparsemax`` or ``softmax``), or a pair
        ``(probs, atoms)`` of shapes (N, M) and (N, M, D) from
        ``topk_sparsemax_structured`` or ``sparsemap``.
    loss_fn : callable
        ``loss_fn(example, structure) -> losses``.  ``example`` is an int64
        tensor of shape (P,) indexing the batch's examples; ``structure`` is
        an int64 tensor of shape (P,) of category indices (dense
        distribution) or the atoms, of shape (P, D) (structured
        distribution).  It returns the losses of shape (P,) or (P, ...).
    check : bool, default True
        Raise a ``ValueError`` if ``loss_fn`` returns a NaN (a host read; pass
        ``False`` to skip it).

    Returns
    -------
    Marginal
        ``(expectation, calls, support)``: the expectations of shape
        (N, ...), the number of loss evaluations, and the support size of each
        example.

    Raises
    ------
    TypeError, ValueError
        For a malformed distribution (wrong shapes, negative or NaN
        probabilities) or a loss function that returns the wrong shape or a
        NaN.

    References
    ----------
    Correia, Niculae, Aziz and Martins, "Efficient Marginalization of
    Discrete and Structured Latent Variables via Sparsity", NeurIPS 2020.

    Examples
    --------
    >>> import torch
    >>> import sparsecore_torch
    >>> scores = torch.tensor([[2.0, 1.5, -1.0], [0.0, 3.0, 0.0]], requires_grad=True)
    >>> probs = sparsecore_torch.sparsemax(scores)
    >>> table = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    >>> result = sparsecore_torch.marginalize(probs, lambda n, z: table[n, z])
    >>> result.expectation.tolist(), result.calls, result.support.tolist()
    ([1.25, 5.0], 3, [2, 1])
    >>> result.expectation.sum().backward()
    >>> scores.grad
    tensor([[-0.5000,  0.5000,  0.0000],
            [ 0.0000,  0.0000,  0.0000]])
    """
    probs, atoms = _split_distribution(distribution)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    if probs.numel() and bool(torch.isnan(probs).any() | (probs < 0).any()):
        raise ValueError("probs must be nonnegative and not NaN (a NaN score gives a NaN row)")

    example, slot = torch.nonzero(probs.detach(), as_tuple=True)
    calls = int(example.shape[0])
    support = torch.bincount(example, minlength=probs.shape[0])
    structure = slot if atoms is None else atoms[example, slot]
    losses = loss_fn(example, structure)

    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"loss_fn must return a torch.Tensor, got {type(losses).__name__}")
    if losses.ndim == 0 or losses.shape[0] != calls:
        raise ValueError(
            f"loss_fn must return one loss per evaluated pair, shape ({calls}, ...), "
            f"got shape {tuple(losses.shape)}"
        )
    if check and calls and bool(torch.isnan(losses).any()):
        bad = int(torch.isnan(losses.reshape(calls, -1)).any(-1).nonzero()[0, 0])
        raise ValueError(
            f"loss_fn returned NaN for example {int(example[bad])} at structure "
            f"{structure[bad].tolist()} (pass check=False to skip this check)"
        )

    dtype = torch.promote_types(probs.dtype, losses.dtype)
    weights = probs[example, slot].to(dtype)
    weighted = weights.reshape((calls,) + (1,) * (losses.ndim - 1)) * losses.to(dtype)
    expectation = torch.zeros(
        (probs.shape[0], *losses.shape[1:]), dtype=weighted.dtype, device=weighted.device
    )
    return Marginal(expectation.index_add(0, example, weighted), calls, support)
