"""Sequence and DependencyTree: oracles, SparseMAP and structured top-k against enumeration."""

from __future__ import annotations

import numpy as np
import pytest
from backends import assert_close, to_numpy
from reference import (
    all_dependency_trees,
    all_sequences,
    finite_difference_gradient,
    sparsemap_enumerated,
    sparsemax_sort,
)

from sparsecore import (
    DependencyTree,
    Sequence,
    Structure,
    sparsemap,
    sparsemap_vjp,
    topk_sparsemax_structured,
    topk_sparsemax_structured_vjp,
)

SEQUENCES = [(1, 1), (1, 3), (2, 2), (3, 1), (3, 3), (4, 2)]
TREES = [
    (1, True),
    (2, True),
    (3, True),
    (4, True),
    (5, True),
    (1, False),
    (2, False),
    (3, False),
    (4, False),
]


def enumerate_atoms(structure) -> np.ndarray:
    if isinstance(structure, Sequence):
        return all_sequences(structure.length, structure.n_states)
    return all_dependency_trees(structure.n_words, structure.projective)


def brute_force_kbest(t: np.ndarray, atoms: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of ``atoms`` (n, D) for rows ``t``, equal scores in the atoms' order."""
    scores = t @ atoms.T
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    best_scores, best_atoms = np.take_along_axis(scores, order, axis=-1), atoms[order]
    missing = k - best_scores.shape[-1]
    if missing > 0:
        best_scores = np.concatenate([best_scores, np.full((len(t), missing), -np.inf)], axis=-1)
        best_atoms = np.concatenate([best_atoms, np.zeros((len(t), missing, atoms.shape[1]))], axis=1)
    return best_scores, best_atoms


def marginals(probs, atoms) -> np.ndarray:
    return np.einsum("...m,...md->...d", to_numpy(probs), to_numpy(atoms))


def check_atoms_are_structures(probs, atoms, every: np.ndarray) -> None:
    probs, atoms = to_numpy(probs), to_numpy(atoms)
    known = {tuple(row) for row in every}
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-9)
    assert np.all(atoms[probs == 0] == 0)
    for atom in atoms[probs > 0]:
        assert tuple(atom) in known


def test_dimensions_and_protocol():
    assert Sequence(4, 3).dim == 4 * 3 + 3 * 9
    assert Sequence(1, 5).dim == 5
    assert DependencyTree(4).dim == 5 * 4
    for structure in (Sequence(2, 2), DependencyTree(3), DependencyTree(3, projective=True)):
        assert isinstance(structure, Structure)
        assert hash(structure) == hash(type(structure)(*dataclass_values(structure)))


def dataclass_values(structure) -> tuple:
    import dataclasses

    return tuple(getattr(structure, field.name) for field in dataclasses.fields(structure))


@pytest.mark.parametrize(("length", "n_states"), SEQUENCES)
@pytest.mark.parametrize("scores", ["normal", "integer ties"])
def test_sequence_argmax_and_kbest_match_enumeration(xp, make, length, n_states, scores):
    structure = Sequence(length, n_states)
    every = all_sequences(length, n_states)
    rng = np.random.default_rng(10 * length + n_states)
    if scores == "normal":
        t = rng.standard_normal((2, 3, structure.dim))
    else:  # small integers: many exactly equal sequence scores
        t = rng.integers(-1, 2, (2, 3, structure.dim)).astype(np.float64)
    rows = t.reshape(-1, structure.dim)
    best = structure.argmax(make(t))
    assert type(best) is type(make(t)) and best.shape == t.shape
    # Ties go to the lexicographically smallest sequence, the first of the
    # enumeration among equals.
    expected_scores, expected_atoms = brute_force_kbest(rows, every, len(every) + 3)
    np.testing.assert_array_equal(to_numpy(best).reshape(-1, structure.dim), expected_atoms[:, 0])
    for k in (1, 2, 5, len(every) + 3):
        expected_scores, expected_atoms = brute_force_kbest(rows, every, k)
        top_scores, top_atoms = structure.kbest(make(t), k)
        assert top_scores.shape == (2, 3, k) and top_atoms.shape == (2, 3, k, structure.dim)
        np.testing.assert_allclose(
            to_numpy(top_scores).reshape(-1, k), expected_scores[:, :k], rtol=1e-12, atol=1e-12
        )
        np.testing.assert_array_equal(
            to_numpy(top_atoms).reshape(-1, k, structure.dim), expected_atoms[:, :k]
        )


