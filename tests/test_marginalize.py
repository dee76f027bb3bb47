"""``marginalize`` (PyTorch and JAX) against enumeration, closed forms and finite differences."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from reference import finite_difference_gradient, random_separated_scores, sparsemax_sort

from sparsecore import BitVector, Budget

RNG_SEED = 7


def all_bitvectors(dim: int) -> np.ndarray:
    return np.array(list(itertools.product([0.0, 1.0], repeat=dim)))


def structured_topk_reference(t: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities over all 2^D bit-vectors: sparsemax over the k best scores, by enumeration."""
    atoms = all_bitvectors(t.shape[-1])
    scores = atoms @ t
    order = np.argsort(-scores, kind="stable")[:k]
    probs = np.zeros(len(atoms))
    probs[order] = sparsemax_sort(scores[order][None])[0]
    return probs, atoms


def nonlinear_loss_np(t_weight: np.ndarray, atoms: np.ndarray, example: int) -> float:
    """A loss that is not linear in the structure: (a . c_n)^2 + sum(a) * w."""
    c = np.linspace(-1.0, 1.0, atoms.shape[-1]) * (example + 1)
    return float((atoms @ c) ** 2 + atoms.sum() * t_weight)


# ---------------------------------------------------------------- PyTorch


def test_torch_dense_matches_full_sum_and_finite_differences(torch):
    import sparsecore_torch

    rng = np.random.default_rng(RNG_SEED)
    scores_np = random_separated_scores(rng, (5, 6), scale=1.0)
    table_np = rng.standard_normal((5, 6))
    scores = torch.tensor(scores_np, requires_grad=True)
    weight = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    table = torch.tensor(table_np)
    seen = []

    def loss_fn(example, category):
        seen.append((example.clone(), category.clone()))
        return table[example, category] * weight + weight**2

    probs = sparsecore_torch.sparsemax(scores)
    result = sparsecore_torch.marginalize(probs, loss_fn)

    reference_probs = sparsemax_sort(scores_np)
    w = 0.7
    expected = (reference_probs * (table_np * w + w**2)).sum(-1)
    np.testing.assert_allclose(result.expectation.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    # One call; exactly the nonzero pairs; counts.
    assert len(seen) == 1
    example, category = seen[0]
    assert np.all(reference_probs[example.numpy(), category.numpy()] > 0)
    assert result.calls == int((reference_probs > 0).sum()) == len(example)
    np.testing.assert_array_equal(result.support.numpy(), (reference_probs > 0).sum(-1))

    # Gradients into the scores and into the loss's own parameter.
    result.expectation.sum().backward()

    def objective(values):
        return float((sparsemax_sort(values) * (table_np * w + w**2)).sum())

    np.testing.assert_allclose(
        scores.grad.numpy(), finite_difference_gradient(objective, scores_np), atol=1e-7
    )
    expected_weight_grad = (reference_probs * (table_np + 2 * w)).sum()
    np.testing.assert_allclose(weight.grad.item(), expected_weight_grad, rtol=1e-12)


def test_torch_softmax_evaluates_every_category(torch):
    import sparsecore_torch

    probs = torch.softmax(torch.randn(3, 8, dtype=torch.float64), dim=-1)
    result = sparsecore_torch.marginalize(probs, lambda n, z: z.to(torch.float64))
    assert result.calls == 24
    np.testing.assert_allclose(
        result.expectation.numpy(),
        (probs * torch.arange(8.0, dtype=torch.float64)).sum(-1).numpy(),
        rtol=1e-12,
    )


@pytest.mark.parametrize("dim, k", [(3, 4), (4, 10), (5, 2)])
def test_torch_structured_topk_matches_enumeration(torch, dim, k):
    import sparsecore_torch

    rng = np.random.default_rng(dim * 10 + k)
    t_np = rng.standard_normal((3, dim))
    t = torch.tensor(t_np, requires_grad=True)
    w = 0.3
    weight = torch.tensor(w, dtype=torch.float64, requires_grad=True)

    def loss_fn(example, atoms):
        c = torch.linspace(-1.0, 1.0, dim, dtype=torch.float64)[None, :] * (example[:, None] + 1)
        return (atoms * c).sum(-1) ** 2 + atoms.sum(-1) * weight

    result = sparsecore_torch.marginalize(
        sparsecore_torch.topk_sparsemax_structured(t, BitVector(dim), k), loss_fn
    )

    def expectation(values: np.ndarray, weight_value: float) -> np.ndarray:
        out = []
        for n in range(values.shape[0]):
            probs, atoms = structured_topk_reference(values[n], k)
            out.append(sum(p * nonlinear_loss_np(weight_value, a, n) for p, a in zip(probs, atoms) if p > 0))
        return np.array(out)

    np.testing.assert_allclose(
        result.expectation.detach().numpy(), expectation(t_np, w), rtol=1e-10, atol=1e-12
    )
    result.expectation.sum().backward()
    fd = finite_difference_gradient(lambda values: float(expectation(values, w).sum()), t_np)
    np.testing.assert_allclose(t.grad.numpy(), fd, atol=1e-6)
    fd_weight = (expectation(t_np, w + 1e-6).sum() - expectation(t_np, w - 1e-6).sum()) / 2e-6
    np.testing.assert_allclose(weight.grad.item(), fd_weight, rtol=1e-6)


@pytest.mark.parametrize("structure_kind", ["bitvector", "budget"])
def test_torch_sparsemap_linear_loss_matches_closed_form(torch, structure_kind):
    import sparsecore_torch

    rng = np.random.default_rng(3)
    dim = 6
    t_np = rng.uniform(-0.5, 1.5, (4, dim))
    cost_np = rng.standard_normal((4, dim))
    t = torch.tensor(t_np, requires_grad=True)
    cost = torch.tensor(cost_np)
    structure = BitVector(dim) if structure_kind == "bitvector" else Budget(dim, dim)
    result = sparsecore_torch.marginalize(
        sparsecore_torch.sparsemap(t, structure), lambda n, atoms: (atoms * cost[n]).sum(-1)
    )
    # A loss linear in the structure has expectation <mu, c>, mu = clip(t, 0, 1).
    marginals = np.clip(t_np, 0, 1)
    np.testing.assert_allclose(result.expectation.detach().numpy(), (marginals * cost_np).sum(-1), atol=1e-10)
    result.expectation.sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), cost_np * ((t_np > 0) & (t_np < 1)), atol=1e-9)
    assert result.calls == int(result.support.sum())


