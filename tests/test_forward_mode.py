"""Forward mode: the core's ``*_jvp`` rules on every backend, and jvp, jacfwd,
forward_ad and hessian through both adapters.

The JVPs are checked against finite differences of independent references
(bisection sparsemax, brute-force top-k, the closed-form projections for
SparseMAP) and against the reverse mode (``jacfwd == jacrev``).
"""

from __future__ import annotations

import numpy as np
import pytest
from backends import assert_close, to_numpy
from reference import (
    all_dependency_trees,
    all_sequences,
    along_axis,
    budget_projection,
    finite_difference_jacobian,
    random_separated_scores,
    sparsemap_enumerated,
    sparsemax_bisect,
    sparsemax_jacobian,
    topk_sparsemax_bruteforce,
)

from sparsecore import (
    BitVector,
    Budget,
    Categorical,
    DependencyTree,
    Sequence,
    sparsemap,
    sparsemap_jvp,
    sparsemap_vjp,
    sparsemax,
    sparsemax_jvp,
    topk_sparsemax,
    topk_sparsemax_jvp,
    topk_sparsemax_structured,
    topk_sparsemax_structured_jvp,
    topk_sparsemax_structured_vjp,
)

EPS = 1e-6


def separated(shape: tuple[int, ...], seed: int, scale: float = 0.6) -> np.ndarray:
    return random_separated_scores(np.random.default_rng(seed), shape, scale=scale)


