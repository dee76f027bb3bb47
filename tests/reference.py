"""Independent references for sparsemax and top-k sparsemax, in NumPy float64.

Nothing here shares code or algorithm with ``sparsecore``: the library
solves for the threshold by Michelot/Newton steps and selects the top k by
partition; these references use bisection, a full sort, a stable argsort and
the closed-form Jacobian.  Everything works along the last axis.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

__all__ = [
    "all_dependency_trees",
    "all_sequences",
    "along_axis",
    "finite_difference_jacobian",
    "long_rows",
    "random_separated_scores",
    "sparsemap_enumerated",
    "sparsemax_bisect",
    "sparsemax_jacobian",
    "sparsemax_sort",
    "sparsemax_threshold",
    "sparsemax_vjp_reference",
    "topk_sparsemax_bruteforce",
]


def _special_rows(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks (..., 1) of the rows with NaN, with +inf, and with only -inf."""
    nan_rows = np.isnan(s).any(axis=-1, keepdims=True)
    posinf_rows = (s == np.inf).any(axis=-1, keepdims=True) & ~nan_rows
    empty_rows = (s == -np.inf).all(axis=-1, keepdims=True)
    return nan_rows, posinf_rows, empty_rows


def sparsemax_threshold(s: np.ndarray, n_iter: int = 200) -> np.ndarray:
    """The threshold tau with sum(max(s - tau, 0)) = 1, by bisection; shape (..., 1).

    For finite rows (``-inf`` entries allowed, not all of them).
    """
    s = np.asarray(s, dtype=np.float64)
    top = np.max(s, axis=-1, keepdims=True)
    # f(tau) = sum(max(s - tau, 0)) - 1 is decreasing, f(top - 1) >= 0, f(top) = -1.
    low, high = top - 1.0, top.copy()
    for _ in range(n_iter):
        middle = 0.5 * (low + high)
        mass = np.sum(np.maximum(s - middle, 0.0), axis=-1, keepdims=True)
        above = mass >= 1.0
        low = np.where(above, middle, low)
        high = np.where(above, high, middle)
    return 0.5 * (low + high)


def sparsemax_bisect(s: np.ndarray, n_iter: int = 200) -> np.ndarray:
    """Sparsemax along the last axis by bisection on the threshold.

    Follows the documented contract for special rows: a row with NaN is all
    NaN, a row with ``+inf`` entries shares the mass equally among them, a
    row of only ``-inf`` is all zeros.
    """
    s = np.array(s, dtype=np.float64)
    nan_rows, posinf_rows, empty_rows = _special_rows(s)
    special = nan_rows | posinf_rows | empty_rows
    solvable = np.where(special, 0.0, s)
    with np.errstate(invalid="ignore"):
        tau = sparsemax_threshold(solvable, n_iter)
        probs = np.maximum(solvable - tau, 0.0)
    is_posinf = (s == np.inf).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        shared = is_posinf / is_posinf.sum(axis=-1, keepdims=True)
    probs = np.where(posinf_rows, shared, probs)
    probs = np.where(empty_rows, 0.0, probs)
    return np.where(nan_rows, np.nan, probs)


def sparsemax_sort(s: np.ndarray) -> np.ndarray:
    """Sparsemax along the last axis, sort-based (Martins & Astudillo, 2016, Alg. 1).

    For rows of finite scores (``-inf`` entries allowed, not all of them).
    """
    s = np.asarray(s, dtype=np.float64)
    size = s.shape[-1]
    z = -np.sort(-s, axis=-1)  # descending
    ranks = np.arange(1, size + 1, dtype=np.float64)
    cumulative = np.cumsum(z, axis=-1)
    with np.errstate(invalid="ignore"):
        in_support = 1.0 + ranks * z > cumulative
    support_size = np.sum(in_support, axis=-1, keepdims=True)
    total = np.take_along_axis(cumulative, support_size - 1, axis=-1)
    tau = (total - 1.0) / support_size
    return np.maximum(s - tau, 0.0)


def topk_sparsemax_bruteforce(s: np.ndarray, k: int) -> np.ndarray:
    """Sparsemax restricted to the k largest scores, ties broken by lower index.

    A row holding NaN gives a row of NaN (the contract of ``sparsemax``).
    """
    s = np.array(s, dtype=np.float64)
    nan_rows = np.isnan(s).any(axis=-1, keepdims=True)
    clean = np.where(nan_rows, 0.0, s)
    order = np.argsort(-clean, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(s.shape[-1]) + np.zeros_like(order), axis=-1)
    masked = np.where(ranks < k, clean, -np.inf)
    probs = sparsemax_bisect(masked)
    return np.where(nan_rows, np.nan, probs)