def test_torch_gradcheck(torch):
    import sparsecore_torch

    rng = np.random.default_rng(11)
    scores = torch.tensor(random_separated_scores(rng, (3, 5), scale=1.0), requires_grad=True)
    weight = torch.tensor(rng.standard_normal(5), requires_grad=True)

    def objective(scores, weight):
        probs = sparsecore_torch.sparsemax(scores)
        return sparsecore_torch.marginalize(probs, lambda n, z: torch.sin(weight[z] * (n + 1))).expectation

    assert torch.autograd.gradcheck(objective, (scores, weight))


def test_torch_trailing_loss_dims_and_dtype_promotion(torch):
    import sparsecore_torch

    probs = torch.tensor([[0.25, 0.75, 0.0]], dtype=torch.float64)
    result = sparsecore_torch.marginalize(probs, lambda n, z: torch.stack([z.float(), 2 * z.float()], dim=-1))
    assert result.expectation.dtype == torch.float64
    np.testing.assert_allclose(result.expectation.numpy(), [[0.75, 1.5]])


def test_torch_empty_batch(torch):
    import sparsecore_torch

    result = sparsecore_torch.marginalize(torch.zeros(0, 4), lambda n, z: z.float())
    assert result.calls == 0
    assert result.expectation.shape == (0,)


