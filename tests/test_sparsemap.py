"""SparseMAP against closed forms, enumeration and finite differences."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from backends import assert_close, to_numpy
from reference import budget_projection, finite_difference_gradient, sparsemax_sort

from sparsecore import BitVector, Budget, Categorical, sparsemap, sparsemap_vjp


def marginals(probs, atoms) -> np.ndarray:
    return np.einsum("...m,...md->...d", to_numpy(probs), to_numpy(atoms))


def closed_form(t: np.ndarray, structure) -> np.ndarray:
    if isinstance(structure, BitVector):
        return np.clip(t, 0, 1)
    if isinstance(structure, Budget):
        return budget_projection(t, structure.budget)
    return sparsemax_sort(t)


def check_atoms(probs, atoms, structure) -> None:
    probs, atoms = to_numpy(probs), to_numpy(atoms)
    assert set(np.unique(atoms)) <= {0.0, 1.0}
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-9)
    assert np.all(atoms[probs == 0] == 0)
    used = atoms[probs > 0]
    if isinstance(structure, Budget):
        assert np.all(used.sum(-1) <= structure.budget)
    if isinstance(structure, Categorical):
        assert np.all(used.sum(-1) == 1)


STRUCTURES = [
    BitVector(1),
    BitVector(7),
    Budget(7, 0),
    Budget(7, 2),
    Budget(7, 7),
    Budget(7, 10),
    Categorical(1),
    Categorical(6),
]


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_marginals_match_closed_forms(xp, make, structure):
    rng = np.random.default_rng(structure.dim)
    t = rng.standard_normal((2, 3, structure.dim)) * 1.5
    probs, atoms = sparsemap(make(t), structure)
    assert type(probs) is type(make(t))
    assert probs.shape == (2, 3, structure.dim + 1) and atoms.shape == (
        2,
        3,
        structure.dim + 1,
        structure.dim,
    )
    check_atoms(probs, atoms, structure)
    assert_close(
        np.einsum("...m,...md->...d", to_numpy(probs), to_numpy(atoms)), closed_form(t, structure), "float64"
    )


@pytest.mark.parametrize("structure", [BitVector(5), Budget(5, 2), Categorical(5)], ids=repr)
def test_vjp_matches_finite_differences_of_marginals(xp, make, structure):
    rng = np.random.default_rng(4)
    t = rng.standard_normal((3, 5))
    cotangent = rng.standard_normal((3, 5))
    probs, atoms = sparsemap(make(t), structure)
    grad = to_numpy(sparsemap_vjp(probs, atoms, make(np.zeros((3, 6))), make(cotangent)))
    eps = 1e-6
    numeric = np.zeros_like(t)
    for index in np.ndindex(*t.shape):
        step = np.zeros_like(t)
        step[index] = eps
        upper = np.sum(closed_form(t + step, structure) * cotangent)
        lower = np.sum(closed_form(t - step, structure) * cotangent)
        numeric[index] = (upper - lower) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=1e-6)


def test_vjp_of_probs_matches_finite_differences():
    rng = np.random.default_rng(8)
    t = rng.standard_normal((2, 4))
    structure = Budget(4, 2)
    probs, atoms = sparsemap(t, structure)
    cotangent = rng.standard_normal(probs.shape)
    grad = sparsemap_vjp(probs, atoms, cotangent)

    def objective(values: np.ndarray) -> float:
        # Match slots by their atom: the support does not change for small steps.
        new_probs, new_atoms = sparsemap(values, structure)
        total = 0.0
        for row in range(2):
            for slot in np.flatnonzero(new_probs[row] > 0):
                same = np.flatnonzero((atoms[row] == new_atoms[row, slot]).all(-1) & (probs[row] > 0))
                assert len(same) == 1
                total += new_probs[row, slot] * cotangent[row, same[0]]
        return total

    np.testing.assert_allclose(grad, finite_difference_gradient(objective, t), atol=1e-6)


def test_bitvector_atoms_against_enumeration():
    # Every returned atom is one of the 2^D structures and mu is in their hull.
    rng = np.random.default_rng(2)
    t = rng.standard_normal((6, 4))
    probs, atoms = sparsemap(t, BitVector(4))
    structures = {tuple(z) for z in itertools.product([0.0, 1.0], repeat=4)}
    for row in range(6):
        for slot in np.flatnonzero(probs[row] > 0):
            assert tuple(atoms[row, slot]) in structures


def test_scores_near_zero_and_ties():
    t = np.array([[0.0, 0.0, 0.0], [1e-12, -1e-12, 0.5], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    for structure in (BitVector(3), Budget(3, 1), Categorical(3)):
        probs, atoms = sparsemap(t, structure)
        check_atoms(probs, atoms, structure)
        np.testing.assert_allclose(marginals(probs, atoms), closed_form(t, structure), atol=1e-9)


def test_float32(xp, make):
    # The solver works in float64 where it exists, so float32 input gets
    # marginals accurate to float32 rounding, not to float32 rank-one updates
    # (which lost about 4e-4 here).
    rng = np.random.default_rng(6)
    t = rng.standard_normal((16, 32)).astype(np.float32).astype(np.float64)
    probs, atoms = sparsemap(make(t, "float32"), Budget(32, 16))
    assert to_numpy(probs).dtype == np.float32
    assert to_numpy(atoms).dtype == np.float32
    np.testing.assert_allclose(marginals(probs, atoms), budget_projection(t, 16), atol=2e-6)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_many_nearly_dependent_atoms(backend, request):
    # Small scores at D = 128 need about 50 atoms, many nearly dependent: a
    # gap tolerance at the rounding level made rows add and drop atoms until
    # the step cap and lose accuracy (errors of 4e-9).
    rng = np.random.default_rng(7)
    t = 0.1 * rng.standard_normal((8, 128))
    if backend == "torch":
        torch = request.getfixturevalue("torch")
        scores = torch.asarray(t)
    else:
        scores = t
    probs, atoms, converged = sparsemap(scores, Budget(128, 64), return_converged=True)
    assert bool(to_numpy(converged).all())
    check_atoms(probs, atoms, Budget(128, 64))
    np.testing.assert_allclose(marginals(probs, atoms), budget_projection(t, 64), atol=1e-11)


def test_non_convergence_is_reported():
    t = np.random.default_rng(0).standard_normal((3, 8))
    with pytest.raises(RuntimeError, match="max_iter"):
        sparsemap(t, BitVector(8), max_iter=1, method="active_set")
    _, _, converged = sparsemap(t, BitVector(8), max_iter=1, method="active_set", return_converged=True)
    assert converged.shape == (3,) and not converged.any()
    _, _, converged = sparsemap(t, BitVector(8), method="active_set", return_converged=True)
    assert converged.all()
    with pytest.raises(RuntimeError, match="max_active"):
        sparsemap(np.full((1, 8), 0.5) + np.linspace(0, 0.3, 8), Budget(8, 8), max_active=2)


@pytest.mark.parametrize(("dim", "scale", "budget"), [(32, 1.0, 16), (32, 0.1, 4), (128, 0.1, 64)])
def test_jax_incremental_active_set(jax_module, dim, scale, budget):
    # Under jit the rank-one active set runs with static shapes: every row
    # keeps D + 2 columns, reuses the columns that drops free, and has its
    # inverse recomputed in place when doubtful.  Enough steps and rows for
    # many drops and reused columns.
    import jax.numpy as jnp

    rng = np.random.default_rng(dim + budget)
    t = scale * rng.standard_normal((16 if dim == 32 else 4, dim))
    solve = jax_module.jit(lambda v: sparsemap(v, Budget(dim, budget), return_converged=True))
    probs, atoms, converged = solve(jnp.asarray(t))
    assert bool(np.all(np.asarray(converged)))
    check_atoms(probs, atoms, Budget(dim, budget))
    np.testing.assert_allclose(marginals(probs, atoms), budget_projection(t, budget), atol=1e-10)
    eager_probs, eager_atoms = sparsemap(t, Budget(dim, budget))
    np.testing.assert_allclose(marginals(probs, atoms), marginals(eager_probs, eager_atoms), atol=1e-10)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_doubtful_rows_are_recomputed_and_finish(backend, request, monkeypatch):
    # Rank-one updates can drift when atoms are nearly dependent; such rows
    # are "doubtful": their inverse is recomputed from their atoms and they
    # repeat the step.  Real drift is rare, so every even row is flagged
    # doubtful, with its inverse and its solution vectors corrupted, whenever
    # it is about to take an atom with an inverse that was not just
    # recomputed: only the recomputation brings it to the projection.
    from sparsecore._sparsemap import _driver, _step

    iterate = _step._iterate

    def flagging(state, new_slot, room, structure, *, xp):
        update = iterate(state, new_slot, room, structure, xp=xp)
        rows = xp.arange(state.t.shape[0], device=_step.device(state.t))
        flag = update.grow & ~state.fresh & (rows % 2 == 0)
        keep = flag[:, None]
        garbage = xp.astype(state.active, state.t.dtype)  # inverse += 0.5 * outer(1_S, 1_S)
        return update._replace(
            left=xp.where(keep, 2.0 * state.left, update.left),
            right=xp.where(keep, 3.0 * state.right, update.right),
            weights=xp.where(keep, state.weights, update.weights),
            active=xp.where(keep, state.active, update.active),
            sizes=xp.where(keep, state.sizes, update.sizes),
            direction=xp.where(keep, garbage, update.direction),
            coef=xp.where(flag, xp.full_like(update.coef, 0.5), update.coef),
            grow=update.grow & ~flag,
            doubtful=update.doubtful | flag,
        )

    def no_fallback(t, *, structure, slots, max_iter, tol):
        # The solve-per-step retry would also fix corrupted rows: it must not run.
        xp = _driver.array_namespace(t)
        shape = (t.shape[0], slots)
        nothing = xp.zeros(shape, dtype=t.dtype, device=_step.device(t))
        atoms = xp.zeros((*shape, t.shape[1]), dtype=t.dtype, device=_step.device(t))
        return nothing, atoms, xp.zeros((t.shape[0],), dtype=xp.bool, device=_step.device(t))

    monkeypatch.setattr(_step, "_iterate", flagging)
    monkeypatch.setattr(_driver, "_iterate", flagging)
    monkeypatch.setattr(_driver, "_retry", no_fallback)
    t = np.random.default_rng(9).standard_normal((6, 10))
    if backend == "numpy":
        solve = lambda v: sparsemap(v, Budget(10, 4), return_converged=True)  # noqa: E731
        scores = t
    elif backend == "torch":
        torch = request.getfixturevalue("torch")
        solve = lambda v: sparsemap(v, Budget(10, 4), return_converged=True)  # noqa: E731
        scores = torch.asarray(t)
    else:
        jax = request.getfixturevalue("jax_module")
        solve = jax.jit(lambda v: sparsemap(v, Budget(10, 4), return_converged=True))
        scores = jax.numpy.asarray(t)
    probs, atoms, converged = solve(scores)
    assert bool(np.all(to_numpy(converged)))
    np.testing.assert_allclose(marginals(probs, atoms), budget_projection(t, 4), atol=1e-10)


def test_jax_marks_unconverged_rows_nan(jax_module):
    import jax.numpy as jnp

    t = jnp.asarray(np.random.default_rng(0).standard_normal((3, 8)))
    probs, _ = jax_module.jit(lambda v: sparsemap(v, BitVector(8), max_iter=1, method="active_set"))(t)
    assert np.isnan(np.asarray(probs)).all()


def test_large_batch():
    rng = np.random.default_rng(0)
    # Scores of scale 6 leave about 8 of 128 marginals fractional per row,
    # so 24 slots hold every row's support.
    t = 6.0 * rng.standard_normal((10_000, 128))
    probs, atoms = sparsemap(t, BitVector(128), max_active=24, method="active_set")
    np.testing.assert_allclose(np.einsum("bm,bmd->bd", probs, atoms), np.clip(t, 0, 1), atol=1e-9)


def test_bad_arguments():
    t = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        sparsemap(t, BitVector(4))
    with pytest.raises(TypeError, match="structure"):
        sparsemap(t, "bits")
    with pytest.raises(ValueError, match="max_iter"):
        sparsemap(t, BitVector(3), max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        sparsemap(t, BitVector(3), tol=-1.0)
    with pytest.raises(TypeError, match="floating"):
        sparsemap(np.zeros((2, 3), dtype=np.int32), BitVector(3))
    with pytest.raises(ValueError, match="budget"):
        Budget(3, -1)


def test_torch_adapter(torch):
    import sparsecore_torch

    rng = np.random.default_rng(1)
    t = torch.tensor(rng.standard_normal((3, 5)), requires_grad=True)

    def mu(values):
        probs, atoms = sparsecore_torch.sparsemap(values, Budget(5, 2))
        return (probs[..., None] * atoms).sum(-2)

    assert torch.autograd.gradcheck(mu, (t,))
    assert torch.autograd.gradcheck(lambda v: sparsecore_torch.sparsemap(v, BitVector(5))[0], (t,))
    np.testing.assert_allclose(mu(t).detach().numpy(), budget_projection(t.detach().numpy(), 2), atol=1e-12)
    batched = torch.func.vmap(mu)(t.detach())
    np.testing.assert_allclose(batched.numpy(), mu(t.detach()).numpy(), atol=1e-12)
    per_row = torch.func.vmap(torch.func.jacrev(mu))(t.detach())
    values = t.detach().numpy()
    eps = 1e-6
    for row in range(3):
        numeric = np.stack(
            [
                (budget_projection(values[row] + eps * e, 2) - budget_projection(values[row] - eps * e, 2))
                / (2 * eps)
                for e in np.eye(5)
            ],
            axis=-1,
        )
        np.testing.assert_allclose(per_row[row].numpy(), numeric, atol=1e-6)


def test_jax_adapter(jax_module):
    import jax.numpy as jnp
    import sparsecore_jax
    from jax.test_util import check_grads

    rng = np.random.default_rng(2)
    t = jnp.asarray(rng.standard_normal((3, 5)))

    def mu(values):
        probs, atoms = sparsecore_jax.sparsemap(values, Budget(5, 2))
        return jnp.einsum("...m,...md->...d", probs, atoms)

    check_grads(mu, (t,), order=1, modes=["rev"])
    np.testing.assert_allclose(
        np.asarray(jax_module.jit(mu)(t)), budget_projection(np.asarray(t), 2), atol=1e-12
    )
    np.testing.assert_allclose(np.asarray(jax_module.vmap(mu)(t)), np.asarray(mu(t)), atol=1e-12)


@pytest.mark.parametrize("method", ["auto", "active_set"])
def test_bitvector_methods_match_clip(xp, make, method):
    rng = np.random.default_rng(21)
    t = rng.standard_normal((5, 9)) * 1.5
    probs, atoms = sparsemap(make(t), BitVector(9), method=method)
    check_atoms(probs, atoms, BitVector(9))
    assert_close(marginals(probs, atoms), np.clip(t, 0, 1), "float64")


def test_closed_form_and_active_set_agree_on_gradients():
    rng = np.random.default_rng(22)
    t = rng.standard_normal((40, 10)) * 1.5
    closed = sparsemap(t, BitVector(10))
    iterated = sparsemap(t, BitVector(10), method="active_set")
    cotangent = rng.standard_normal((40, 10))
    grads = [sparsemap_vjp(p, a, np.zeros_like(p), cotangent) for p, a in (closed, iterated)]
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-12)
    # Both are the Jacobian of clip(t, 0, 1): the cotangent where 0 < t < 1.
    np.testing.assert_allclose(grads[0], cotangent * ((t > 0) & (t < 1)), atol=1e-12)
    np.testing.assert_array_equal((closed[0] > 0).sum(-1), (iterated[0] > 0).sum(-1))


def test_closed_form_respects_max_active():
    t = np.array([[0.1, 0.3, 0.5, 0.7, 2.0], [0.5, 0.5, 0.5, -1.0, 3.0]])
    probs, atoms, converged = sparsemap(t, BitVector(5), max_active=3, return_converged=True)
    assert probs.shape == (2, 3) and atoms.shape == (2, 3, 5)
    assert converged.tolist() == [False, True]
    np.testing.assert_allclose(marginals(probs[1:], atoms[1:]), np.clip(t[1:], 0, 1), atol=1e-12)
    with pytest.raises(RuntimeError, match="max_active"):
        sparsemap(t, BitVector(5), max_active=3)
    with pytest.raises(ValueError, match="method"):
        sparsemap(t, BitVector(5), method="frank-wolfe")
