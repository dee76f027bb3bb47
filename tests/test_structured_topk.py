"""Structures' oracles and structured top-k sparsemax against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from backends import assert_close, to_numpy
from reference import finite_difference_gradient, sparsemax_sort

from sparsecore import (
    BitVector,
    Budget,
    Categorical,
    topk_sparsemax,
    topk_sparsemax_structured,
    topk_sparsemax_structured_is_exact,
    topk_sparsemax_structured_vjp,
)


def all_bitvectors(dim: int) -> np.ndarray:
    return np.array(list(itertools.product([0.0, 1.0], repeat=dim)))


def brute_force_kbest(t: np.ndarray, atoms: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best rows of ``atoms`` for each row of ``t`` (-inf/zero padded)."""
    scores = t @ atoms.T  # (batch, n)
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    best_scores = np.take_along_axis(scores, order, axis=-1)
    best_atoms = atoms[order]
    missing = k - best_scores.shape[-1]
    if missing > 0:
        best_scores = np.concatenate([best_scores, np.full((len(t), missing), -np.inf)], axis=-1)
        best_atoms = np.concatenate([best_atoms, np.zeros((len(t), missing, atoms.shape[1]))], axis=1)
    return best_scores, best_atoms


@pytest.mark.parametrize("dim", [1, 2, 3, 6, 10])
@pytest.mark.parametrize("k", [1, 2, 5, 10, 40])
def test_bitvector_kbest_matches_enumeration(xp, make, dim, k):
    rng = np.random.default_rng(dim * 100 + k)
    t = rng.standard_normal((5, dim))
    scores, atoms = BitVector(dim).kbest(make(t), k)
    assert scores.shape == (5, k) and atoms.shape == (5, k, dim)
    scores, atoms = to_numpy(scores), to_numpy(atoms)
    expected_scores, _ = brute_force_kbest(t, all_bitvectors(dim), k)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-12, atol=1e-12)
    valid = np.isfinite(expected_scores)
    assert set(np.unique(atoms)) <= {0.0, 1.0}
    # Each valid slot's atom scores what it claims, and the atoms are distinct.
    np.testing.assert_allclose(np.einsum("bkd,bd->bk", atoms, t)[valid], scores[valid], atol=1e-12)
    for row in range(5):
        rows = {tuple(a) for a in atoms[row][valid[row]]}
        assert len(rows) == valid[row].sum()
    assert np.all(atoms[~valid] == 0)


@pytest.mark.parametrize("dim", [1, 4, 9])
@pytest.mark.parametrize("k", [1, 3, 10, 600])
def test_structured_topk_matches_enumeration(xp, make, dim, k):
    rng = np.random.default_rng(dim + 7 * k)
    t = rng.standard_normal((4, dim)) * 0.7
    probs, atoms = topk_sparsemax_structured(make(t), BitVector(dim), k)
    assert type(probs) is type(make(t)) and probs.shape == (4, k) and atoms.shape == (4, k, dim)
    expected_scores, _ = brute_force_kbest(t, all_bitvectors(dim), k)
    expected = sparsemax_sort(expected_scores)
    assert_close(probs, expected, "float64")
    probs_np = to_numpy(probs)
    assert np.all(probs_np[~np.isfinite(expected_scores)] == 0)
    # Exactness: with fewer than k slots used, it equals sparsemax over all 2^D.
    exact = to_numpy(topk_sparsemax_structured_is_exact(probs))
    full_scores, _ = brute_force_kbest(t, all_bitvectors(dim), 2**dim)
    full = sparsemax_sort(full_scores)
    for row in np.flatnonzero(exact):
        padded = np.zeros(max(k, 2**dim))
        padded[: min(k, 2**dim)] = probs_np[row][: min(k, 2**dim)]
        np.testing.assert_allclose(padded[: 2**dim], full[row], atol=1e-12)


def test_structured_topk_vjp_matches_finite_differences(xp, make):
    rng = np.random.default_rng(3)
    dim, k = 5, 6
    t = rng.standard_normal((3, dim))
    cotangent = rng.standard_normal((3, k))
    probs, atoms = topk_sparsemax_structured(make(t), BitVector(dim), k)
    grad = to_numpy(topk_sparsemax_structured_vjp(probs, atoms, make(cotangent)))

    def objective(values: np.ndarray) -> float:
        p, _ = topk_sparsemax_structured(values, BitVector(dim), k)
        return float(np.sum(p * cotangent))

    np.testing.assert_allclose(grad, finite_difference_gradient(objective, t), atol=1e-6)


def test_categorical_kbest_and_topk_equal_dense_topk(xp, make):
    rng = np.random.default_rng(5)
    s = rng.standard_normal((6, 7))
    probs, atoms = topk_sparsemax_structured(make(s), Categorical(7), 3)
    dense = to_numpy(topk_sparsemax(make(s), 3))
    # Scatter the slot probabilities back through the one-hot atoms.
    assert_close(np.einsum("bk,bkd->bd", to_numpy(probs), to_numpy(atoms)), dense, "float64")
    scores, _ = Categorical(7).kbest(make(s), 9)
    expected = np.concatenate([-np.sort(-s, axis=-1), np.full((6, 2), -np.inf)], axis=-1)
    np.testing.assert_array_equal(to_numpy(scores), expected)


def test_argmax_oracles(xp, make):
    rng = np.random.default_rng(9)
    v = rng.standard_normal((8, 6))
    bits = to_numpy(BitVector(6).argmax(make(v)))
    expected = all_bitvectors(6)[np.argmax(v @ all_bitvectors(6).T, axis=-1)]
    np.testing.assert_array_equal(bits, expected)
    one_hot = to_numpy(Categorical(6).argmax(make(v)))
    np.testing.assert_array_equal(one_hot, np.eye(6)[np.argmax(v, axis=-1)])


