"""One active-set step from a hand-built state, and float64 accuracy on
larger, higher-norm inputs."""

from __future__ import annotations

import numpy as np
import pytest
from reference import budget_projection

from sparsecore import BitVector, Budget, sparsemap
from sparsecore._sparsemap._kkt import _refresh
from sparsecore._sparsemap._step import _iterate, _Rows


def hand_built_state(weights: np.ndarray, solution: np.ndarray) -> _Rows:
    """One row with the atoms e_0, e_1, e_2 of BitVector(4) active (slot 3
    free), current ``weights`` on them, and scores whose equality-constrained
    minimizer on those atoms is ``solution``: t = (solution, 0.7), as the
    fourth coordinate is orthogonal to the active atoms."""
    atoms = np.zeros((1, 4, 4))
    atoms[0, [0, 1, 2], [0, 1, 2]] = 1.0
    active = np.array([[True, True, True, False]])
    t = np.concatenate([solution, [0.7]])[None, :]
    inverse, left, right = _refresh(t, atoms, active, xp=np)
    return _Rows(
        t=t,
        gap_tol=np.array([1e-12]),
        atoms=atoms,
        inverse=inverse,
        left=left,
        right=right,
        weights=np.concatenate([weights, [0.0]])[None, :],
        active=active,
        sizes=np.sum(atoms, axis=-1),
        converged=np.zeros(1, dtype=bool),
        done=np.zeros(1, dtype=bool),
        fresh=np.ones(1, dtype=bool),
    )


def test_step_drops_the_first_weight_to_reach_zero():
    # Towards the solution (-0.2, -0.3, 1.5) from (0.1, 0.5, 0.4), weight 0
    # reaches 0 after a third of the way and weight 1 (the most negative in
    # the solution) after 0.625 of it: the step stops at a third and drops
    # slot 0, not slot 1.
    weights = np.array([0.1, 0.5, 0.4])
    solution = np.array([-0.2, -0.3, 1.5])
    state = hand_built_state(weights, solution)
    new_slot = np.array([[False, False, False, True]])
    update = _iterate(state, new_slot, np.array([True]), BitVector(4), xp=np)
    np.testing.assert_array_equal(update.active, [[False, True, True, False]])
    expected = weights + (solution - weights) / 3.0
    expected[0] = 0.0
    np.testing.assert_allclose(update.weights, [[*expected, 0.0]], rtol=0, atol=1e-15)
    assert np.all(update.weights >= 0)
    np.testing.assert_allclose(update.weights.sum(-1), 1.0, rtol=0, atol=1e-15)
    assert not update.grow.any() and not update.done.any()
    # The rank-one downdate leaves the inverse of the remaining atoms e_1, e_2.
    inverse = state.inverse + update.coef[:, None, None] * (
        update.direction[:, :, None] * update.direction[:, None, :]
    )
    fresh, left, right = _refresh(state.t, state.atoms, update.active, xp=np)
    np.testing.assert_allclose(
        inverse * update.active[:, :, None] * update.active[:, None, :], fresh, atol=1e-14
    )
    np.testing.assert_allclose(update.left, left, atol=1e-14)
    np.testing.assert_allclose(update.right, right, atol=1e-14)


@pytest.mark.parametrize(("dim", "budget", "scale"), [(64, 16, 5.0), (96, 48, 3.0), (64, 64, 8.0)])
def test_float64_accuracy_on_larger_higher_norm_inputs(dim, budget, scale):
    # The gap tolerance is relative to 1 + ||t||^2, so high-norm rows are
    # where a loose one shows: eps ** 0.25 instead of eps ** 0.75 leaves
    # marginals off by far more than 1e-9 here.
    t = scale * np.random.default_rng(dim + budget).standard_normal((24, dim))
    probs, atoms = sparsemap(t, Budget(dim, budget), method="active_set")
    marginals = np.einsum("nm,nmd->nd", probs, atoms)
    np.testing.assert_allclose(marginals, budget_projection(t, budget), rtol=0, atol=1e-9)