def directional_difference(function, x: np.ndarray, v: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Central difference of ``function`` at ``x`` in the direction ``v``."""
    return (function(x + eps * v) - function(x - eps * v)) / (2 * eps)


def bitvector_marginals(t: np.ndarray) -> np.ndarray:
    return np.clip(t, 0.0, 1.0)


# ---------------------------------------------------------------------------
# The core's rules, every backend


@pytest.mark.parametrize(("shape", "axis"), [((6,), 0), ((4, 7), 1), ((5, 3), 0), ((2, 3, 6), 1)])
def test_sparsemax_jvp_matches_closed_form_and_finite_differences(make, shape, axis):
    data = np.moveaxis(separated(np.moveaxis(np.empty(shape), axis, -1).shape, seed=sum(shape)), -1, axis)
    tangent = np.random.default_rng(1).standard_normal(shape)
    probs = sparsemax(make(data), axis=axis)
    out = sparsemax_jvp(probs, make(tangent), axis=axis)
    assert type(out) is type(probs) and out.shape == probs.shape and out.dtype == probs.dtype
    expected = directional_difference(lambda x: along_axis(sparsemax_bisect, x, axis), data, tangent)
    assert_close(out, expected, "float64")
    moved_p = np.moveaxis(to_numpy(probs), axis, -1)
    moved_v = np.moveaxis(tangent, axis, -1)
    closed = np.einsum("...ij,...j->...i", sparsemax_jacobian(moved_p), moved_v)
    assert_close(out, np.moveaxis(closed, -1, axis), "float64")


@pytest.mark.parametrize("k", [1, 2, 4])
def test_topk_sparsemax_jvp_matches_finite_differences(make, k):
    data = separated((3, 8), seed=11, scale=0.3)
    tangent = np.random.default_rng(2).standard_normal((3, 8))
    probs = topk_sparsemax(make(data), k)
    out = topk_sparsemax_jvp(probs, make(tangent))
    expected = directional_difference(lambda x: topk_sparsemax_bruteforce(x, k), data, tangent)
    assert_close(out, expected, "float64")


def test_jvp_is_the_transpose_of_the_vjp(make):
    # <jvp(v), g> == <v, vjp(g)>: one linear map, seen from both sides.
    rng = np.random.default_rng(3)
    data = separated((4, 9), seed=5)
    v, g = rng.standard_normal((2, 4, 9))
    from sparsecore import sparsemax_vjp

    probs = sparsemax(make(data))
    forward = to_numpy(sparsemax_jvp(probs, make(v)))
    backward = to_numpy(sparsemax_vjp(probs, make(g)))
    np.testing.assert_allclose(np.sum(forward * g), np.sum(v * backward), rtol=1e-12)


def test_structured_topk_jvp_matches_finite_differences(make):
    rng = np.random.default_rng(4)
    t = rng.standard_normal((3, 5)) * 0.7
    tangent = rng.standard_normal((3, 5))
    structure = BitVector(5)
    probs, atoms = topk_sparsemax_structured(make(t), structure, 4)
    out = topk_sparsemax_structured_jvp(probs, atoms, make(tangent))
    assert out.shape == probs.shape

    def forward(x: np.ndarray) -> np.ndarray:
        # Enumerate all 32 structures: the scores of the returned atoms, then sparsemax.
        new_probs, _ = topk_sparsemax_structured(x, structure, 4)
        return new_probs

    # The slots keep their atoms under a small step (no ties among the 4 best).
    assert_close(out, directional_difference(forward, t, tangent), "float64")
    # And the adjoint identity with the VJP.
    g = rng.standard_normal(probs.shape)
    back = to_numpy(topk_sparsemax_structured_vjp(probs, atoms, make(g)))
    np.testing.assert_allclose(np.sum(to_numpy(out) * g), np.sum(tangent * back), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("structure", "marginals"),
    [
        (BitVector(5), bitvector_marginals),
        (Budget(5, 2), lambda t: budget_projection(t, 2)),
        (Categorical(5), sparsemax_bisect),
    ],
    ids=repr,
)
def test_sparsemap_jvp_moves_the_marginals_like_finite_differences(make, structure, marginals):
    rng = np.random.default_rng(6)
    t = rng.standard_normal((3, 5))
    tangent = rng.standard_normal((3, 5))
    probs, atoms = sparsemap(make(t), structure, method="active_set")
    tangent_probs = sparsemap_jvp(probs, atoms, make(tangent))
    assert tangent_probs.shape == probs.shape
    tangent_marginals = np.einsum("...m,...md->...d", to_numpy(tangent_probs), to_numpy(atoms))
    np.testing.assert_allclose(tangent_marginals, directional_difference(marginals, t, tangent), atol=1e-6)
    # Off the support nothing moves, and the weights keep summing to 1.
    off = to_numpy(probs) == 0
    assert np.all(to_numpy(tangent_probs)[off] == 0)
    np.testing.assert_allclose(to_numpy(tangent_probs).sum(-1), 0.0, atol=1e-12)
    g = rng.standard_normal(probs.shape)
    back = to_numpy(sparsemap_vjp(probs, atoms, make(g)))
    np.testing.assert_allclose(np.sum(to_numpy(tangent_probs) * g), np.sum(tangent * back), atol=1e-10)


@pytest.mark.parametrize(
    ("structure", "atoms"),
    [
        (Sequence(3, 2), all_sequences(3, 2)),
        (DependencyTree(3, projective=True), all_dependency_trees(3, projective=True)),
        (DependencyTree(3), all_dependency_trees(3, projective=False)),
    ],
    ids=["sequence", "projective-tree", "tree"],
)
def test_sparsemap_jvp_on_sequences_and_trees(structure, atoms):
    # Against finite differences of SparseMAP over the enumerated atoms (NNLS).
    rng = np.random.default_rng(12)
    t = rng.standard_normal((2, structure.dim))
    tangent = rng.standard_normal((2, structure.dim))
    probs, found = sparsemap(t, structure)
    tangent_probs = sparsemap_jvp(probs, found, tangent)
    expected = directional_difference(lambda x: sparsemap_enumerated(x, atoms), t, tangent)
    np.testing.assert_allclose(np.einsum("...m,...md->...d", tangent_probs, found), expected, atol=1e-5)


def test_jvp_special_rows(make):
    # Masked entries and all -inf rows get zero tangent; NaN rows stay NaN.
    inf = float("inf")
    scores = make([[0.0, -inf, 1.0, 0.5], [-inf, -inf, -inf, -inf], [0.0, float("nan"), 1.0, 2.0]])
    probs = sparsemax(scores)
    out = to_numpy(sparsemax_jvp(probs, make(np.ones((3, 4)) * [1.0, 2.0, 3.0, 4.0])))
    assert out[0, 1] == 0 and np.all(out[1] == 0)
    assert np.all(np.isnan(out[2]))
    np.testing.assert_allclose(out[0], [0.0, 0.0, -0.5, 0.5])


def test_jvp_bad_arguments():
    probs = sparsemax(np.array([[0.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="v must have the shape of p"):
        sparsemax_jvp(probs, np.ones((1, 2)))
    with pytest.raises(TypeError, match="v must have a real floating dtype"):
        sparsemax_jvp(probs, np.ones((1, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="axis=2"):
        sparsemax_jvp(probs, np.ones((1, 3)), axis=2)
    probs, atoms = sparsemap(np.array([[0.3, -0.2]]), BitVector(2))
    with pytest.raises(ValueError, match="tangent_t must have shape"):
        sparsemap_jvp(probs, atoms, np.ones((1, 3)))
    probs, atoms = topk_sparsemax_structured(np.array([[0.3, -0.2]]), BitVector(2), 3)
    with pytest.raises(ValueError, match="tangent_t must have shape"):
        topk_sparsemax_structured_jvp(probs, atoms, np.ones((2, 2)))
    with pytest.raises(TypeError, match="tangent_t must have a real floating dtype"):
        topk_sparsemax_structured_jvp(probs, atoms, np.ones((1, 2), dtype=np.int32))


# ---------------------------------------------------------------------------
# PyTorch


def _torch_cases():
    import sparsecore_torch

    def sparsemap_marginals(t):
        probs, atoms = sparsecore_torch.sparsemap(t, Budget(5, 2))
        return (probs[..., None] * atoms).sum(-2)

    return {
        "sparsemax": lambda s: sparsecore_torch.sparsemax(s, dim=-1),
        "sparsemax-dim0": lambda s: sparsecore_torch.sparsemax(s, dim=0),
        "topk": lambda s: sparsecore_torch.topk_sparsemax(s, 2, dim=-1),
        "structured": lambda t: sparsecore_torch.topk_sparsemax_structured(t, BitVector(5), 4)[0],
        "sparsemap": sparsemap_marginals,
        "sparsemap-probs": lambda t: sparsecore_torch.sparsemap(t, BitVector(5))[0],
    }


TORCH_CASES = ["sparsemax", "sparsemax-dim0", "topk", "structured", "sparsemap", "sparsemap-probs"]


@pytest.mark.parametrize("case", TORCH_CASES)
def test_torch_gradcheck_forward_mode(torch, case):
    function = _torch_cases()[case]
    data = separated((3, 5), seed=21) if case.startswith(("sparsemax", "topk")) else None
    if data is None:
        data = np.random.default_rng(1).standard_normal((3, 5))
    scores = torch.tensor(data, requires_grad=True)
    assert torch.autograd.gradcheck(
        function, (scores,), eps=1e-6, atol=1e-7, check_forward_ad=True, check_batched_forward_grad=True
    )


@pytest.mark.parametrize("case", TORCH_CASES)
def test_torch_jacfwd_equals_jacrev_and_forward_ad(torch, case):
    from torch.func import jacfwd, jacrev, jvp, vmap

    function = _torch_cases()[case]
    data = torch.tensor(np.random.default_rng(7).standard_normal((3, 5)))
    tangent = torch.tensor(np.random.default_rng(8).standard_normal((3, 5)))
    forward, reverse = jacfwd(function)(data), jacrev(function)(data)
    torch.testing.assert_close(forward, reverse, rtol=0, atol=1e-12)
    # jvp, forward_ad and the Jacobian agree on one direction.
    _, by_jvp = jvp(function, (data,), (tangent,))
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        by_dual = fwad.unpack_dual(function(fwad.make_dual(data, tangent))).tangent
    expected = (forward.reshape(by_jvp.numel(), -1) @ tangent.reshape(-1)).reshape(by_jvp.shape)
    torch.testing.assert_close(by_jvp, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(by_dual, expected, rtol=0, atol=1e-12)
    # vmap over jvp equals the batched jvp, one row at a time.
    if case != "sparsemax-dim0":
        per_row = vmap(lambda x, v: jvp(function, (x,), (v,))[1])(data, tangent)
        torch.testing.assert_close(per_row, by_jvp, rtol=0, atol=1e-12)


def test_torch_forward_mode_against_finite_differences(torch):
    import sparsecore_torch
    from torch.func import jacfwd

    data = separated((6,), seed=31)
    jacobian = jacfwd(sparsecore_torch.sparsemax)(torch.tensor(data))
    np.testing.assert_allclose(
        jacobian.numpy(), finite_difference_jacobian(sparsemax_bisect, data), atol=1e-8
    )


def test_torch_hessian(torch):
    import sparsecore_torch
    from torch.func import hessian

    data = torch.tensor(separated((6,), seed=32))
    weights = torch.arange(6.0, dtype=torch.float64)

    def objective(s):
        probs = sparsecore_torch.sparsemax(s)
        return (probs * probs * weights).sum()

    # d/ds sum(w p^2) = 2 J^T (w p); J is constant near s, so the Hessian is 2 J^T diag(w) J.
    jacobian = torch.tensor(sparsemax_jacobian(sparsecore_torch.sparsemax(data).numpy()))
    expected = 2 * jacobian.T @ torch.diag(weights) @ jacobian
    torch.testing.assert_close(hessian(objective)(data), expected, rtol=0, atol=1e-12)


def test_torch_marginalize_forward_mode(torch):
    import sparsecore_torch
    from torch.func import jacfwd, jacrev

    table = torch.tensor(np.random.default_rng(3).standard_normal((2, 6)))

    def expectation(scores):
        probs = sparsecore_torch.sparsemax(scores)
        return sparsecore_torch.marginalize(probs, lambda n, z: table[n, z]).expectation

    scores = torch.tensor(separated((2, 6), seed=33))
    torch.testing.assert_close(jacfwd(expectation)(scores), jacrev(expectation)(scores), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# JAX


def _jax_cases():
    import jax.numpy as jnp
    import sparsecore_jax

    def sparsemap_marginals(t):
        probs, atoms = sparsecore_jax.sparsemap(t, Budget(5, 2))
        return jnp.einsum("...m,...md->...d", probs, atoms)

    return {
        "sparsemax": lambda s: sparsecore_jax.sparsemax(s, axis=-1),
        "sparsemax-axis0": lambda s: sparsecore_jax.sparsemax(s, axis=0),
        "topk": lambda s: sparsecore_jax.topk_sparsemax(s, 2, axis=-1),
        "structured": lambda t: sparsecore_jax.topk_sparsemax_structured(t, BitVector(5), 4)[0],
        "sparsemap": sparsemap_marginals,
    }


JAX_CASES = ["sparsemax", "sparsemax-axis0", "topk", "structured", "sparsemap"]


@pytest.mark.parametrize("case", JAX_CASES)
def test_jax_check_grads_both_modes_second_order(jax_module, case):
    import jax.numpy as jnp
    from jax.test_util import check_grads

    data = separated((3, 5), seed=41) if case.startswith(("sparsemax", "topk")) else None
    if data is None:
        data = np.random.default_rng(2).standard_normal((3, 5))
    check_grads(_jax_cases()[case], (jnp.asarray(data),), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("case", JAX_CASES)
def test_jax_jacfwd_equals_jacrev_under_jit_and_vmap(jax_module, case):
    import jax
    import jax.numpy as jnp

    function = _jax_cases()[case]
    data = jnp.asarray(np.random.default_rng(9).standard_normal((3, 5)))
    forward = jax.jit(jax.jacfwd(function))(data)
    np.testing.assert_allclose(np.asarray(forward), np.asarray(jax.jacrev(function)(data)), atol=1e-12)
    tangent = jnp.asarray(np.random.default_rng(10).standard_normal((3, 5)))
    _, by_jvp = jax.jit(lambda x, v: jax.jvp(function, (x,), (v,)))(data, tangent)
    expected = np.asarray(forward).reshape(by_jvp.size, -1) @ np.asarray(tangent).reshape(-1)
    np.testing.assert_allclose(np.asarray(by_jvp).reshape(-1), expected, atol=1e-12)
    if case != "sparsemax-axis0":
        per_row = jax.vmap(jax.jacfwd(function))(data)
        np.testing.assert_allclose(
            np.asarray(per_row), np.asarray(jax.vmap(jax.jacrev(function))(data)), atol=1e-12
        )


def test_jax_hessian_under_jit(jax_module):
    import jax
    import jax.numpy as jnp
    import sparsecore_jax

    data = separated((6,), seed=42)
    weights = jnp.arange(6.0)

    def objective(s):
        probs = sparsecore_jax.sparsemax(s)
        return jnp.sum(probs * probs * weights)

    jacobian = sparsemax_jacobian(np.asarray(sparsecore_jax.sparsemax(jnp.asarray(data))))
    expected = 2 * jacobian.T @ np.diag(np.arange(6.0)) @ jacobian
    np.testing.assert_allclose(
        np.asarray(jax.jit(jax.hessian(objective))(jnp.asarray(data))), expected, atol=1e-12
    )


# The cases of optax's and jaxopt's published tests of ``projection_simplex``
# (the same map as sparsemax), pointed at sparsecore_jax.


def test_optax_projection_simplex_values(jax_module):
    import jax.numpy as jnp
    import sparsecore_jax

    rng = np.random.RandomState(0)
    for _ in range(10):
        x = jnp.asarray(rng.randn(50).astype(np.float32))
        p = sparsecore_jax.sparsemax(x)
        assert p.dtype == jnp.float32
        np.testing.assert_allclose(float(jnp.sum(p)), 1.0, rtol=1e-6)
        assert bool(jnp.all(p >= 0)) and bool(jnp.all(p <= 1))
        np.testing.assert_allclose(np.asarray(p), sparsemax_bisect(np.asarray(x, np.float64)), atol=1e-6)


def test_optax_projection_simplex_jacobian(jax_module):
    import jax
    import jax.numpy as jnp
    import sparsecore_jax

    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.rand(5).astype(np.float32))
    v = jnp.asarray(rng.randn(5).astype(np.float32))
    p = sparsecore_jax.sparsemax(x)
    support = np.asarray(p > 0, dtype=np.float32)
    expected = np.diag(support) - np.outer(support, support) / support.sum()
    for jacobian in (jax.jacrev(sparsecore_jax.sparsemax)(x), jax.jacfwd(sparsecore_jax.sparsemax)(x)):
        np.testing.assert_allclose(np.asarray(jacobian), expected, atol=1e-6)
        np.testing.assert_allclose(np.asarray(jacobian), np.asarray(jacobian).T, atol=1e-6)
    (vjp,) = jax.vjp(sparsecore_jax.sparsemax, x)[1](v)
    np.testing.assert_allclose(np.asarray(vjp), np.asarray(v) @ expected, atol=1e-6)
    _, jvp = jax.jvp(sparsecore_jax.sparsemax, (x,), (v,))
    np.testing.assert_allclose(np.asarray(jvp), expected @ np.asarray(v), atol=1e-6)


def test_optax_projection_simplex_vmap(jax_module):
    import jax
    import jax.numpy as jnp
    import sparsecore_jax

    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(3, 50).astype(np.float32))
    batched = jax.vmap(sparsecore_jax.sparsemax)(x)
    for row in range(3):
        np.testing.assert_allclose(
            np.asarray(batched[row]), np.asarray(sparsecore_jax.sparsemax(x[row])), atol=1e-7
        )
    jacobians = jax.vmap(jax.jacfwd(sparsecore_jax.sparsemax))(x)
    assert jacobians.shape == (3, 50, 50)


def test_jax_marginalize_forward_mode(jax_module):
    import jax
    import jax.numpy as jnp
    import sparsecore_jax

    table = jnp.asarray(np.random.default_rng(3).standard_normal((2, 6)))

    def expectation(scores):
        probs = sparsecore_jax.sparsemax(scores)
        return sparsecore_jax.marginalize(probs, lambda n, z: table[n, z]).expectation

    scores = jnp.asarray(separated((2, 6), seed=34))
    forward = jax.jit(jax.jacfwd(expectation))(scores)
    np.testing.assert_allclose(np.asarray(forward), np.asarray(jax.jacrev(expectation)(scores)), atol=1e-12)
    # d E_n / d s_n = J(p_n) table_n, the closed form.
    probs = np.asarray(sparsecore_jax.sparsemax(scores))
    for row in range(2):
        expected = sparsemax_jacobian(probs[row]) @ np.asarray(table[row])
        np.testing.assert_allclose(np.asarray(forward[row, row]), expected, atol=1e-12)