def test_ties_and_zero_scores_give_valid_distinct_atoms():
    t = np.array([[0.0, 0.0, 0.0], [1e-300, -1e-300, 0.0]])
    probs, atoms = topk_sparsemax_structured(t, BitVector(3), 8)
    np.testing.assert_allclose(probs, np.full((2, 8), 1 / 8), atol=1e-12)
    for row in range(2):
        assert len({tuple(a) for a in atoms[row]}) == 8


def test_large_batch():
    rng = np.random.default_rng(0)
    t = rng.standard_normal((10_000, 128))
    probs, atoms = topk_sparsemax_structured(t, BitVector(128), 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-12)
    scores = np.einsum("bkd,bd->bk", atoms, t)
    assert np.all(np.diff(scores, axis=-1) <= 1e-12)
    np.testing.assert_allclose(scores[:, 0], np.maximum(t, 0).sum(-1), atol=1e-9)


def test_bad_arguments(make):
    t = make(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="k"):
        topk_sparsemax_structured(t, BitVector(3), 0)
    with pytest.raises(ValueError, match="k"):
        topk_sparsemax_structured(t, BitVector(3), 2.5)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        topk_sparsemax_structured(t, BitVector(4), 2)
    with pytest.raises(TypeError, match="structure"):
        topk_sparsemax_structured(t, "bits", 2)
    with pytest.raises(ValueError, match="size"):
        BitVector(0)
    with pytest.raises(TypeError, match="floating"):
        topk_sparsemax_structured(np.zeros((2, 3), dtype=np.int64), BitVector(3), 2)


def test_torch_adapter_gradcheck_and_vmap(torch):
    import sparsecore_torch

    rng = np.random.default_rng(11)
    t = torch.tensor(rng.standard_normal((3, 4)), dtype=torch.float64, requires_grad=True)
    cotangent = torch.tensor(rng.standard_normal((3, 5)), dtype=torch.float64)

    def objective(values):
        probs, _ = sparsecore_torch.topk_sparsemax_structured(values, BitVector(4), 5)
        return probs

    assert torch.autograd.gradcheck(objective, (t,))
    probs, atoms = sparsecore_torch.topk_sparsemax_structured(t, BitVector(4), 5)
    assert not atoms.requires_grad
    (probs * cotangent).sum().backward()
    expected = topk_sparsemax_structured_vjp(probs.detach().numpy(), atoms.numpy(), cotangent.numpy())
    np.testing.assert_allclose(t.grad.numpy(), expected, atol=1e-12)
    batched = torch.func.vmap(objective, in_dims=1)(t.detach().T.contiguous().T.T)
    np.testing.assert_allclose(batched.numpy(), objective(t.detach().T.T).numpy(), atol=1e-12)


def test_jax_adapter_grads_and_jit(jax_module):
    import jax.numpy as jnp
    import sparsecore_jax
    from jax.test_util import check_grads

    rng = np.random.default_rng(12)
    t = jnp.asarray(rng.standard_normal((3, 4)))
    cotangent = jnp.asarray(rng.standard_normal((3, 5)))

    def objective(values):
        probs, _ = sparsecore_jax.topk_sparsemax_structured(values, BitVector(4), 5)
        return jnp.sum(probs * cotangent)

    check_grads(objective, (t,), order=1, modes=["rev"])
    eager = sparsecore_jax.topk_sparsemax_structured(t, BitVector(4), 5)[0]
    jitted = jax_module.jit(lambda v: sparsecore_jax.topk_sparsemax_structured(v, BitVector(4), 5)[0])(t)
    vmapped = jax_module.vmap(lambda v: sparsecore_jax.topk_sparsemax_structured(v, BitVector(4), 5)[0])(t)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-12)
    np.testing.assert_allclose(np.asarray(vmapped), np.asarray(eager), atol=1e-12)


def all_budget_vectors(dim: int, budget: int) -> np.ndarray:
    return np.array([z for z in itertools.product([0.0, 1.0], repeat=dim) if sum(z) <= budget])


@pytest.mark.parametrize(("dim", "budget"), [(1, 0), (1, 1), (4, 0), (4, 2), (6, 3), (6, 6), (7, 9)])
@pytest.mark.parametrize("k", [1, 3, 10, 70])
def test_budget_kbest_matches_enumeration(xp, make, dim, budget, k):
    rng = np.random.default_rng(dim * 31 + budget * 7 + k)
    t = rng.standard_normal((4, dim))
    if dim > 2:
        t[0, :2] = 0.0  # ties and zero scores
        t[1, 1] = t[1, 0]
    scores, atoms = Budget(dim, budget).kbest(make(t), k)
    scores, atoms = to_numpy(scores), to_numpy(atoms)
    expected, _ = brute_force_kbest(t, all_budget_vectors(dim, budget), k)
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-12)
    valid = np.isfinite(expected)
    np.testing.assert_allclose(np.einsum("bkd,bd->bk", atoms, t)[valid], scores[valid], atol=1e-12)
    assert np.all(atoms[valid].sum(-1) <= budget) and np.all(atoms[~valid] == 0)
    for row in range(4):
        assert len({tuple(a) for a in atoms[row][valid[row]]}) == valid[row].sum()


def test_budget_structured_topk_matches_enumeration(xp, make):
    rng = np.random.default_rng(17)
    t = rng.standard_normal((3, 6)) * 0.5
    probs, atoms = topk_sparsemax_structured(make(t), Budget(6, 2), 5)
    expected_scores, _ = brute_force_kbest(t, all_budget_vectors(6, 2), 5)
    assert_close(probs, sparsemax_sort(expected_scores), "float64")
    assert np.all(to_numpy(atoms).sum(-1) <= 2)
