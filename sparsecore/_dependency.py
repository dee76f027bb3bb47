"""Dependency trees: Eisner (projective) and Chu-Liu-Edmonds (non-projective) oracles."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from array_api_compat import device, is_cupy_namespace, is_torch_namespace

from ._lib._namespace import array_namespace, is_jax_namespace, take
from ._sequence import top_k
from ._structures import _check_positive_int, _check_scores, _one_hot

__all__ = ["DependencyTree"]


@dataclasses.dataclass(frozen=True)
class DependencyTree:
    r"""Dependency trees over ``n_words`` words, with a single root.

    An arc goes from a head ``0..n_words`` (0 is the root) to a modifier
    ``1..n_words``.  A tree gives every word exactly one head, has no cycles,
    and attaches exactly one word to the root (the single-root convention
    of most treebanks).  Its indicator is the ``(n_words + 1, n_words)``
    matrix of its arcs ``[head, modifier - 1]`` flattened row-major, so
    ``dim = (n_words + 1) * n_words``, and a tree scores

    .. math::

        \langle a_y, t \rangle = \sum_{(h, m) \in y} t_{h, m - 1}.

    The entries ``[m, m - 1]`` (self-arcs) are never used: they are 0 in
    every atom and their scores are ignored.

    ``projective=True`` keeps the trees whose arcs do not cross (the root
    sits left of the first word): ``argmax`` is Eisner's algorithm, a
    dynamic program over span lengths batched over the rows, O(n^3), and
    ``kbest`` its k-best extension (the k best scores per span), O(n^3 k^2
    log k).  Equal scores come out in a fixed order, the dynamic program's.
    ``projective=False`` allows every tree: ``argmax`` is the Chu-Liu-Edmonds
    maximum spanning arborescence with the single-root constraint (the root's
    arcs get a penalty larger than any score difference, so the best tree
    has one root arc), run row by row in float64 on a host (NumPy) copy: it is
    sequential, and under ``jax.jit`` it runs through ``jax.pure_callback``.
    Its ``kbest`` (Camerini et al.'s algorithm) is not implemented and
    raises ``NotImplementedError``.

    Parameters
    ----------
    n_words : int
        Number of words n.
    projective : bool, default False
        Whether only projective trees are allowed.

    References
    ----------
    .. [1] J. Eisner, "Three new probabilistic models for dependency parsing:
       an exploration", COLING 1996.
    .. [2] R. McDonald, F. Pereira, K. Ribarov and J. Hajič, "Non-projective
       dependency parsing using spanning tree algorithms", HLT-EMNLP 2005.
    .. [3] R. Zmigrod, T. Vieira and R. Cotterell, "Please mind the root:
       decoding arborescences for dependency parsing", EMNLP 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from sparsecore import DependencyTree
    >>> tree = DependencyTree(3, projective=True)
    >>> t = np.zeros(tree.dim)
    >>> t[[2, 10, 6]] = 1.0  # arcs root -> 3, 3 -> 2, 2 -> 1 ([head, modifier - 1] flattened)
    >>> tree.heads(tree.argmax(t))
    array([2, 3, 0])
    """

    n_words: int
    projective: bool = False

    def __post_init__(self) -> None:
        _check_positive_int(self.n_words, "n_words")
        if not isinstance(self.projective, bool):
            raise TypeError(f"projective must be a bool, got {self.projective!r}")

    @property
    def dim(self) -> int:
        return (self.n_words + 1) * self.n_words

    def heads(self, atoms: Any) -> Any:
        """The head (0 for the root) of each word, (..., n_words), of indicators (..., D)."""
        xp = array_namespace(atoms)
        arcs = xp.reshape(atoms, (*atoms.shape[:-1], self.n_words + 1, self.n_words))
        return xp.argmax(arcs, axis=-2)

    def argmax(self, v: Any) -> Any:
        return self._argmax_unchecked(v, xp=_check_scores(v, self.dim, "v"))

    def _argmax_unchecked(self, v: Any, *, xp: Any) -> Any:
        if self.projective:
            _, atoms = _eisner(self, v, 1, xp=xp)
            return atoms[..., 0, :]
        return _on_host(self._argmax_host, v, xp=xp)

    def kbest(self, t: Any, k: int) -> tuple[Any, Any]:
        xp = _check_scores(t, self.dim)
        k = _check_positive_int(k, "k")
        if not self.projective:
            raise NotImplementedError(
                "kbest of DependencyTree(projective=False) is not implemented (it needs "
                "Camerini's k-best arborescences); use projective=True for structured top-k, "
                "or sparsemap, which needs only argmax"
            )
        return _eisner(self, t, k, xp=xp)

    def _argmax_host(self, v: np.ndarray) -> np.ndarray:
        """Chu-Liu-Edmonds on float64 NumPy rows (..., D), single root.

        The greedy heads of all rows are found at once; only rows whose
        greedy heads hold a cycle go through the contraction, one by one.
        """
        words = self.n_words
        rows = np.reshape(np.asarray(v, dtype=np.float64), (-1, words + 1, words))
        square = _single_root_scores(rows)
        heads = np.argmax(square, axis=1)  # (N, words + 1): the greedy head of each node
        heads[:, 0] = 0
        reached = heads
        for _ in range(words):  # follow the heads; a row without cycles reaches the root
            reached = np.take_along_axis(heads, reached, axis=1)
        for row in np.flatnonzero(np.any(reached != 0, axis=1)):
            heads[row] = _chu_liu_edmonds(square[row])
        out = np.zeros(rows.shape, dtype=np.float64)
        count = rows.shape[0]
        out[np.arange(count)[:, None], heads[:, 1:], np.arange(words)[None, :]] = 1.0
        return np.reshape(out, np.shape(v))


def _on_host(function: Any, v: Any, *, xp: Any) -> Any:
    """``function`` (float64 NumPy to NumPy, same shape) applied to ``v`` on a
    host copy, the result back in ``v``'s namespace, device and dtype."""
    if is_jax_namespace(xp):
        import jax

        shape = jax.ShapeDtypeStruct(v.shape, v.dtype)
        return jax.pure_callback(
            lambda values: function(np.asarray(values)).astype(values.dtype),
            shape,
            v,
            vmap_method="broadcast_all",
        )
    if is_torch_namespace(xp):
        host = v.detach().cpu().numpy()
    elif is_cupy_namespace(xp):
        host = xp.asnumpy(v)
    else:
        host = np.asarray(v)
    result = function(host)
    return xp.asarray(result, dtype=v.dtype, device=device(v))


def _single_root_scores(rows: np.ndarray) -> np.ndarray:
    """Square arc scores (N, n + 1, n + 1) ``[head, modifier]`` of rows
    (N, n + 1, n) ``[head, modifier - 1]``, for the single-root tree.

    No arcs enter the root and there are no self-arcs (-inf).  Every root
    arc is lowered by a constant larger than any difference of tree scores,
    so that the unconstrained maximum arborescence (Chu-Liu-Edmonds) of the
    lowered scores has one root arc and is the best tree with one root arc
    (Zmigrod et al., 2020, section 3).
    """
    count, _, words = rows.shape
    square = np.full((count, words + 1, words + 1), -np.inf)
    square[:, :, 1:] = rows
    square[:, np.arange(1, words + 1), np.arange(1, words + 1)] = -np.inf
    finite = np.isfinite(square)
    high = np.max(np.where(finite, square, -np.inf), axis=(1, 2), initial=0.0)
    low = np.min(np.where(finite, square, np.inf), axis=(1, 2), initial=0.0)
    square[:, 0, 1:] -= (words * (high - low) + 1.0)[:, None]
    return square


def _chu_liu_edmonds(scores: np.ndarray) -> np.ndarray:
    """Heads (n,) of the maximum arborescence rooted at node 0 of the square
    score matrix ``scores[head, modifier]`` (entry 0 of the result is -1).

    Recursive contraction of cycles, O(n^3); the greedy head of each node
    is the first maximum (lowest head index).
    """
    size = scores.shape[0]
    heads = np.argmax(scores, axis=0)
    heads[0] = -1
    cycle = _find_cycle(heads)
    if cycle is None:
        return heads
    in_cycle = np.zeros(size, dtype=bool)
    in_cycle[cycle] = True
    outside = np.flatnonzero(~in_cycle)  # includes the root, first
    new = len(outside)  # index of the contracted node
    contracted = np.full((new + 1, new + 1), -np.inf)
    contracted[:new, :new] = scores[np.ix_(outside, outside)]
    # Arcs into the cycle replace the arc into the node they enter.
    cycle_heads = heads[cycle]
    gain = scores[:, cycle] - scores[cycle_heads, cycle][None, :]  # (size, |cycle|)
    enter = np.argmax(gain[outside], axis=1)
    contracted[:new, new] = gain[outside, enter]
    # Arcs out of the cycle leave from the cycle node that scores them best.
    leave = np.argmax(scores[np.ix_(cycle, outside)], axis=0)
    contracted[new, :new] = scores[cycle[leave], outside]
    contracted[new, new] = -np.inf
    sub = _chu_liu_edmonds(contracted)
    result = heads.copy()
    for position, node in enumerate(outside):
        if position == 0:
            continue
        head = sub[position]
        result[node] = cycle[leave[position]] if head == new else outside[head]
    # The cycle is broken where the arc from outside enters it.
    from_outside = sub[new]
    entered = cycle[enter[from_outside]]
    result[entered] = outside[from_outside]
    return result


def _find_cycle(heads: np.ndarray) -> np.ndarray | None:
    """Nodes of a cycle of the head graph (node 0 is the root), or None."""
    size = len(heads)
    state = np.zeros(size, dtype=np.int8)  # 0 unseen, 1 on the current path, 2 done
    for start in range(1, size):
        path = []
        node = start
        while node > 0 and state[node] == 0:
            state[node] = 1
            path.append(node)
            node = heads[node]
        if node > 0 and state[node] == 1:
            return np.array(path[path.index(node) :])
        for visited in path:
            state[visited] = 2
    return None


def _eisner(structure: DependencyTree, t: Any, k: int, *, xp: Any) -> tuple[Any, Any]:
    """The k best projective single-root trees of rows ``t`` (..., D):
    ``(scores (..., k), atoms (..., k, D))``, -inf and zeros where fewer exist.

    Spans of words are indexed by their first word s and length w (the
    last word is s + w); each span table keeps, for every s, the k best
    scores of the span.  ``right`` complete spans are headed by their first
    word, ``left`` ones by their last; incomplete spans hold the arc between
    their ends.  The root attaches one word r whose left and right complete
    spans cover the sentence.  Back-pointers are followed top down as
    0/1 marks on the (span, rank) items each output tree uses.
    """
    words = structure.n_words
    dim = structure.dim
    dtype = t.dtype
    dev = device(t)
    rows = xp.reshape(t, (-1, dim))
    count = rows.shape[0]

    def arc_scores(heads: Any, modifiers: range) -> Any:
        # scores of the arcs heads[i] -> modifiers[i] (word numbers, 0 the root): (N, len)
        index = xp.asarray([h * words + m - 1 for h, m in zip(heads, modifiers, strict=True)], device=dev)
        return take(rows, index, axis=1, xp=xp)

    first = xp.arange(k, device=dev) == 0
    minus_inf = xp.full((count, words, k), -xp.inf, dtype=dtype, device=dev)
    empty = xp.where(first, xp.zeros_like(minus_inf), minus_inf)
    complete_left: list[Any] = [empty]  # [w]: (N, words - w, k)
    complete_right: list[Any] = [empty]
    incomplete_left: list[Any] = [None]
    incomplete_right: list[Any] = [None]
    pointers: dict[tuple[str, int], Any] = {}

    def pairs(a: Any, b: Any) -> Any:  # (N, n, k) x (N, n, k) -> (N, n, k * k)
        return xp.reshape(a[..., :, None] + b[..., None, :], (*a.shape[:-1], k * k))

    for w in range(1, words):
        spans = words - w
        split = xp.concat(
            [
                pairs(complete_right[j][:, :spans, :], complete_left[w - 1 - j][:, j + 1 : j + 1 + spans, :])
                for j in range(w)
            ],
            axis=-1,
        )
        # Word numbers of the span ends: s + 1 and s + w + 1.
        to_right = arc_scores(range(1, spans + 1), range(w + 1, w + spans + 1))
        to_left = arc_scores(range(w + 1, w + spans + 1), range(1, spans + 1))
        values, pointers["incomplete_right", w] = top_k(split + to_right[..., None], k, xp=xp)
        incomplete_right.append(values)
        values, pointers["incomplete_left", w] = top_k(split + to_left[..., None], k, xp=xp)
        incomplete_left.append(values)
        left = [
            pairs(complete_left[j][:, :spans, :], incomplete_left[w - j][:, j : j + spans, :])
            for j in range(w)
        ]
        values, pointers["complete_left", w] = top_k(xp.concat(left, axis=-1), k, xp=xp)
        complete_left.append(values)
        right = [
            pairs(
                incomplete_right[j + 1][:, :spans, :], complete_right[w - j - 1][:, j + 1 : j + 1 + spans, :]
            )
            for j in range(w)
        ]
        values, pointers["complete_right", w] = top_k(xp.concat(right, axis=-1), k, xp=xp)
        complete_right.append(values)
    root_arcs = arc_scores([0] * words, range(1, words + 1))  # (N, words): root -> word r + 1
    candidates = xp.concat(
        [
            pairs(complete_left[r][:, :1, :], complete_right[words - 1 - r][:, r : r + 1, :])[:, 0, :]
            + root_arcs[:, r : r + 1]
            for r in range(words)
        ],
        axis=-1,
    )
    scores, choice = top_k(candidates, k, xp=xp)  # (N, k)
    arcs = _follow_pointers(pointers, choice, words, k, dtype, xp=xp)
    valid = xp.isfinite(scores)
    arcs = xp.where(valid[..., None], arcs, xp.zeros_like(arcs))
    batch = t.shape[:-1]
    return xp.reshape(scores, (*batch, k)), xp.reshape(arcs, (*batch, k, dim))


_CHILDREN = {
    # name: lambda (w, j): ((first child, its length, its first span), (second child, ...))
    "complete_left": lambda w, j: (("complete_left", j, 0), ("incomplete_left", w - j, j)),
    "complete_right": lambda w, j: (("incomplete_right", j + 1, 0), ("complete_right", w - j - 1, j + 1)),
    "incomplete_left": lambda w, j: (("complete_right", j, 0), ("complete_left", w - 1 - j, j + 1)),
    "incomplete_right": lambda w, j: (("complete_right", j, 0), ("complete_left", w - 1 - j, j + 1)),
}


def _follow_pointers(
    pointers: dict[tuple[str, int], Any], choice: Any, words: int, k: int, dtype: Any, *, xp: Any
) -> Any:
    """The arc indicators (N, k, D) of the trees of Eisner's root ``choice``
    (N, k), following the back-pointers top down as 0/1 marks on the items
    (span, rank) each output tree uses (longest spans first, complete spans
    before the incomplete ones of the same length, which they contain)."""
    count = choice.shape[0]
    dim = (words + 1) * words
    dev = device(choice)
    # Top down: marks[name, w] (N, k outputs, words - w spans, k ranks).
    marks: dict[tuple[str, int], Any] = {}

    root_word = choice // (k * k)
    for r in range(words):
        chosen = xp.astype(root_word == r, dtype)[..., None, None]  # (N, k, 1, 1)
        left_rank = _one_hot(((choice // k) % k)[..., None], k, dtype, xp=xp)  # (N, k, 1, k)
        right_rank = _one_hot((choice % k)[..., None], k, dtype, xp=xp)
        _mark(marks, "complete_left", r, 0, chosen * left_rank, words, xp=xp)
        _mark(marks, "complete_right", words - 1 - r, r, chosen * right_rank, words, xp=xp)

    arcs = xp.zeros((count, k, dim), dtype=dtype, device=dev)
    arcs = arcs + _one_hot(root_word, dim, dtype, xp=xp)  # [0, r]: flat index r
    for w in range(words - 1, 0, -1):
        spans = words - w
        for name in ("complete_left", "complete_right", "incomplete_left", "incomplete_right"):
            if (name, w) not in marks:
                continue
            used = marks[name, w]  # (N, k, spans, k)
            pointer = pointers[name, w]  # (N, spans, k)
            split, first_rank, second_rank = pointer // (k * k), (pointer // k) % k, pointer % k
            for j in range(w):
                weights = used * xp.astype(split == j, dtype)[:, None, :, :]  # (N, k, spans, k)
                (name_a, w_a, start_a), (name_b, w_b, start_b) = _CHILDREN[name](w, j)
                for (child, length, start), ranks in (
                    ((name_a, w_a, start_a), first_rank),
                    ((name_b, w_b, start_b), second_rank),
                ):
                    if length == 0:
                        continue
                    # sum over the parent's ranks of weights * one_hot(ranks)
                    if k == 1:  # one rank: nothing moves between ranks
                        moved = weights
                    else:
                        moved = (weights[..., None, :] @ _one_hot(ranks, k, dtype, xp=xp)[:, None, :, :, :])[
                            ..., 0, :
                        ]
                    _mark(marks, child, length, start, moved, words, xp=xp)
            if name.startswith("incomplete"):
                used_spans = xp.sum(used, axis=-1)  # (N, k, spans)
                starts = range(spans)
                if name == "incomplete_right":  # arc word s + 1 -> word s + w + 1
                    flat = [(s + 1) * words + s + w for s in starts]
                else:  # arc word s + w + 1 -> word s + 1
                    flat = [(s + w + 1) * words + s for s in starts]
                placement = _one_hot(xp.asarray(flat, device=dev), dim, dtype, xp=xp)  # (spans, D)
                arcs = arcs + used_spans @ placement
    return arcs


def _mark(
    marks: dict[tuple[str, int], Any], name: str, w: int, start: int, placed: Any, words: int, *, xp: Any
) -> None:
    """Add ``placed`` (N, k, spans, k) to the marks of items (name, w) at spans ``start..``."""
    count, k, spans, _ = placed.shape
    dev = device(placed)
    before = xp.zeros((count, k, start, k), dtype=placed.dtype, device=dev)
    after = xp.zeros((count, k, words - w - start - spans, k), dtype=placed.dtype, device=dev)
    placed = xp.concat([before, placed, after], axis=2)
    marks[name, w] = placed if (name, w) not in marks else marks[name, w] + placed