@pytest.mark.parametrize(("n_words", "projective"), TREES)
def test_tree_argmax_matches_enumeration(xp, make, n_words, projective):
    structure = DependencyTree(n_words, projective=projective)
    every = all_dependency_trees(n_words, projective)
    rng = np.random.default_rng(n_words + 10 * projective)
    t = rng.standard_normal((2, 4, structure.dim))
    rows = t.reshape(-1, structure.dim)
    best = structure.argmax(make(t))
    assert type(best) is type(make(t)) and best.shape == t.shape
    _, expected = brute_force_kbest(rows, every, 1)
    np.testing.assert_array_equal(to_numpy(best).reshape(-1, structure.dim), expected[:, 0])
    # Self-arc scores are never used: huge ones change nothing.
    words = np.arange(1, n_words + 1)
    self_arcs = np.zeros((n_words + 1, n_words))
    self_arcs[words, words - 1] = 1e6
    np.testing.assert_array_equal(to_numpy(structure.argmax(make(t + self_arcs.ravel()))), to_numpy(best))


@pytest.mark.parametrize(("n_words", "projective"), [(3, True), (4, True), (3, False), (4, False)])
def test_tree_argmax_with_ties_is_a_best_tree(xp, make, n_words, projective):
    structure = DependencyTree(n_words, projective=projective)
    every = all_dependency_trees(n_words, projective)
    t = np.random.default_rng(3).integers(-1, 2, (6, structure.dim)).astype(np.float64)
    best = to_numpy(structure.argmax(make(t)))
    known = {tuple(row) for row in every}
    for row in range(6):
        assert tuple(best[row]) in known
        assert best[row] @ t[row] == np.max(every @ t[row])
    np.testing.assert_array_equal(to_numpy(structure.argmax(make(t))), best)  # deterministic