def test_torch_errors(torch):
    import sparsecore_torch

    probs = torch.tensor([[0.5, 0.5, 0.0]])
    with pytest.raises(ValueError, match="loss_fn returned NaN for example 0"):
        sparsecore_torch.marginalize(probs, lambda n, z: torch.where(z == 1, torch.nan, 1.0))
    with pytest.raises(
        ValueError, match=r"loss_fn must return one loss per evaluated pair, shape \(2, ...\)"
    ):
        sparsecore_torch.marginalize(probs, lambda n, z: torch.zeros(3))
    with pytest.raises(ValueError, match="loss_fn must return one loss"):
        sparsecore_torch.marginalize(probs, lambda n, z: torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"loss_fn must return a torch\.Tensor"):
        sparsecore_torch.marginalize(probs, lambda n, z: 1.0)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        sparsecore_torch.marginalize(probs, None)
    with pytest.raises(ValueError, match=r"probs must have shape \(N, K\)"):
        sparsecore_torch.marginalize(probs[0], lambda n, z: z.float())
    with pytest.raises(ValueError, match="probs must be nonnegative and not NaN"):
        sparsecore_torch.marginalize(torch.tensor([[torch.nan, 1.0]]), lambda n, z: z.float())
    with pytest.raises(ValueError, match="atoms must have shape"):
        sparsecore_torch.marginalize((probs, torch.zeros(1, 2, 4)), lambda n, z: z.sum(-1))
    with pytest.raises(TypeError, match="distribution must be"):
        sparsecore_torch.marginalize(np.ones((1, 2)), lambda n, z: z)
    with pytest.raises(TypeError, match="probs must have a floating dtype"):
        sparsecore_torch.marginalize(torch.ones(1, 2, dtype=torch.int64), lambda n, z: z)
    # NaN checking can be turned off: the NaN then reaches the expectation.
    result = sparsecore_torch.marginalize(
        probs, lambda n, z: torch.where(z == 1, torch.nan, 1.0), check=False
    )
    assert torch.isnan(result.expectation).all()


# ---------------------------------------------------------------- JAX


def test_jax_dense_matches_reference_eager_and_jit(jax_module):
    import jax
    import jax.numpy as jnp
    import sparsecore_jax

    rng = np.random.default_rng(RNG_SEED)
    scores_np = random_separated_scores(rng, (5, 6), scale=1.0)
    table_np = rng.standard_normal((5, 6))
    table = jnp.asarray(table_np)
    reference_probs = sparsecore_jax.sparsemax(jnp.asarray(scores_np))
    support = int((np.asarray(reference_probs) > 0).sum())

    def objective(scores, weight, max_pairs):
        probs = sparsecore_jax.sparsemax(scores)
        result = sparsecore_jax.marginalize(
            probs, lambda n, z: table[n, z] * weight + weight**2, max_pairs=max_pairs
        )
        return result.expectation.sum(), result

    expected_probs = sparsemax_sort(scores_np)
    w = 0.7
    expected = (expected_probs * (table_np * w + w**2)).sum(-1)
    for max_pairs in (None, support, support + 3):
        eager = jax.value_and_grad(
            lambda s, w_, mp=max_pairs: objective(s, w_, mp), argnums=(0, 1), has_aux=True
        )
        for run in (eager, jax.jit(eager)):
            (_value, result), (grad_scores, grad_weight) = run(jnp.asarray(scores_np), jnp.asarray(w))
            np.testing.assert_allclose(np.asarray(result.expectation), expected, rtol=1e-12)
            assert int(result.calls) == support
            assert bool(result.complete)
            np.testing.assert_array_equal(np.asarray(result.support), (expected_probs > 0).sum(-1))

            def total(values):
                return float((sparsemax_sort(values) * (table_np * w + w**2)).sum())

            np.testing.assert_allclose(
                np.asarray(grad_scores), finite_difference_gradient(total, scores_np), atol=1e-7
            )
            np.testing.assert_allclose(
                float(grad_weight), (expected_probs * (table_np + 2 * w)).sum(), rtol=1e-12
            )


