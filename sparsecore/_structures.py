"""Structures: sets of 0/1 vectors with argmax and k-best oracles.

A structure ``z`` is represented by its 0/1 indicator ``a_z`` of length D and
scored ``<a_z, t>``.  A structure class only needs two methods:

``argmax(v)``
    the best structure for scores ``v`` of shape (..., D), as a 0/1 array of
    shape (..., D) in ``v``'s namespace and dtype (used by SparseMAP);
``kbest(t, k)``
    the ``k`` highest-scoring structures: ``(scores, atoms)`` of shapes
    (..., k) and (..., k, D), best first; when fewer than ``k`` structures
    exist the extra slots have score ``-inf`` and an all-zero atom (used by
    structured top-k sparsemax).

Both must use only array-API operations on the input's namespace (see
:func:`array_api_compat.array_namespace`), with shapes fixed by D and k, so
that they run on every backend and under ``jax.jit``.  Structures are
immutable and hashable (frozen dataclasses) so that JAX can treat them as
static arguments.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Protocol, runtime_checkable

from array_api_compat import device

from ._lib._namespace import array_namespace, take_along_axis
from ._topk import topk_mask

__all__ = ["BitVector", "Budget", "Categorical", "Structure"]


@runtime_checkable
class Structure(Protocol):
    """The protocol a structure implements (see the module documentation)."""

    @property
    def dim(self) -> int:
        """D, the length of the indicator vectors."""
        ...

    def argmax(self, v: Any) -> Any:
        """The best structure for scores ``v`` of shape (..., D)."""
        ...

    def kbest(self, t: Any, k: int) -> tuple[Any, Any]:
        """The ``k`` best structures: scores (..., k) and atoms (..., k, D)."""
        ...


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_scores(t: Any, dim: int, name: str = "t") -> Any:
    xp = array_namespace(t)
    if not xp.isdtype(t.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got dtype {t.dtype}")
    if t.ndim == 0 or t.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (..., {dim}), got shape {t.shape}")
    return xp


def unchecked_argmax(structure: Any, v: Any, *, xp: Any) -> Any:
    """``structure.argmax(v)`` without checking ``v`` again.

    The solvers check their input once at the public boundary and call the
    oracle at every step: the structures of this package skip their checks
    through ``_argmax_unchecked``; any other structure gets its public
    ``argmax``.
    """
    method = getattr(structure, "_argmax_unchecked", None)
    if method is None:
        return structure.argmax(v)
    return method(v, xp=xp)


def check_structure_input(t: Any, structure: Any, methods: tuple[str, ...]) -> None:
    """Raise unless ``structure`` has ``dim`` and ``methods`` and ``t`` is (..., dim)."""
    if not all(hasattr(structure, name) for name in ("dim", *methods)):
        raise TypeError(
            f"structure must implement {', '.join(methods)} and dim, got {type(structure).__name__}"
        )
    if t.ndim == 0 or t.shape[-1] != structure.dim:
        raise ValueError(f"t must have shape (..., {structure.dim}) for {structure!r}, got shape {t.shape}")


def _one_hot(indices: Any, size: int, dtype: Any, *, xp: Any) -> Any:
    positions = xp.arange(size, device=device(indices))
    return xp.astype(indices[..., None] == positions, dtype)


@dataclasses.dataclass(frozen=True)
class Categorical:
    """One of K categories: the atoms are the one-hot vectors of length K.

    SparseMAP over it is sparsemax, and its k-best structures are the k
    largest scores.
    """

    size: int

    def __post_init__(self) -> None:
        _check_positive_int(self.size, "size")

    @property
    def dim(self) -> int:
        return self.size

    def argmax(self, v: Any) -> Any:
        return self._argmax_unchecked(v, xp=_check_scores(v, self.size, "v"))

    def _argmax_unchecked(self, v: Any, *, xp: Any) -> Any:
        return _one_hot(xp.argmax(v, axis=-1), self.size, v.dtype, xp=xp)

    def kbest(self, t: Any, k: int) -> tuple[Any, Any]:
        xp = _check_scores(t, self.size)
        count = min(k, self.size)
        order = xp.argsort(t, axis=-1, descending=True, stable=True)[..., :count]
        scores = take_along_axis(t, order, axis=-1, xp=xp)
        atoms = _one_hot(order, self.size, t.dtype, xp=xp)
        return _pad(scores, atoms, k, xp=xp)


@dataclasses.dataclass(frozen=True)
class BitVector:
    """Any subset of D binary variables: the atoms are all of {0, 1}^D.

    The best structure sets ``z_i = [t_i >= 0]``, with score
    ``sum_i max(t_i, 0)``; every other structure flips a set F of bits and
    loses ``sum_{i in F} |t_i|``.  So the k best structures flip the k
    smallest subset sums of ``|t|``, and only the k - 1 smallest ``|t_i|``
    can take part: ``kbest`` merges their subset sums in O(k^2 log k).
    """

    size: int

    def __post_init__(self) -> None:
        _check_positive_int(self.size, "size")

    @property
    def dim(self) -> int:
        return self.size

    def argmax(self, v: Any) -> Any:
        return self._argmax_unchecked(v, xp=_check_scores(v, self.size, "v"))

    def _argmax_unchecked(self, v: Any, *, xp: Any) -> Any:
        return xp.astype(v >= 0, v.dtype)

    def sparsemap_closed_form(self, t: Any) -> tuple[Any, Any]:
        """SparseMAP in closed form: ``mu = clip(t, 0, 1)`` as nested atoms.

        With the clipped scores sorted, ``u_(1) >= ... >= u_(D)``, the atoms
        are the empty set (weight ``1 - u_(1)``) and the prefixes of the
        sorted order (prefix j has weight ``u_(j) - u_(j+1)``): D + 1 slots,
        zero-weight slots as padding.  O(D log D).
        """
        xp = _check_scores(t, self.size)
        clipped = xp.clip(t, min=0.0, max=1.0)
        order = xp.argsort(clipped, axis=-1, descending=True, stable=True)
        ordered = take_along_axis(clipped, order, axis=-1, xp=xp)
        batch = t.shape[:-1]
        one = xp.ones((*batch, 1), dtype=t.dtype, device=device(t))
        zero = xp.zeros((*batch, 1), dtype=t.dtype, device=device(t))
        upper = xp.concat([one, ordered], axis=-1)
        lower = xp.concat([ordered, zero], axis=-1)
        probs = upper - lower  # (..., D + 1): empty set, then prefixes of length 1..D
        rank = xp.argsort(order, axis=-1, stable=True)  # position of each variable in the order
        lengths = xp.arange(self.size + 1, device=device(t))
        atoms = xp.astype(rank[..., None, :] < lengths[:, None], t.dtype)
        used = probs > 0
        probs = xp.where(used, probs, xp.zeros_like(probs))
        return probs, xp.where(used[..., None], atoms, xp.zeros_like(atoms))

    def kbest(self, t: Any, k: int) -> tuple[Any, Any]:
        xp = _check_scores(t, self.size)
        k = _check_positive_int(k, "k")
        dtype = t.dtype
        best = xp.astype(t >= 0, dtype)
        best_score = xp.sum(xp.where(t >= 0, t, xp.zeros_like(t)), axis=-1, keepdims=True)
        magnitude = xp.abs(t)
        used = min(k - 1, self.size)
        order = xp.argsort(magnitude, axis=-1, stable=True)[..., :used]
        costs = take_along_axis(magnitude, order, axis=-1, xp=xp)  # ascending, (..., used)
        batch = t.shape[:-1]
        # The k smallest subset sums of ``costs`` and which costs they use,
        # kept sorted; slot 0 is the empty flip (the best structure).
        inf = xp.full((*batch, k - 1), xp.inf, dtype=dtype, device=device(t))
        sums = xp.concat([xp.zeros((*batch, 1), dtype=dtype, device=device(t)), inf], axis=-1)
        flips = xp.zeros((*batch, k, used), dtype=dtype, device=device(t))
        for j in range(used):
            with_j = _one_hot(xp.full((*batch, k), j, device=device(t)), used, dtype, xp=xp)
            candidate_sums = xp.concat([sums, sums + costs[..., j : j + 1]], axis=-1)
            candidate_flips = xp.concat([flips, xp.maximum(flips, with_j)], axis=-2)
            keep = xp.argsort(candidate_sums, axis=-1, stable=True)[..., :k]
            sums = take_along_axis(candidate_sums, keep, axis=-1, xp=xp)
            flips = take_along_axis(candidate_flips, keep[..., None], axis=-2, xp=xp)
        # Back from the ``used`` smallest costs to the D positions.
        flipped = flips @ _one_hot(order, self.size, dtype, xp=xp)  # (..., k, D)
        atoms = best[..., None, :] + flipped - 2.0 * best[..., None, :] * flipped
        scores = best_score - sums
        valid = xp.isfinite(sums)
        atoms = xp.where(valid[..., None], atoms, xp.zeros_like(atoms))
        return scores, atoms


@dataclasses.dataclass(frozen=True)
class Budget:
    """Subsets of at most ``budget`` of D binary variables.

    The best structure keeps the ``budget`` largest nonnegative scores (ties
    by position), in O(D log D) through partial selection.  With
    ``budget >= size`` it is :class:`BitVector`.

    The k best subsets use only the ``budget + k - 1`` largest scores (a
    subset holding a lower-ranked entry has at least k distinct feasible
    swaps that score no less), and ``kbest`` finds them by dynamic
    programming over those entries, keeping the k best partial sums for
    every count of chosen entries: O((B + k) B k log k).
    """

    size: int
    budget: int

    def __post_init__(self) -> None:
        _check_positive_int(self.size, "size")
        if isinstance(self.budget, bool) or not isinstance(self.budget, numbers.Integral) or self.budget < 0:
            raise ValueError(f"budget must be a nonnegative integer, got {self.budget!r}")

    @property
    def dim(self) -> int:
        return self.size

    def argmax(self, v: Any) -> Any:
        return self._argmax_unchecked(v, xp=_check_scores(v, self.size, "v"))

    def _argmax_unchecked(self, v: Any, *, xp: Any) -> Any:
        nonnegative = v >= 0
        if self.budget == 0:
            return xp.zeros_like(v)
        if self.budget < self.size:
            nonnegative = nonnegative & topk_mask(v, self.budget, xp=xp)
        return xp.astype(nonnegative, v.dtype)

    def kbest(self, t: Any, k: int) -> tuple[Any, Any]:
        xp = _check_scores(t, self.size)
        k = _check_positive_int(k, "k")
        dtype = t.dtype
        dev = device(t)
        batch = t.shape[:-1]
        used = min(self.size, self.budget + k - 1)
        counts = min(self.budget, used) + 1
        order = xp.argsort(t, axis=-1, descending=True, stable=True)[..., :used]
        values = take_along_axis(t, order, axis=-1, xp=xp)  # descending, (..., used)
        # sums[..., c, s]: the s-th best sum of c chosen entries so far.
        minus_inf = xp.full((*batch, counts, k), -xp.inf, dtype=dtype, device=dev)
        start = xp.arange(counts * k, device=dev) == 0
        sums = xp.where(xp.reshape(start, (counts, k)), xp.zeros_like(minus_inf), minus_inf)
        took_steps, source_steps = [], []
        for item in range(used):
            shifted = xp.concat([minus_inf[..., :1, :], sums[..., :-1, :]], axis=-2)
            candidates = xp.concat([sums, shifted + values[..., item, None, None]], axis=-1)
            keep = xp.argsort(candidates, axis=-1, descending=True, stable=True)[..., :k]
            sums = take_along_axis(candidates, keep, axis=-1, xp=xp)
            took_steps.append(keep >= k)
            source_steps.append(keep % k)
        # The k best over every count, then back through the choices.
        flat = xp.reshape(sums, (*batch, counts * k))
        best = xp.argsort(flat, axis=-1, descending=True, stable=True)[..., :k]
        scores = take_along_axis(flat, best, axis=-1, xp=xp)
        count = best // k
        slot = best % k
        chosen = []
        for item in range(used - 1, -1, -1):
            index = count * k + slot
            took = take_along_axis(xp.reshape(took_steps[item], (*batch, counts * k)), index, axis=-1, xp=xp)
            source = take_along_axis(
                xp.reshape(source_steps[item], (*batch, counts * k)), index, axis=-1, xp=xp
            )
            chosen.append(xp.astype(took, dtype))
            count = count - xp.astype(took, count.dtype)
            slot = source
        if used == 0:  # k = 1 and budget 0: only the empty set
            atoms = xp.zeros((*batch, k, self.size), dtype=dtype, device=dev)
        else:
            picked = xp.stack(chosen[::-1], axis=-1)  # (..., k, used)
            atoms = picked @ _one_hot(order, self.size, dtype, xp=xp)
        valid = xp.isfinite(scores)
        return scores, xp.where(valid[..., None], atoms, xp.zeros_like(atoms))


def _pad(scores: Any, atoms: Any, k: int, *, xp: Any) -> tuple[Any, Any]:
    """Pad (..., m) scores and (..., m, D) atoms to k slots of -inf and zeros."""
    missing = k - scores.shape[-1]
    if missing <= 0:
        return scores, atoms
    batch = scores.shape[:-1]
    pad_scores = xp.full((*batch, missing), -xp.inf, dtype=scores.dtype, device=device(scores))
    pad_atoms = xp.zeros((*batch, missing, atoms.shape[-1]), dtype=atoms.dtype, device=device(atoms))
    return xp.concat([scores, pad_scores], axis=-1), xp.concat([atoms, pad_atoms], axis=-2)