def sparsemax_jacobian(p: np.ndarray) -> np.ndarray:
    """Closed-form Jacobian ``diag(1_S) - 1_S 1_S^T / |S|`` at output ``p``; shape (..., K, K)."""
    p = np.asarray(p, dtype=np.float64)
    support = (p > 0).astype(np.float64)
    count = support.sum(axis=-1)[..., None, None]
    outer = support[..., :, None] * support[..., None, :]
    diagonal = support[..., :, None] * np.eye(p.shape[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return diagonal - np.where(count > 0, outer / np.maximum(count, 1.0), 0.0)


def sparsemax_vjp_reference(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``g^T J(p)`` with the closed-form Jacobian (J is symmetric).

    Rows longer than 256 use the same closed form without materializing J,
    ``1_S * g - 1_S (1_S . g) / |S|``, to keep memory at O(K).
    """
    p = np.asarray(p, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    if p.shape[-1] <= 256:
        return np.einsum("...ij,...i->...j", sparsemax_jacobian(p), g)
    support = (p > 0).astype(np.float64)
    count = support.sum(axis=-1, keepdims=True)
    outer_part = support * (support * g).sum(axis=-1, keepdims=True) / np.maximum(count, 1.0)
    return support * g - outer_part


def finite_difference_jacobian(
    function: Callable[[np.ndarray], np.ndarray], s: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """Central-difference Jacobian of a row function at a 1-d ``s``; shape (K, K), [i, j] = d f_i / d s_j."""
    s = np.asarray(s, dtype=np.float64)
    size = s.shape[-1]
    columns = []
    for j in range(size):
        step = np.zeros(size)
        step[j] = eps
        columns.append((function(s + step) - function(s - step)) / (2 * eps))
    return np.stack(columns, axis=-1)


def finite_difference_gradient(
    objective: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """Central-difference gradient of a scalar ``objective`` at an array ``x``."""
    x = np.asarray(x, dtype=np.float64)
    gradient = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        gradient[index] = (objective(x + step) - objective(x - step)) / (2 * eps)
    return gradient


def random_separated_scores(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    scale: float = 3.0,
    margin: float = 1e-2,
    quantum: float | None = None,
) -> np.ndarray:
    """Random scores whose rows (last axis) have no entry within ``margin`` of the threshold.

    Such rows keep their support under perturbations smaller than ``margin``,
    so sparsemax is differentiable there and finite differences are valid.
    Distinct entries are also at least ``margin`` apart (no ties at the top k).
    With ``quantum`` the scores are multiples of it (``1 / 8`` makes them
    exact in float16 and bfloat16).
    """

    def draw(size: int | tuple[int, ...]) -> np.ndarray:
        values = scale * rng.standard_normal(size)
        return values if quantum is None else np.round(values / quantum) * quantum

    rows = draw(shape).reshape(-1, shape[-1])
    for index in range(rows.shape[0]):
        while True:
            row = rows[index]
            tau = sparsemax_threshold(row)
            gaps = np.abs(np.diff(np.sort(row)))
            if np.all(np.abs(row - tau) > margin) and np.all(gaps > margin):
                break
            rows[index] = draw(shape[-1])
    return rows.reshape(shape)


def along_axis(function: Callable[..., np.ndarray], s: np.ndarray, axis: int, *args: object) -> np.ndarray:
    """Apply a last-axis reference ``function(s, *args)`` along ``axis`` instead."""
    moved = np.moveaxis(np.asarray(s, dtype=np.float64), axis, -1)
    return np.moveaxis(function(moved, *args), -1, axis)


def long_rows(size: int, seed: int) -> np.ndarray:
    """Test data (not a reference): rows of length ``size`` covering every
    regime of the library's solver on long rows.

    Large and small supports (more and fewer than the 16 candidates that rows
    of 2048+ start from), supports of exactly 15, 16 and 17 tied entries, few
    finite entries, and the special rows (+inf, NaN, all -inf).
    """
    rng = np.random.default_rng(seed)
    rows = [
        0.01 * rng.standard_normal(size),  # support: most of the row
        10.0 * rng.standard_normal(size),  # support: a handful
        rng.standard_normal(size),
        np.zeros(size),  # all tied: uniform
    ]
    for top in (15, 16, 17):
        row = np.zeros(size)
        row[rng.choice(size, top, replace=False)] = 1.0
        rows.append(row)
    few_finite = np.full(size, -np.inf)
    few_finite[rng.choice(size, 5, replace=False)] = rng.standard_normal(5)
    half_masked = np.where(rng.random(size) < 0.5, -np.inf, 0.05 * rng.standard_normal(size))
    half_masked[size // 3] = 0.2  # at least one finite entry
    posinf = rng.standard_normal(size)
    posinf[[1, size - 1]] = np.inf
    nan = rng.standard_normal(size)
    nan[size // 2] = np.nan
    ramp = np.linspace(0.0, 1.0, size)  # the largest entries sit in the last group
    rows += [few_finite, half_masked, posinf, nan, np.full(size, -np.inf), ramp, ramp[::-1].copy()]
    return np.stack(rows)


def budget_projection(t: np.ndarray, budget: int) -> np.ndarray:
    """Projection onto {0 <= mu <= 1, sum(mu) <= budget}, by bisection on the multiplier."""
    out = np.empty_like(t)
    for row, values in enumerate(t.reshape(-1, t.shape[-1])):
        if np.clip(values, 0, 1).sum() <= budget:
            out.reshape(-1, t.shape[-1])[row] = np.clip(values, 0, 1)
            continue
        low, high = 0.0, float(np.max(values)) + 1.0
        for _ in range(200):
            middle = (low + high) / 2
            if np.clip(values - middle, 0, 1).sum() > budget:
                low = middle
            else:
                high = middle
        out.reshape(-1, t.shape[-1])[row] = np.clip(values - high, 0, 1)
    return out


def all_sequences(length: int, n_states: int) -> np.ndarray:
    """Indicators of every state sequence, shape (n_states ** length, D), in
    lexicographic order of the sequences (unary then transition indicators)."""
    rows = []
    for states in itertools.product(range(n_states), repeat=length):
        unary = np.zeros((length, n_states))
        transitions = np.zeros((length - 1, n_states, n_states))
        for position, state in enumerate(states):
            unary[position, state] = 1.0
            if position + 1 < length:
                transitions[position, state, states[position + 1]] = 1.0
        rows.append(np.concatenate([unary.ravel(), transitions.ravel()]))
    return np.array(rows)


def _is_single_root_tree(heads: tuple[int, ...]) -> bool:
    """``heads[m - 1]`` is the head of word m (0 the root)."""
    if sum(head == 0 for head in heads) != 1:
        return False
    for word in range(1, len(heads) + 1):
        seen = set()
        node = word
        while node != 0:
            if node in seen:
                return False
            seen.add(node)
            node = heads[node - 1]
    return True


def _is_projective(heads: tuple[int, ...]) -> bool:
    """No two arcs cross (the root at position 0)."""
    spans = [(min(head, word), max(head, word)) for word, head in enumerate(heads, start=1)]
    return not any(a < c < b < d for a, b in spans for c, d in spans)


def all_dependency_trees(n_words: int, projective: bool) -> np.ndarray:
    """Indicators ``[head, modifier - 1]`` (flattened) of every single-root
    tree over ``n_words`` words, by filtering all head assignments."""
    rows = []
    for heads in itertools.product(range(n_words + 1), repeat=n_words):
        if any(head == word for word, head in enumerate(heads, start=1)):
            continue
        if not _is_single_root_tree(heads) or (projective and not _is_projective(heads)):
            continue
        arcs = np.zeros((n_words + 1, n_words))
        arcs[list(heads), np.arange(n_words)] = 1.0
        rows.append(arcs.ravel())
    return np.array(rows)


def sparsemap_enumerated(t: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """SparseMAP marginals of rows ``t`` (..., D) over the explicit ``atoms`` (n, D).

    With ``C = atoms^T - t 1^T``, SparseMAP is the point of the convex hull
    of C's columns nearest to the origin.  SciPy's NNLS (Lawson-Hanson) on
    ``min_{q >= 0} ||C q||^2 + (1^T q - 1)^2`` finds it exactly: for
    ``q = lam p`` with p on the simplex the best ``lam`` is
    ``1 / (1 + ||C p||^2)`` and the objective ``||C p||^2 / (1 + ||C p||^2)``
    grows with ``||C p||``, so ``p = q / 1^T q``.  The result is checked to
    be optimal: no atom improves on it, ``max_z <a_z - mu, t - mu> <= 1e-9``.
    """
    from scipy.optimize import nnls

    t = np.asarray(t, dtype=np.float64)
    flat = t.reshape(-1, t.shape[-1])
    out = np.empty_like(flat)
    for row, values in enumerate(flat):
        shifted = atoms.T - values[:, None]
        system = np.vstack([shifted, np.ones((1, atoms.shape[0]))])
        target = np.zeros(system.shape[0])
        target[-1] = 1.0
        weights, _ = nnls(system, target, maxiter=50 * atoms.shape[0])
        marginals = (weights / weights.sum()) @ atoms
        residual = values - marginals
        if np.max(atoms @ residual) - marginals @ residual > 1e-9:
            raise AssertionError(f"the NNLS solution of row {row} is not optimal")
        out[row] = marginals
    return out.reshape(t.shape)
