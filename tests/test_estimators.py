"""The estimators of ``experiments.estimators`` against brute-force enumeration.

Small problems (K = 4 categories, D = 3 bits, so 8 structures) where every
expectation can be enumerated: marginalization must equal the enumerated
expectation and its gradient to float64 precision; the unbiased sampling
estimators must average to the enumerated gradient within a Monte Carlo
bound; the Gumbel relaxations must approach the exact expectation as the
temperature goes to 0.  The loss is a fixed table of losses per (example,
structure) times ``exp(theta * <weights, z>)``, with ``theta`` a learnable
parameter, so gradients into the loss's own parameters are checked too.
"""

from __future__ import annotations

import doctest
import itertools
import math

import pytest
import sparsecore_torch
import torch

from experiments import estimators
from experiments.estimators import ESTIMATORS, make_estimator
from sparsecore import BitVector, Budget

DTYPE = torch.float64
K = 4
D = 3
# The 8 bit-vectors of length 3; row j is the binary expansion of j (MSB first).
STRUCTURES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)), dtype=DTYPE)
PLACE_VALUES = torch.tensor([4.0, 2.0, 1.0], dtype=DTYPE)
SIZES = {"categorical": K, "bitvector": D}
ALL = [(latent, name) for latent, names in ESTIMATORS.items() for name in names]
FEATURES = 3  # width of NVIL's baseline input


def options_for(name: str) -> dict:
    return {"baseline_features": FEATURES} if name == "nvil" else {}


def build(name: str, latent: str, **options) -> estimators.Estimator:
    return make_estimator(name, latent=latent, size=SIZES[latent], **options_for(name), **options).to(DTYPE)


def all_structures(latent: str) -> torch.Tensor:
    return torch.eye(K, dtype=DTYPE) if latent == "categorical" else STRUCTURES