@pytest.mark.parametrize("n_words", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("k", [1, 2, 7, 50])
def test_projective_kbest_matches_enumeration(xp, make, n_words, k):
    structure = DependencyTree(n_words, projective=True)
    every = all_dependency_trees(n_words, True)
    t = np.random.default_rng(n_words * 7 + k).standard_normal((3, structure.dim))
    scores, atoms = structure.kbest(make(t), k)
    assert scores.shape == (3, k) and atoms.shape == (3, k, structure.dim)
    expected_scores, expected_atoms = brute_force_kbest(t, every, k)
    np.testing.assert_allclose(to_numpy(scores), expected_scores, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(to_numpy(atoms), expected_atoms)


@pytest.mark.parametrize("n_words", [3, 4])
def test_projective_kbest_with_ties(xp, make, n_words):
    # Equal scores may come in any fixed order, but the k best scores are
    # unique and the trees must be distinct valid trees scoring what is claimed.
    structure = DependencyTree(n_words, projective=True)
    every = all_dependency_trees(n_words, True)
    t = np.random.default_rng(n_words).integers(-1, 2, (5, structure.dim)).astype(np.float64)
    k = 12
    scores, atoms = (to_numpy(x) for x in structure.kbest(make(t), k))
    expected_scores, _ = brute_force_kbest(t, every, k)
    np.testing.assert_array_equal(scores, expected_scores)
    known = {tuple(row) for row in every}
    for row in range(5):
        valid = np.isfinite(scores[row])
        assert all(tuple(atom) in known for atom in atoms[row][valid])
        assert len({tuple(atom) for atom in atoms[row][valid]}) == valid.sum()
        np.testing.assert_array_equal(atoms[row][valid] @ t[row], scores[row][valid])
        assert np.all(atoms[row][~valid] == 0)


def test_non_projective_kbest_is_not_implemented():
    with pytest.raises(NotImplementedError, match="projective=True"):
        DependencyTree(3).kbest(np.zeros((2, 12)), 2)
    with pytest.raises(NotImplementedError, match="kbest"):
        topk_sparsemax_structured(np.zeros(12), DependencyTree(3), 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="length"):
        Sequence(0, 2)
    with pytest.raises(ValueError, match="n_states"):
        Sequence(2, 1.5)
    with pytest.raises(ValueError, match="n_words"):
        DependencyTree(0)
    with pytest.raises(TypeError, match="projective"):
        DependencyTree(3, projective="yes")
    with pytest.raises(ValueError, match=r"v must have shape \(\.\.\., 8\)"):
        Sequence(2, 2).argmax(np.zeros(7))
    with pytest.raises(ValueError, match=r"\(\.\.\., 12\)"):
        DependencyTree(3, projective=True).kbest(np.zeros(7), 2)
    with pytest.raises(TypeError, match="floating"):
        DependencyTree(3).argmax(np.zeros(12, dtype=np.int64))
    with pytest.raises(ValueError, match="k must"):
        Sequence(2, 2).kbest(np.zeros(8), 0)


def test_helpers_read_structures_back():
    sequence = Sequence(3, 2)
    t = np.zeros(sequence.dim)
    t[[1, 2, 5]] = 1.0
    np.testing.assert_array_equal(sequence.states(sequence.argmax(t)), [1, 0, 1])
    tree = DependencyTree(3, projective=True)
    arcs = np.zeros((4, 3))
    arcs[[2, 3, 0], [0, 1, 2]] = 1.0  # heads 2, 3, 0 of words 1, 2, 3
    np.testing.assert_array_equal(tree.heads(arcs.ravel()), [2, 3, 0])
    assert any(np.array_equal(arcs.ravel(), row) for row in all_dependency_trees(3, True))


STRUCTURES = [
    Sequence(3, 2),
    Sequence(2, 3),
    DependencyTree(3, True),
    DependencyTree(4, True),
    DependencyTree(4),
]


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_sparsemap_matches_enumeration(xp, make, structure):
    every = enumerate_atoms(structure)
    t = np.random.default_rng(structure.dim).standard_normal((2, 3, structure.dim))
    probs, atoms = sparsemap(make(t), structure)
    assert type(probs) is type(make(t))
    assert probs.shape == (2, 3, structure.dim + 1) and atoms.shape == (
        2,
        3,
        structure.dim + 1,
        structure.dim,
    )
    check_atoms_are_structures(probs, atoms, every)
    assert_close(marginals(probs, atoms), sparsemap_enumerated(t, every), "float64")


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_sparsemap_vjp_matches_finite_differences(xp, make, structure):
    every = enumerate_atoms(structure)
    rng = np.random.default_rng(structure.dim + 1)
    t = rng.standard_normal((2, structure.dim))
    cotangent = rng.standard_normal((2, structure.dim))
    probs, atoms = sparsemap(make(t), structure)
    grad = sparsemap_vjp(probs, atoms, make(np.zeros(probs.shape)), make(cotangent))
    numeric = finite_difference_gradient(
        lambda v: float(np.sum(sparsemap_enumerated(v, every) * cotangent)), t
    )
    np.testing.assert_allclose(to_numpy(grad), numeric, atol=1e-6)


@pytest.mark.parametrize(
    "structure", [Sequence(3, 2), Sequence(2, 3), DependencyTree(3, True), DependencyTree(4, True)], ids=repr
)
@pytest.mark.parametrize("k", [1, 3, 10, 200])
def test_structured_topk_matches_enumeration(xp, make, structure, k):
    every = enumerate_atoms(structure)
    t = np.random.default_rng(structure.dim + k).standard_normal((4, structure.dim)) * 0.5
    probs, atoms = topk_sparsemax_structured(make(t), structure, k)
    assert type(probs) is type(make(t)) and probs.shape == (4, k) and atoms.shape == (4, k, structure.dim)
    expected_scores, expected_atoms = brute_force_kbest(t, every, k)
    assert_close(probs, sparsemax_sort(expected_scores), "float64")
    expected_probs = sparsemax_sort(expected_scores)
    used = expected_probs > 0
    np.testing.assert_array_equal(to_numpy(atoms)[used], expected_atoms[used])


@pytest.mark.parametrize("structure", [Sequence(3, 2), DependencyTree(4, True)], ids=repr)
def test_structured_topk_vjp_matches_finite_differences(xp, make, structure):
    every = enumerate_atoms(structure)
    rng = np.random.default_rng(5)
    t = rng.standard_normal((2, structure.dim)) * 0.3
    k = 6
    cotangent = rng.standard_normal((2, structure.dim))
    probs, atoms = topk_sparsemax_structured(make(t), structure, k)
    grad_probs = np.einsum("bkd,bd->bk", to_numpy(atoms), cotangent)  # the cotangent of E[a]
    grad = topk_sparsemax_structured_vjp(probs, atoms, make(grad_probs))

    def expected_marginals(values: np.ndarray) -> float:
        scores, best = brute_force_kbest(values, every, k)
        return float(np.sum(np.einsum("bk,bkd->bd", sparsemax_sort(scores), best) * cotangent))

    np.testing.assert_allclose(to_numpy(grad), finite_difference_gradient(expected_marginals, t), atol=1e-6)


def test_jax_jit_and_vmap_match_eager(jax_module):
    import jax.numpy as jnp

    rng = np.random.default_rng(11)
    for structure in (Sequence(3, 3), DependencyTree(4, True), DependencyTree(4)):
        t = rng.standard_normal((3, structure.dim))
        eager = structure.argmax(t)
        np.testing.assert_array_equal(np.asarray(jax_module.jit(structure.argmax)(jnp.asarray(t))), eager)
        np.testing.assert_array_equal(np.asarray(jax_module.vmap(structure.argmax)(jnp.asarray(t))), eager)
        probs, atoms = jax_module.jit(lambda v, s=structure: sparsemap(v, s))(jnp.asarray(t))
        np.testing.assert_allclose(
            marginals(probs, atoms), sparsemap_enumerated(t, enumerate_atoms(structure)), atol=1e-10
        )
    for structure in (Sequence(4, 3), DependencyTree(5, True)):
        t = rng.standard_normal((3, structure.dim))
        scores, atoms = structure.kbest(t, 5)
        jitted = jax_module.jit(lambda v, s=structure: s.kbest(v, 5))(jnp.asarray(t))
        np.testing.assert_array_equal(np.asarray(jitted[1]), atoms)
        np.testing.assert_allclose(np.asarray(jitted[0]), scores, atol=1e-12)


@pytest.mark.parametrize("structure", [Sequence(3, 2), DependencyTree(3, True), DependencyTree(3)], ids=repr)
def test_torch_adapter_gradcheck(torch, structure):
    import sparsecore_torch

    every = enumerate_atoms(structure)
    rng = np.random.default_rng(12)
    t = torch.tensor(rng.standard_normal((2, structure.dim)), requires_grad=True)

    def mu(values):
        probs, atoms = sparsecore_torch.sparsemap(values, structure)
        return (probs[..., None] * atoms).sum(-2)

    assert torch.autograd.gradcheck(mu, (t,))
    np.testing.assert_allclose(
        mu(t).detach().numpy(), sparsemap_enumerated(t.detach().numpy(), every), atol=1e-10
    )
    if structure.__class__ is Sequence or structure.projective:

        def topk_mu(values):
            probs, atoms = sparsecore_torch.topk_sparsemax_structured(values, structure, 4)
            return (probs[..., None] * atoms).sum(-2)

        assert torch.autograd.gradcheck(topk_mu, (t * 0.3,))


@pytest.mark.parametrize("structure", [Sequence(3, 2), DependencyTree(3, True), DependencyTree(3)], ids=repr)
def test_jax_adapter_check_grads(jax_module, structure):
    import jax.numpy as jnp
    import sparsecore_jax
    from jax.test_util import check_grads

    t = jnp.asarray(np.random.default_rng(13).standard_normal((2, structure.dim)))

    def mu(values):
        probs, atoms = sparsecore_jax.sparsemap(values, structure)
        return jnp.einsum("...m,...md->...d", probs, atoms)

    check_grads(jax_module.jit(mu), (t,), order=1, modes=["rev"])
    np.testing.assert_allclose(
        np.asarray(jax_module.jit(mu)(t)),
        sparsemap_enumerated(np.asarray(t), enumerate_atoms(structure)),
        atol=1e-10,
    )
    if isinstance(structure, Sequence) or structure.projective:

        def topk_mu(values):
            probs, atoms = sparsecore_jax.topk_sparsemax_structured(values, structure, 4)
            return jnp.einsum("...m,...md->...d", probs, atoms)

        check_grads(jax_module.jit(topk_mu), (0.3 * t,), order=1, modes=["rev"])


def test_marginalize_over_trees(torch, jax_module):
    # The expectation of a loss that is not linear in the tree, through the
    # adapters' marginalize, equals the sum over the support by hand.
    import jax.numpy as jnp
    import sparsecore_jax
    import sparsecore_torch

    structure = DependencyTree(3, projective=True)
    t = np.random.default_rng(14).standard_normal((3, structure.dim))
    weights = np.linspace(-1.0, 1.0, structure.dim)

    def by_hand(probs: np.ndarray, atoms: np.ndarray) -> np.ndarray:
        return np.einsum("bm,bm->b", probs, (atoms @ weights) ** 2)

    probs, atoms = sparsecore_torch.sparsemap(torch.asarray(t), structure)
    result = sparsecore_torch.marginalize((probs, atoms), lambda n, z: (z @ torch.asarray(weights)) ** 2)
    np.testing.assert_allclose(result.expectation.numpy(), by_hand(probs.numpy(), atoms.numpy()), atol=1e-12)
    assert result.calls == int((probs > 0).sum())
    probs, atoms = jax_module.jit(lambda v: sparsecore_jax.sparsemap(v, structure))(jnp.asarray(t))
    result = sparsecore_jax.marginalize((probs, atoms), lambda n, z: (z @ jnp.asarray(weights)) ** 2)
    np.testing.assert_allclose(
        np.asarray(result.expectation), by_hand(np.asarray(probs), np.asarray(atoms)), atol=1e-12
    )