def test_jax_structured_and_check_grads(jax_module):
    import jax.numpy as jnp
    import sparsecore_jax
    from jax.test_util import check_grads

    rng = np.random.default_rng(5)
    dim, k = 4, 6
    t_np = rng.standard_normal((3, dim))

    def expectation(t):
        def loss_fn(example, atoms):
            c = jnp.linspace(-1.0, 1.0, dim)[None, :] * (example[:, None] + 1)
            return (atoms * c).sum(-1) ** 2 + atoms.sum(-1) * 0.3

        distribution = sparsecore_jax.topk_sparsemax_structured(t, BitVector(dim), k)
        return sparsecore_jax.marginalize(distribution, loss_fn).expectation

    expected = []
    for n in range(3):
        probs, atoms = structured_topk_reference(t_np[n], k)
        expected.append(sum(p * nonlinear_loss_np(0.3, a, n) for p, a in zip(probs, atoms) if p > 0))
    np.testing.assert_allclose(np.asarray(expectation(jnp.asarray(t_np))), expected, rtol=1e-10)
    check_grads(expectation, (jnp.asarray(t_np),), order=1, modes=("rev",), eps=1e-6)


def test_jax_vmap_matches_batch(jax_module):
    import jax
    import jax.numpy as jnp
    import sparsecore_jax

    rng = np.random.default_rng(2)
    scores = jnp.asarray(rng.standard_normal((4, 2, 5)))
    table = jnp.asarray(rng.standard_normal((2, 5)))

    def per_group(s):
        return sparsecore_jax.marginalize(sparsecore_jax.sparsemax(s), lambda n, z: table[n, z]).expectation

    batched = jax.vmap(per_group)(scores)
    for g in range(4):
        np.testing.assert_allclose(np.asarray(batched[g]), np.asarray(per_group(scores[g])), rtol=1e-12)


def test_jax_max_pairs_too_small(jax_module):
    import jax
    import jax.numpy as jnp
    import sparsecore_jax

    probs = jnp.asarray([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    with pytest.raises(ValueError, match="max_pairs=3 is too small: the distribution has 5 nonzero pairs"):
        sparsecore_jax.marginalize(probs, lambda n, z: z * 1.0, max_pairs=3)
    result = jax.jit(lambda p: sparsecore_jax.marginalize(p, lambda n, z: z * 1.0, max_pairs=3))(probs)
    assert not bool(result.complete)
    assert int(result.calls) == 5
    # The first example fit (its two pairs come first); the second did not.
    np.testing.assert_allclose(np.asarray(result.expectation[0]), 0.5)
    assert np.isnan(np.asarray(result.expectation[1]))


def test_jax_errors(jax_module):
    import jax.numpy as jnp
    import sparsecore_jax

    probs = jnp.asarray([[0.5, 0.5, 0.0]])
    with pytest.raises(ValueError, match="loss_fn returned NaN"):
        sparsecore_jax.marginalize(probs, lambda n, z: jnp.where(z == 1, jnp.nan, 1.0))
    with pytest.raises(ValueError, match="loss_fn must return one loss per packed pair"):
        sparsecore_jax.marginalize(probs, lambda n, z: jnp.zeros(2))
    with pytest.raises(ValueError, match="max_pairs must be a positive int"):
        sparsecore_jax.marginalize(probs, lambda n, z: z * 1.0, max_pairs=0)
    with pytest.raises(ValueError, match="probs must be nonnegative and not NaN"):
        sparsecore_jax.marginalize(jnp.asarray([[jnp.nan, 1.0]]), lambda n, z: z * 1.0)
    with pytest.raises(ValueError, match=r"probs must have shape \(N, K\)"):
        sparsecore_jax.marginalize(probs[0], lambda n, z: z * 1.0)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        sparsecore_jax.marginalize(probs, 3)
    with pytest.raises(TypeError, match=r"distribution must be a jax\.Array"):
        sparsecore_jax.marginalize([[0.5, 0.5]], lambda n, z: z * 1.0)
