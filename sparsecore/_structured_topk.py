"""Structured top-k sparsemax: sparsemax over the k best structures."""

from __future__ import annotations

from typing import Any

from ._lib._namespace import array_namespace, quiet
from ._lib._validation import check_floating, check_tangent
from ._sparsemax import sparsemax_last, sparsemax_vjp_last
from ._structures import Structure, _check_positive_int, check_structure_input

__all__ = [
    "topk_sparsemax_structured",
    "topk_sparsemax_structured_is_exact",
    "topk_sparsemax_structured_jvp",
    "topk_sparsemax_structured_vjp",
]


def topk_sparsemax_structured(t: Any, structure: Structure, k: int) -> tuple[Any, Any]:
    r"""Sparsemax over the ``k`` highest-scoring structures.

    With the k best structures :math:`z_1, \dots, z_k` of scores
    :math:`\langle a_{z_j}, t \rangle` (``structure.kbest``),

    .. math::

        \pi = \operatorname{sparsemax}\bigl(\langle a_{z_1}, t\rangle, \dots,
        \langle a_{z_k}, t\rangle\bigr).

    When fewer than ``k`` slots get probability, the result equals
    structured sparsemax over all structures (the k-th best got 0, so did
    every worse one): :func:`topk_sparsemax_structured_is_exact`.

    Parameters
    ----------
    t : array of shape (..., D)
        Variable scores, of a real floating dtype.
    structure : Structure
        ``BitVector(D)``, ``Categorical(D)`` or any object with ``kbest``.
    k : int
        Number of slots, ``k >= 1``.  Structures that do not exist (``k``
        larger than their number) are padding slots of probability 0.

    Returns
    -------
    probs : array of shape (..., k)
        Probabilities of the slots, best structure first; padding is 0.
    atoms : array of shape (..., k, D)
        The 0/1 indicator of each slot's structure; padding is all zeros.

    References
    ----------
    .. [1] G. M. Correia, V. Niculae, W. Aziz and A. F. T. Martins, "Efficient
       marginalization of discrete and structured latent variables via
       sparsity", NeurIPS 2020, section 4.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsecore import BitVector, topk_sparsemax_structured
    >>> probs, atoms = topk_sparsemax_structured(np.array([0.9, -0.2]), BitVector(2), k=3)
    >>> probs
    array([0.6, 0.4, 0. ])
    >>> atoms
    array([[1., 0.],
           [1., 1.],
           [0., 0.]])
    """
    xp = array_namespace(t)
    check_floating(t, "t", xp=xp)
    k = _check_positive_int(k, "k")
    check_structure_input(t, structure, ("kbest",))
    with quiet(xp):
        scores, atoms = structure.kbest(t, k)
        probs = sparsemax_last(scores, xp=xp)
    return probs, atoms


def topk_sparsemax_structured_vjp(probs: Any, atoms: Any, grad_probs: Any) -> Any:
    r"""Vector-Jacobian product of :func:`topk_sparsemax_structured` w.r.t. ``t``.

    .. math::

        \frac{\partial \ell}{\partial t} = \sum_j a_{z_j}\,
        \bigl[\operatorname{sparsemax\_vjp}(\pi, g)\bigr]_j.

    Parameters
    ----------
    probs, atoms : arrays of shapes (..., k) and (..., k, D)
        The outputs of :func:`topk_sparsemax_structured`.
    grad_probs : array of shape (..., k)
        The cotangent of ``probs``.

    Returns
    -------
    grad_t : array of shape (..., D)
    """
    xp = array_namespace(probs, atoms, grad_probs)
    if tuple(grad_probs.shape) != tuple(probs.shape):
        raise ValueError(f"grad_probs must have the shape of probs, got {grad_probs.shape} and {probs.shape}")
    with quiet(xp):
        grad_scores = sparsemax_vjp_last(probs, grad_probs, xp=xp)
    return (grad_scores[..., None, :] @ atoms)[..., 0, :]


def topk_sparsemax_structured_is_exact(probs: Any) -> Any:
    """Per row, whether structured top-k sparsemax equals structured sparsemax.

    True when fewer than all ``k`` slots have probability: the k-th best
    structure got 0, and so did every structure outside the k best.
    """
    xp = array_namespace(probs)
    return xp.any(probs == 0, axis=-1)


def topk_sparsemax_structured_jvp(probs: Any, atoms: Any, tangent_t: Any) -> Any:
    r"""Jacobian-vector product of :func:`topk_sparsemax_structured` w.r.t. ``t``.

    The slots' scores are :math:`\langle a_{z_j}, t \rangle` (the k-best
    selection is locally constant), so a direction :math:`\dot t` moves them
    by :math:`A_k \dot t` and the probabilities by the sparsemax JVP of that:

    .. math::

        \dot \pi = \operatorname{sparsemax\_jvp}(\pi, A_k \dot t).

    Parameters
    ----------
    probs, atoms : arrays of shapes (..., k) and (..., k, D)
        The outputs of :func:`topk_sparsemax_structured`.
    tangent_t : array of shape (..., D)
        The direction of ``t``.

    Returns
    -------
    tangent_probs : array of shape (..., k)
        The derivative of ``probs`` in the direction ``tangent_t`` (the
        ``atoms`` do not move).

    Examples
    --------
    >>> import numpy as np
    >>> from sparsecore import BitVector, topk_sparsemax_structured, topk_sparsemax_structured_jvp
    >>> probs, atoms = topk_sparsemax_structured(np.array([0.9, -0.2]), BitVector(2), k=3)
    >>> topk_sparsemax_structured_jvp(probs, atoms, np.array([0.0, 1.0]))
    array([-0.5,  0.5,  0. ])
    """
    xp = array_namespace(probs, atoms, tangent_t)
    check_tangent(probs, atoms, tangent_t, xp=xp)
    with quiet(xp):
        tangent_scores = (atoms @ tangent_t[..., None])[..., 0]
        return sparsemax_vjp_last(probs, tangent_scores, xp=xp)