def make_loss(latent: str, table: torch.Tensor, weights: torch.Tensor, theta: torch.Tensor):
    """``l(n, z) = f_n(z) * exp(theta * <weights, z>)``.

    ``f_n`` is ``<table[n], z>`` for a categorical latent and the multilinear
    extension of ``table[n]`` (8 values) for a bit-vector one: both equal
    ``table[n, structure]`` at a one-hot / 0-1 ``z`` and are smooth in a
    relaxed ``z``.  ``theta`` is a scalar or one value per example.
    """

    def loss_fn(example: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if latent == "categorical":
            value = (table[example] * z).sum(-1)
        else:
            corners = torch.where(STRUCTURES.bool(), z[:, None, :], 1 - z[:, None, :]).prod(-1)
            value = (table[example] * corners).sum(-1)
        scale = theta[example] if theta.ndim else theta
        return value * torch.exp(scale * (z @ weights))

    return loss_fn


def enumerate_losses(loss_fn, rows: int, latent: str) -> torch.Tensor:
    """(rows, S): the loss of every example at every structure, by enumeration."""
    structures = all_structures(latent)
    count = structures.shape[0]
    example = torch.arange(rows).repeat_interleave(count)
    return loss_fn(example, structures.repeat(rows, 1)).reshape(rows, count)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy with 0 log 0 = 0 (and zero gradient there)."""
    positive = probs > 0
    logs = torch.log(torch.where(positive, probs, torch.ones_like(probs)))
    return -torch.where(positive, probs * logs, torch.zeros_like(probs)).sum(-1)


def reference_sparsemax(scores: torch.Tensor) -> torch.Tensor:
    """Sort-based sparsemax written out with torch ops (autograd gives its Jacobian)."""
    ordered, _ = torch.sort(scores, dim=-1, descending=True)
    cumulative = ordered.cumsum(-1)
    ranks = torch.arange(1, scores.shape[-1] + 1, dtype=scores.dtype)
    size = (1 + ranks * ordered > cumulative).sum(-1, keepdim=True)
    threshold = (cumulative.gather(-1, size - 1) - 1) / size
    return torch.clamp(scores - threshold, min=0)


def bernoulli_probs(logits: torch.Tensor) -> torch.Tensor:
    """(N, 8): the probability of each structure under independent Bernoullis."""
    on = torch.sigmoid(logits)[:, None, :]
    return torch.where(STRUCTURES.bool(), on, 1 - on).prod(-1)


def dense_structure_probs(probs: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """(N, 8) from a sparse ``(probs, atoms)`` pair; padding slots add 0."""
    index = (atoms @ PLACE_VALUES).round().long()
    return torch.zeros(probs.shape[0], 8, dtype=probs.dtype).scatter_add(1, index, probs)


def exact_distribution(name: str, latent: str, scores: torch.Tensor, **options) -> torch.Tensor:
    """(N, S) probabilities of every structure under the estimator's distribution."""
    if name in ("dense", "sfe", "sfe_plus", "nvil", "sum_and_sample", "gumbel", "st_gumbel"):
        return torch.softmax(scores, -1) if latent == "categorical" else bernoulli_probs(scores)
    if name == "sparsemax":
        return reference_sparsemax(scores)
    if name == "topk_sparsemax":
        k = options.get("k", 10)
        structure_scores = scores @ STRUCTURES.T  # (N, 8)
        kept = min(k, 8)
        best, index = torch.topk(structure_scores, kept, dim=-1)
        return torch.zeros_like(structure_scores).scatter(1, index, reference_sparsemax(best))
    # SparseMAP: its decomposition into atoms is not unique, so the
    # distribution is the library's own (the expectation is still enumerated).
    scoring = options.get("scoring", "paper")
    shifted = (scores + 1) / 2 if scoring == "paper" else scores
    structure = Budget(D, options.get("budget", D // 2)) if name == "sparsemap_budget" else BitVector(D)
    return dense_structure_probs(*sparsecore_torch.sparsemap(shifted, structure))


def exact_objective(name, latent, scores, loss_fn, entropy_weight, **options):
    """``(mean objective, per-example E[l], per-example H)`` by enumeration."""
    probs = exact_distribution(name, latent, scores, **options)
    losses = enumerate_losses(loss_fn, scores.shape[0], latent)
    expectation = (probs * losses).sum(-1)
    entropies = entropy(probs)
    return (expectation - entropy_weight * entropies).mean(), expectation, entropies


# --------------------------------------------------------------------------
# Exact marginalization equals enumeration, with gradients.

MARGINALIZING = [
    ("categorical", "dense", {}),
    ("categorical", "sparsemax", {}),
    ("bitvector", "topk_sparsemax", {}),
    ("bitvector", "topk_sparsemax", {"k": 3}),
    ("bitvector", "sparsemap", {}),
    ("bitvector", "sparsemap", {"scoring": "standard"}),
    ("bitvector", "sparsemap_budget", {}),
    ("bitvector", "sparsemap_budget", {"budget": 2, "scoring": "standard"}),
]


@pytest.mark.parametrize(("latent", "name", "options"), MARGINALIZING)
@pytest.mark.parametrize("entropy_weight", [0.0, 0.3])
def test_marginalization_equals_enumeration(latent, name, options, entropy_weight):
    generator = torch.Generator().manual_seed(0)
    rows, size = 6, SIZES[latent]
    structures = all_structures(latent).shape[0]
    scores0 = 0.8 * torch.randn(rows, size, generator=generator, dtype=DTYPE)
    table = torch.rand(rows, structures, generator=generator, dtype=DTYPE) * 3
    weights = torch.randn(size, generator=generator, dtype=DTYPE)
    theta0 = torch.tensor(0.4, dtype=DTYPE)

    scores = scores0.clone().requires_grad_()
    theta = theta0.clone().requires_grad_()
    estimator = build(name, latent, entropy_weight=entropy_weight, **options)
    out = estimator(scores, make_loss(latent, table, weights, theta))
    grads = torch.autograd.grad(out.surrogate, [scores, theta])

    ref_scores = scores0.clone().requires_grad_()
    ref_theta = theta0.clone().requires_grad_()
    objective, expectation, entropies = exact_objective(
        name, latent, ref_scores, make_loss(latent, table, weights, ref_theta), entropy_weight, **options
    )
    ref_grads = torch.autograd.grad(objective, [ref_scores, ref_theta])

    assert out.surrogate.shape == ()
    assert out.loss.shape == (rows,) and not out.loss.requires_grad
    torch.testing.assert_close(out.surrogate, objective, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.loss, expectation.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.entropy, entropies.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], ref_grads[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], ref_grads[1], rtol=1e-10, atol=1e-12)
    assert grads[1].abs() > 0  # the loss's own parameter gets a gradient
    # Nontrivial problems: some example has more than one structure.
    assert out.support.max() > 1


@pytest.mark.parametrize(("scoring", "shift"), [("paper", True), ("standard", False)])
def test_sparsemap_scoring_marginals(scoring, shift):
    # A linear loss <c_n, z> has expectation <mu_n, c_n> with mu the SparseMAP
    # marginals, in closed form clip(t', 0, 1) over all bit-vectors.
    generator = torch.Generator().manual_seed(1)
    scores = 1.5 * torch.randn(5, D, generator=generator, dtype=DTYPE)
    costs = torch.randn(5, D, generator=generator, dtype=DTYPE)
    out = build("sparsemap", "bitvector", scoring=scoring)(scores, lambda n, z: (z * costs[n]).sum(-1))
    marginals = torch.clamp((scores + 1) / 2 if shift else scores, 0, 1)
    torch.testing.assert_close(out.loss, (marginals * costs).sum(-1), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# Unbiased estimators average to the exact gradient.

COPIES = 20_000


def monte_carlo(estimator, latent, scores0, table_row, weights, theta0, baseline_input=None):
    """Per-sample gradient estimates (COPIES, size + 1) w.r.t. (scores, theta), and the output.

    The batch is COPIES copies of one example, each with its own copy of
    ``theta``, so the gradient of the batch-mean surrogate w.r.t. row n
    (times COPIES) is the n-th independent single-sample estimate.
    """
    scores = scores0.expand(COPIES, -1).clone().requires_grad_()
    theta = torch.full((COPIES,), float(theta0), dtype=DTYPE, requires_grad=True)
    loss_fn = make_loss(latent, table_row.expand(COPIES, -1), weights, theta)
    inputs = None if baseline_input is None else baseline_input.expand(COPIES, -1)
    out = estimator(scores, loss_fn, baseline_input=inputs)
    grad_scores, grad_theta = torch.autograd.grad(out.surrogate, [scores, theta])
    return torch.cat([grad_scores, grad_theta[:, None]], dim=1) * COPIES, out


def within_bound(samples: torch.Tensor, exact: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
    """Whether each column's mean is within 4 standard errors (+ atol) of ``exact``."""
    mean = samples.mean(0)
    error = samples.std(0) / math.sqrt(samples.shape[0])
    return (mean - exact).abs() <= 4 * error + atol


def problem(latent: str, seed: int = 3):
    generator = torch.Generator().manual_seed(seed)
    size = SIZES[latent]
    scores0 = torch.tensor(
        [0.5, -0.3, 1.1, 0.1] if latent == "categorical" else [0.7, -0.4, 0.2], dtype=DTYPE
    )
    table_row = 1 + 2 * torch.rand(1, all_structures(latent).shape[0], generator=generator, dtype=DTYPE)
    weights = torch.randn(size, generator=generator, dtype=DTYPE)
    return scores0[None], table_row, weights, torch.tensor(0.3, dtype=DTYPE)


def exact_single(name, latent, scores0, table_row, weights, theta0, entropy_weight):
    """The enumerated gradient (size + 1,) and expectation for one example."""
    scores = scores0.clone().requires_grad_()
    theta = theta0.clone().requires_grad_()
    objective, expectation, _ = exact_objective(
        name, latent, scores, make_loss(latent, table_row, weights, theta), entropy_weight
    )
    grad_scores, grad_theta = torch.autograd.grad(objective, [scores, theta])
    return torch.cat([grad_scores[0], grad_theta[None]]), expectation.detach()[0]


UNBIASED = [
    ("categorical", "sfe", {}),
    ("categorical", "sfe", {"baseline": "cumulative"}),
    ("categorical", "sfe_plus", {}),
    ("categorical", "nvil", {}),
    ("categorical", "nvil", {"centering": False}),
    ("categorical", "sum_and_sample", {}),
    ("bitvector", "sfe", {}),
    ("bitvector", "sfe_plus", {}),
    ("bitvector", "nvil", {}),
]


@pytest.mark.parametrize(("latent", "name", "options"), UNBIASED)
def test_unbiased_estimators_average_to_the_exact_gradient(latent, name, options):
    torch.manual_seed(0)
    entropy_weight = 0.2
    scores0, table_row, weights, theta0 = problem(latent)
    estimator = build(name, latent, entropy_weight=entropy_weight, **options)
    baseline_input = torch.randn(1, FEATURES, dtype=DTYPE) if name == "nvil" else None
    # A first step sets any running baseline to a nonzero value.
    monte_carlo(estimator, latent, scores0, table_row, weights, theta0, baseline_input)
    if hasattr(estimator, "baseline"):
        assert estimator.baseline != 0 or (name == "nvil" and not options.get("centering", True))

    samples, out = monte_carlo(estimator, latent, scores0, table_row, weights, theta0, baseline_input)
    exact_grad, exact_loss = exact_single(name, latent, scores0, table_row, weights, theta0, entropy_weight)
    assert torch.all(within_bound(samples, exact_grad)), (samples.mean(0), exact_grad)
    # The reported loss is an unbiased estimate of E_q[l] too.
    assert within_bound(out.loss[:, None], exact_loss).item()


def test_the_unbiasedness_check_rejects_a_biased_estimator():
    # Straight-through Gumbel at temperature 1 is biased: the same check fails.
    torch.manual_seed(0)
    scores0, table_row, weights, theta0 = problem("categorical")
    estimator = build("st_gumbel", "categorical", tau0=1.0, tau_min=1.0, anneal_rate=0.0)
    samples, _ = monte_carlo(estimator, "categorical", scores0, table_row, weights, theta0)
    exact_grad, _ = exact_single("sfe", "categorical", scores0, table_row, weights, theta0, 0.0)
    assert not torch.all(within_bound(samples, exact_grad))


def captured(loss_fn, calls: list):
    """``loss_fn`` that also records each call's (example, z)."""

    def wrapper(example, z):
        calls.append((example.clone(), z.detach().clone()))
        return loss_fn(example, z)

    return wrapper


def test_sfe_single_sample_gradient_and_baseline_used_before_update():
    # Per row: grad_s = (l - b)(e_z - q) with the baseline b from before this
    # step (not reset to 0), and grad_theta = dl/dtheta.
    torch.manual_seed(1)
    rows = 64
    scores0, table_row, weights, theta0 = problem("categorical")
    estimator = build("sfe", "categorical", decay=0.75)
    estimator.baseline.fill_(1.7)
    estimator.baseline_updates.fill_(3)
    scores = scores0.expand(rows, -1).clone().requires_grad_()
    theta = torch.full((rows,), float(theta0), dtype=DTYPE, requires_grad=True)
    calls: list = []
    out = estimator(
        scores, captured(make_loss("categorical", table_row.expand(rows, -1), weights, theta), calls)
    )
    grad_scores, grad_theta = torch.autograd.grad(out.surrogate, [scores, theta])
    ((_, z),) = calls
    probs = torch.softmax(scores0, -1)
    expected = (out.loss - 1.7)[:, None] * (z - probs) / rows
    torch.testing.assert_close(grad_scores, expected, rtol=1e-12, atol=1e-14)
    dl_dtheta = out.loss * (z @ weights) / rows
    torch.testing.assert_close(grad_theta, dl_dtheta, rtol=1e-12, atol=1e-14)
    # Updated after use: an exponential moving average with weight 1 - decay.
    torch.testing.assert_close(estimator.baseline, 1.7 + 0.25 * (out.loss.mean() - 1.7))
    assert int(estimator.baseline_updates) == 4


def test_sum_and_sample_single_sample_gradient():
    # Per row, with c the top category, z' the sampled one and b the baseline:
    # grad_s = q*(e_c - q)(l_c - l_z') + (1 - q*)(l_z' - b)(e_z' - q_rest).
    torch.manual_seed(2)
    rows = 64
    scores0, table_row, _, _ = problem("categorical")
    estimator = build("sum_and_sample", "categorical")
    estimator.baseline.fill_(2.5)
    estimator.baseline_updates.fill_(1)
    scores = scores0.expand(rows, -1).clone().requires_grad_()
    losses_table = table_row.expand(rows, -1)
    calls: list = []
    out = estimator(scores, captured(lambda n, z: (losses_table[n] * z).sum(-1), calls))
    (grad_scores,) = torch.autograd.grad(out.surrogate, [scores])
    ((example, z),) = calls
    assert example.tolist() == list(range(rows)) * 2
    top, sample = z[:rows], z[rows:]
    probs = torch.softmax(scores0, -1)
    top_index = int(probs.argmax())
    assert torch.all(top[:, top_index] == 1) and torch.all(sample[:, top_index] == 0)
    top_prob = probs[0, top_index]
    rest = torch.where(torch.arange(K) == top_index, 0.0, probs / (1 - top_prob))
    top_loss, sample_loss = table_row[0, top_index], (sample * table_row).sum(-1)
    one_hot_top = torch.nn.functional.one_hot(torch.tensor(top_index), K).to(DTYPE)
    expected = top_prob * (one_hot_top - probs) * (top_loss - sample_loss)[:, None]
    expected = expected + (1 - top_prob) * (sample_loss - 2.5)[:, None] * (sample - rest)
    torch.testing.assert_close(grad_scores, expected / rows, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(out.loss, top_prob * top_loss + (1 - top_prob) * sample_loss)


def test_sum_and_sample_degenerate_cases():
    # q* == 1 (other categories at -inf) and K == 1: no NaN, the exact loss.
    scores = torch.tensor([[0.0, -math.inf, -math.inf, -math.inf], [800.0, 0.0, 0.0, 0.0]], dtype=DTYPE)
    scores.requires_grad_()
    table = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], dtype=DTYPE)
    out = build("sum_and_sample", "categorical")(scores, lambda n, z: (table[n] * z).sum(-1))
    out.surrogate.backward()
    torch.testing.assert_close(out.loss, torch.tensor([1.0, 5.0], dtype=DTYPE))
    assert torch.isfinite(out.surrogate) and torch.all(torch.isfinite(scores.grad))

    single = make_estimator("sum_and_sample", latent="categorical", size=1).to(DTYPE)
    scores = torch.zeros(3, 1, dtype=DTYPE, requires_grad=True)
    out = single(scores, lambda n, z: z[:, 0] * (n + 1))
    out.surrogate.backward()
    assert out.decoder_calls == 3 and out.support.tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(out.loss, torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE))
    assert torch.all(scores.grad == 0)


def test_running_baselines():
    losses = [torch.full((4,), value, dtype=DTYPE) for value in (2.0, 6.0, 1.0)]
    scores = torch.zeros(4, K, dtype=DTYPE)
    # EMA with decay 0.75: the first mean, then 2 + 0.25 (6 - 2), then 3 + 0.25 (1 - 3).
    for kind, expected in [("ema", [2.0, 3.0, 2.5]), ("cumulative", [2.0, 4.0, 3.0])]:
        estimator = build("sfe", "categorical", baseline=kind, decay=0.75)
        assert {"baseline", "baseline_updates"} <= set(estimator.state_dict())
        assert float(estimator.baseline) == 0.0
        for batch, value in zip(losses, expected, strict=True):
            estimator(scores, lambda n, z, batch=batch: batch[n])
            assert float(estimator.baseline) == pytest.approx(value)
        estimator.eval()  # evaluation does not move the baseline
        estimator(scores, lambda n, z: torch.full_like(n, 100.0, dtype=DTYPE))
        assert float(estimator.baseline) == pytest.approx(expected[-1])
        restored = build("sfe", "categorical", baseline=kind, decay=0.75)
        restored.load_state_dict(estimator.state_dict())
        assert float(restored.baseline) == pytest.approx(expected[-1])
        assert int(restored.baseline_updates) == 3


def test_nvil_trains_its_baseline_network_only():
    torch.manual_seed(0)
    estimator = build("nvil", "categorical", hidden=8)
    scores = torch.randn(5, K, dtype=DTYPE, requires_grad=True)
    features = torch.randn(5, FEATURES, dtype=DTYPE, requires_grad=True)
    out = estimator(scores, lambda n, z: z @ torch.arange(K, dtype=DTYPE), baseline_input=features)
    out.surrogate.backward()
    grads = [parameter.grad for parameter in estimator.baseline_net.parameters()]
    assert all(grad is not None and torch.all(torch.isfinite(grad)) for grad in grads)
    assert any(grad.abs().sum() > 0 for grad in grads)
    assert features.grad is None  # the baseline's input is detached
    with pytest.raises(ValueError, match="baseline_input"):
        estimator(scores, lambda n, z: z.sum(-1))
    with pytest.raises(ValueError, match="baseline_input"):
        estimator(scores, lambda n, z: z.sum(-1), baseline_input=torch.zeros(5, FEATURES + 1, dtype=DTYPE))


# --------------------------------------------------------------------------
# Gumbel relaxations.


@pytest.mark.parametrize("latent", ["categorical", "bitvector"])
def test_gumbel_converges_to_the_exact_expectation_as_temperature_vanishes(latent):
    torch.manual_seed(0)
    scores0, table_row, weights, theta0 = problem(latent)
    _, exact_loss = exact_single("sfe", latent, scores0, table_row, weights, theta0, 0.0)
    gaps = {}
    for temperature in (0.01, 2.0):
        estimator = build("gumbel", latent, tau0=temperature, tau_min=temperature, anneal_rate=0.0)
        _, out = monte_carlo(estimator, latent, scores0, table_row, weights, theta0)
        error = out.loss.std() / math.sqrt(COPIES)
        gaps[temperature] = (out.loss.mean() - exact_loss).abs() / (4 * error + 0.01)
    assert gaps[0.01] <= 1  # within 4 standard errors + 0.01
    assert gaps[2.0] > 1  # and the check does see the bias of a high temperature


@pytest.mark.parametrize("latent", ["categorical", "bitvector"])
@pytest.mark.parametrize("name", ["gumbel", "st_gumbel"])
def test_temperature_schedule_and_checkpoint(latent, name):
    estimator = build(name, latent, tau0=1.0, tau_min=0.3, anneal_rate=0.5)
    scores = torch.zeros(2, SIZES[latent], dtype=DTYPE)
    assert {"step", "temperature"} <= set(estimator.state_dict())
    expected = [1.0, math.exp(-0.5), math.exp(-1.0), 0.3, 0.3]
    for step, temperature in enumerate(expected, start=1):
        estimator(scores, lambda n, z: z.sum(-1))
        assert int(estimator.step) == step
        assert float(estimator.temperature) == pytest.approx(temperature)
    estimator.eval()  # no annealing step in evaluation mode
    estimator(scores, lambda n, z: z.sum(-1))
    assert int(estimator.step) == 5 and float(estimator.temperature) == pytest.approx(0.3)

    restored = build(name, latent)  # defaults: tau0 = 1.0
    restored.load_state_dict(estimator.state_dict())
    assert int(restored.step) == 5 and float(restored.temperature) == pytest.approx(0.3)


@pytest.mark.parametrize("latent", ["categorical", "bitvector"])
def test_relaxed_samples_use_the_stored_temperature_and_one_noise(latent, monkeypatch):
    # With known noise: gumbel passes softmax((s + g) / tau) (or the sigmoid
    # of t + L, L = g1 - g2, over tau); st_gumbel passes the hard sample of
    # the same noise forward and the relaxed sample's gradient backward.
    generator = torch.Generator().manual_seed(4)
    size = SIZES[latent]
    scores0 = torch.randn(6, size, generator=generator, dtype=DTYPE)
    noises = [torch.randn(6, size, generator=generator, dtype=DTYPE) for _ in range(2)]
    perturbed = scores0 + (noises[0] if latent == "categorical" else noises[0] - noises[1])
    tau = 0.7
    costs = torch.randn(size, dtype=DTYPE, generator=generator)
    for name in ("gumbel", "st_gumbel"):
        queue = list(noises)
        monkeypatch.setattr(estimators, "_standard_gumbel", lambda like, queue=queue: queue.pop(0))
        estimator = build(name, latent, tau0=2.0)
        estimator.load_state_dict({"step": torch.tensor(9), "temperature": torch.tensor(tau, dtype=DTYPE)})
        estimator.eval()
        scores = scores0.clone().requires_grad_()
        calls: list = []
        out = estimator(scores, captured(lambda n, z: z @ costs, calls))
        out.surrogate.backward()
        relaxed_scores = (perturbed / tau).requires_grad_()
        if latent == "categorical":
            relaxed = torch.softmax(relaxed_scores, -1)
            hard = torch.nn.functional.one_hot(perturbed.argmax(-1), size).to(DTYPE)
        else:
            relaxed = torch.sigmoid(relaxed_scores)
            hard = (perturbed > 0).to(DTYPE)
        ((_, z),) = calls
        torch.testing.assert_close(z, relaxed.detach() if name == "gumbel" else hard, rtol=1e-12, atol=0)
        (expected_grad,) = torch.autograd.grad((relaxed @ costs).mean(), relaxed_scores)
        torch.testing.assert_close(scores.grad, expected_grad / tau, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("latent", ["categorical", "bitvector"])
def test_straight_through_forward_is_exact_and_stochastic(latent):
    torch.manual_seed(0)
    rows, size = 4000, SIZES[latent]
    scores0 = torch.tensor(
        [0.5, -0.3, 1.1, 0.1] if latent == "categorical" else [0.7, -0.4, 0.2], dtype=DTYPE
    )
    calls: list = []
    estimator = build("st_gumbel", latent)
    scores = scores0.expand(rows, -1).clone().requires_grad_()
    out = estimator(scores, captured(lambda n, z: z @ torch.arange(1.0, size + 1, dtype=DTYPE), calls))
    out.surrogate.backward()
    ((_, z),) = calls
    assert torch.all((z == 0) | (z == 1))
    if latent == "categorical":
        assert torch.all(z.sum(-1) == 1)
    assert torch.unique(z, dim=0).shape[0] > 1  # stochastic
    # The forward samples follow q (softmax / Bernoulli) ...
    probs = torch.softmax(scores0, -1) if latent == "categorical" else torch.sigmoid(scores0)
    assert torch.all(within_bound(z, probs, atol=0.0))
    # ... and the backward is the relaxed one (nonzero).
    assert torch.all(torch.isfinite(scores.grad)) and scores.grad.abs().sum() > 0


# --------------------------------------------------------------------------
# Decoder calls, bad input and the factory.


def sparse_probs(name: str, latent: str, scores: torch.Tensor) -> torch.Tensor:
    if name == "sparsemax":
        return sparsecore_torch.sparsemax(scores)
    if name == "topk_sparsemax":
        return sparsecore_torch.topk_sparsemax_structured(scores, BitVector(D), 10)[0]
    structure = BitVector(D) if name == "sparsemap" else Budget(D, D // 2)
    return sparsecore_torch.sparsemap((scores + 1) / 2, structure)[0]


@pytest.mark.parametrize(("latent", "name"), ALL)
def test_decoder_calls(latent, name):
    torch.manual_seed(0)
    rows, size = 7, SIZES[latent]
    scores = 0.8 * torch.randn(rows, size, dtype=DTYPE)
    calls: list = []
    inputs = torch.randn(rows, FEATURES, dtype=DTYPE)
    out = build(name, latent)(scores, captured(lambda n, z: z.sum(-1) + n, calls), baseline_input=inputs)
    passed = sum(example.shape[0] for example, _ in calls)
    assert out.decoder_calls == passed
    assert out.support.shape == (rows,) and out.support.dtype == DTYPE
    per_example = {"dense": K, "sfe_plus": 2, "sum_and_sample": 2}
    if name in ("sparsemax", "topk_sparsemax", "sparsemap", "sparsemap_budget"):
        probs = sparse_probs(name, latent, scores)
        assert passed == int((probs > 0).sum())
        torch.testing.assert_close(out.support, (probs > 0).sum(-1).to(DTYPE))
    else:
        assert passed == rows * per_example.get(name, 1)
        torch.testing.assert_close(
            out.support, torch.full((rows,), float(per_example.get(name, 1)), dtype=DTYPE)
        )


def nan_loss(example, z):
    return torch.where(example == 1, math.nan, z.sum(-1))


@pytest.mark.parametrize(("latent", "name"), ALL)
@pytest.mark.parametrize(
    "loss_fn",
    [
        nan_loss,
        lambda example, z: z.sum(-1, keepdim=True),
        lambda example, z: z.sum(),
        lambda example, z: torch.cat([z.sum(-1), z.sum(-1)]),
    ],
    ids=["nan", "column", "scalar", "too-long"],
)
def test_bad_loss_fn(latent, name, loss_fn):
    scores = torch.randn(3, SIZES[latent], dtype=DTYPE)
    inputs = torch.randn(3, FEATURES, dtype=DTYPE)
    with pytest.raises(ValueError, match="loss_fn"):
        build(name, latent)(scores, loss_fn, baseline_input=inputs)


def test_nan_in_the_self_critic_call():
    calls = []

    def loss_fn(example, z):
        calls.append(1)
        return z.sum(-1) * (math.nan if len(calls) == 2 else 1.0)

    with pytest.raises(ValueError, match="loss_fn returned NaN"):
        build("sfe_plus", "categorical")(torch.zeros(3, K, dtype=DTYPE), loss_fn)


@pytest.mark.parametrize(("latent", "name"), ALL)
def test_bad_scores(latent, name):
    estimator = build(name, latent)
    size = SIZES[latent]
    for scores in (torch.zeros(3, size + 1), torch.zeros(size), torch.zeros(0, size)):
        with pytest.raises(ValueError, match="scores"):
            estimator(scores.to(DTYPE), lambda n, z: z.sum(-1), baseline_input=torch.zeros(3, FEATURES))
    with pytest.raises(TypeError, match="scores"):
        estimator(torch.zeros(3, size, dtype=torch.int64), lambda n, z: z.sum(-1))
    with pytest.raises(TypeError, match="loss_fn"):
        estimator(torch.zeros(3, size, dtype=DTYPE), None)


def test_factory_errors_and_names():
    assert set(ESTIMATORS) == {"categorical", "bitvector"}
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'") as info:
        make_estimator("reinforce", latent="categorical", size=K)
    assert all(name in str(info.value) for name in ESTIMATORS["categorical"])
    with pytest.raises(ValueError) as info:
        make_estimator("sparsemax", latent="bitvector", size=D)
    assert all(name in str(info.value) for name in ESTIMATORS["bitvector"])
    with pytest.raises(ValueError, match="latent"):
        make_estimator("sfe", latent="tree", size=D)
    with pytest.raises(TypeError, match="baseline_features"):
        make_estimator("nvil", latent="categorical", size=K)
    with pytest.raises(ValueError, match="baseline"):
        make_estimator("sfe", latent="categorical", size=K, baseline="median")
    with pytest.raises(ValueError, match="scoring"):
        make_estimator("sparsemap", latent="bitvector", size=D, scoring="pairs")
    with pytest.raises(TypeError):
        make_estimator("dense", latent="categorical", size=K, k=3)
    assert make_estimator("sparsemap_budget", latent="bitvector", size=8).budget == 4
    assert make_estimator("sparsemap", latent="bitvector", size=8).scoring == "paper"
    assert make_estimator("topk_sparsemax", latent="bitvector", size=8).k == 10
    sfe = make_estimator("sfe", latent="bitvector", size=8)
    assert (sfe.baseline_kind, sfe.decay, sfe.entropy_weight) == ("ema", 0.99, 0.0)


def test_docstring_examples():
    result = doctest.testmod(estimators, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
