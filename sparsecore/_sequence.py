"""Linear-chain sequences: Viterbi and k-best Viterbi oracles."""

from __future__ import annotations

import dataclasses
from typing import Any

from array_api_compat import device

from ._lib._namespace import array_namespace, take_along_axis
from ._structures import _check_positive_int, _check_scores, _one_hot

__all__ = ["Sequence"]


@dataclasses.dataclass(frozen=True)
class Sequence:
    r"""Assignments of one of ``n_states`` states to each of ``length`` positions.

    A sequence :math:`y = (y_1, \dots, y_L)` is scored by unary and
    transition scores,

    .. math::

        \langle a_y, t \rangle = \sum_{i=1}^{L} u_{i, y_i}
        + \sum_{i=1}^{L-1} w_{i, y_i, y_{i+1}},

    and its indicator :math:`a_y` is the concatenation of the unary
    indicators (``length * n_states`` entries, row-major by position then
    state) and the transition indicators (``(length - 1) * n_states ** 2``
    entries, row-major by position, previous state, next state), so
    ``dim = length * n_states + (length - 1) * n_states ** 2``.

    ``argmax`` is the Viterbi algorithm and ``kbest`` its k-best extension
    (k best partial scores per position and state), both a max-plus scan
    over the positions with array operations over the batch, O(L S^2) and
    O(L S^2 k log(S k)) per row.  Ties go to the sequence that is smallest
    lexicographically (the lowest state at the first position where two
    sequences differ), deterministically: ``kbest`` lists structures of
    equal score in that order.

    Parameters
    ----------
    length : int
        Number of positions L.
    n_states : int
        Number of states S per position.

    References
    ----------
    .. [1] V. Niculae, A. F. T. Martins, M. Blondel and C. Cardie, "SparseMAP:
       differentiable sparse structured inference", ICML 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsecore import Sequence
    >>> structure = Sequence(length=3, n_states=2)
    >>> t = np.zeros(structure.dim)
    >>> t[[1, 2, 5]] = 1.0  # unary scores: state 1, then 0, then 1
    >>> structure.states(structure.argmax(t))
    array([1, 0, 1])
    """

    length: int
    n_states: int

    def __post_init__(self) -> None:
        _check_positive_int(self.length, "length")
        _check_positive_int(self.n_states, "n_states")

    @property
    def dim(self) -> int:
        return self.length * self.n_states + (self.length - 1) * self.n_states**2

    def _parts(self, v: Any, *, xp: Any) -> tuple[Any, Any]:
        """Unary (N, L, S) and transition (N, L - 1, S, S) scores of rows of ``v``."""
        length, states = self.length, self.n_states
        rows = xp.reshape(v, (-1, self.dim))
        count = rows.shape[0]
        unary = xp.reshape(rows[:, : length * states], (count, length, states))
        transitions = xp.reshape(rows[:, length * states :], (count, length - 1, states, states))
        return unary, transitions

    def _atoms(self, states: Any, dtype: Any, *, xp: Any) -> Any:
        count = self.n_states
        batch = states.shape[:-1]
        unary = xp.reshape(_one_hot(states, count, dtype, xp=xp), (*batch, self.length * count))
        if self.length == 1:
            return unary
        codes = states[..., :-1] * count + states[..., 1:]
        transitions = _one_hot(codes, count * count, dtype, xp=xp)
        transitions = xp.reshape(transitions, (*batch, (self.length - 1) * count * count))
        return xp.concat([unary, transitions], axis=-1)

    def states(self, atoms: Any) -> Any:
        """The state sequences (..., L) of indicators (..., D) (their unary part)."""
        xp = array_namespace(atoms)
        unary = atoms[..., : self.length * self.n_states]
        unary = xp.reshape(unary, (*atoms.shape[:-1], self.length, self.n_states))
        return xp.argmax(unary, axis=-1)

    def argmax(self, v: Any) -> Any:
        return self._argmax_unchecked(v, xp=_check_scores(v, self.dim, "v"))

    def _argmax_unchecked(self, v: Any, *, xp: Any) -> Any:
        unary, transitions = self._parts(v, xp=xp)
        # Backward over the positions: best[s] is the best score of a suffix
        # starting in state s, so that following the (first-maximum) pointers
        # forward gives the lexicographically smallest best sequence.
        best = unary[:, -1, :]
        pointers = []
        for position in range(self.length - 2, -1, -1):
            candidates = transitions[:, position, :, :] + best[:, None, :]  # (N, previous, next)
            pointers.append(xp.argmax(candidates, axis=-1))
            best = unary[:, position, :] + xp.max(candidates, axis=-1)
        state = xp.argmax(best, axis=-1)
        states = [state]
        for pointer in pointers[::-1]:
            state = take_along_axis(pointer, state[:, None], axis=-1, xp=xp)[:, 0]
            states.append(state)
        path = xp.stack(states, axis=-1)
        return xp.reshape(self._atoms(path, v.dtype, xp=xp), v.shape)

    def kbest(self, t: Any, k: int) -> tuple[Any, Any]:
        xp = _check_scores(t, self.dim)
        k = _check_positive_int(k, "k")
        unary, transitions = self._parts(t, xp=xp)
        rows, states = unary.shape[0], self.n_states
        # best[:, s, r]: the r-th best suffix score from state s; candidates
        # are laid out (next state, rank), so a stable sort keeps equal scores
        # in lexicographic order of their suffixes.
        first = xp.arange(k, device=device(t)) == 0
        best = xp.where(first, unary[:, -1, :, None], xp.full_like(unary[:, -1, :, None], -xp.inf))
        pointers = []
        for position in range(self.length - 2, -1, -1):
            candidates = transitions[:, position, :, :, None] + best[:, None, :, :]  # (N, S, S, k)
            values, index = top_k(xp.reshape(candidates, (rows, states, states * k)), k, xp=xp)
            pointers.append(index)
            best = unary[:, position, :, None] + values
        scores, index = top_k(xp.reshape(best, (rows, states * k)), k, xp=xp)
        state, rank = index // k, index % k
        path = [state]
        for pointer in pointers[::-1]:
            index = take_along_axis(xp.reshape(pointer, (rows, states * k)), state * k + rank, axis=-1, xp=xp)
            state, rank = index // k, index % k
            path.append(state)
        atoms = self._atoms(xp.stack(path, axis=-1), t.dtype, xp=xp)  # (N, k, D)
        valid = xp.isfinite(scores)
        atoms = xp.where(valid[..., None], atoms, xp.zeros_like(atoms))
        batch = t.shape[:-1]
        return xp.reshape(scores, (*batch, k)), xp.reshape(atoms, (*batch, k, self.dim))


def top_k(values: Any, k: int, *, xp: Any) -> tuple[Any, Any]:
    """The ``k`` largest entries along the last axis and their indices, best
    first, equal values in index order (``values`` has at least ``k``)."""
    if k == 1:
        index = xp.argmax(values, axis=-1, keepdims=True)
    else:
        index = xp.argsort(values, axis=-1, descending=True, stable=True)[..., :k]
    return take_along_axis(values, index, axis=-1, xp=xp), index
