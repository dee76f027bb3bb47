r"""Gradient estimators for discrete latent variables, behind one interface.

A model computes the encoder's ``scores`` and a loss function, and calls an
:class:`Estimator` with both; it gets back a scalar ``surrogate`` to
minimize, the per-example loss to report, the encoder's entropy and the
number of rows really decoded.  Swapping the estimator is one flag
(:func:`make_estimator`), so every method of the paper's experiments runs
the same model code.

Every estimator targets, for a batch of N examples,

.. math::

    \frac{1}{N} \sum_{n=1}^N \Big( \mathbb{E}_{q_n(z)}[\ell(n, z)]
        - \lambda\, \mathbb{H}(q_n) \Big),

with :math:`\lambda` the ``entropy_weight``: marginalization computes it
exactly over the support of a sparse (or dense) :math:`q_n`, score-function
estimators estimate its gradient without bias from samples, and the Gumbel
relaxations estimate it with a bias that vanishes as the temperature goes
to 0.  The gradient of ``surrogate`` with respect to every parameter (the
encoder through ``scores``, the decoder inside ``loss_fn``, a baseline
network) is the estimator's gradient of that objective.

The loss function
-----------------
``loss_fn(example, z) -> losses`` receives ``example``, an int64 tensor of
shape (P,) of row indices into the batch, and ``z``, a float tensor of
shape (P, K) (a one-hot category, or a relaxed one for the Gumbel
estimators) or (P, D) (a 0/1 bit-vector, or a relaxed one); it returns the
P losses, shape (P,), to be minimized.  It may close over parameters (a
decoder): gradients reach them.  Every estimator checks what it returns: a
wrong shape or a NaN raises ``ValueError`` naming ``loss_fn``.

Estimators (the names :func:`make_estimator` takes, see :data:`ESTIMATORS`)
------------------------------------------------------------------------------
Categorical latent, ``scores`` of shape (N, K):

- ``"dense"``: softmax, exact marginalization over all K categories.
- ``"sparsemax"``: sparsemax, exact marginalization over its support.
- ``"sfe"``, ``"sfe_plus"``, ``"nvil"``, ``"sum_and_sample"``: score
  function estimators on softmax (see the classes for their baselines).
- ``"gumbel"``, ``"st_gumbel"``: Gumbel-Softmax and straight-through.

Bit-vector latent, ``scores`` of shape (N, D) (variable scores, or the
logits of D independent Bernoullis):

- ``"sfe"``, ``"sfe_plus"``, ``"nvil"``, ``"gumbel"``, ``"st_gumbel"``
  on independent Bernoullis;
- ``"topk_sparsemax"``, ``"sparsemap"``, ``"sparsemap_budget"``: exact
  marginalization over a structured sparse distribution.

Defects of the paper's research code that are not reproduced here:
sum-and-sample keeps its baseline (it was reset to 0), the Gumbel
temperature and step are buffers saved in checkpoints, straight-through
Gumbel on bit-vectors samples its forward pass, and the SFE baseline is an
exponential moving average by default (the cumulative mean of the research
code is an option).

References
----------
Correia, Niculae, Aziz and Martins, "Efficient Marginalization of Discrete
and Structured Latent Variables via Sparsity", NeurIPS 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sparsecore_torch
import torch
import torch.nn.functional as F

from sparsecore import BitVector, Budget

__all__ = [
    "BITVECTOR_ESTIMATORS",
    "CATEGORICAL_ESTIMATORS",
    "ESTIMATORS",
    "NVIL",
    "DenseMarginalization",
    "Estimator",
    "EstimatorOutput",
    "GumbelSoftmax",
    "ScoreFunction",
    "SelfCriticScoreFunction",
    "SparseMAPMarginalization",
    "SparsemaxMarginalization",
    "StraightThroughGumbel",
    "SumAndSample",
    "TopKSparsemaxMarginalization",
    "make_estimator",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LATENTS = ("categorical", "bitvector")

CATEGORICAL_ESTIMATORS = (
    "dense",
    "sparsemax",
    "sfe",
    "sfe_plus",
    "nvil",
    "sum_and_sample",
    "gumbel",
    "st_gumbel",
)
BITVECTOR_ESTIMATORS = (
    "sfe",
    "sfe_plus",
    "nvil",
    "gumbel",
    "st_gumbel",
    "topk_sparsemax",
    "sparsemap",
    "sparsemap_budget",
)
#: The estimator names :func:`make_estimator` accepts, per kind of latent.
ESTIMATORS: dict[str, tuple[str, ...]] = {
    "categorical": CATEGORICAL_ESTIMATORS,
    "bitvector": BITVECTOR_ESTIMATORS,
}


@dataclass(frozen=True)
class EstimatorOutput:
    """What an :class:`Estimator` returns for a batch of N examples.

    Attributes
    ----------
    surrogate : torch.Tensor
        Scalar to minimize: the batch mean of the per-example surrogates
        (plus a baseline network's regression loss, for NVIL).  Its gradient
        with respect to every parameter is the estimator's gradient of
        ``mean_n(E_q[loss] - entropy_weight * H(q_n))``.
    loss : torch.Tensor
        Shape (N,), detached: the loss to report, the exact expectation
        ``E_q[loss]`` for marginalization, the sampled (or Rao-Blackwellized,
        for sum-and-sample) loss for the sampling estimators.
    entropy : torch.Tensor
        Shape (N,), detached: the Shannon entropy (nats) of each example's
        distribution ``q_n`` (for the Gumbel estimators, of the categorical
        or Bernoulli distribution they relax).
    decoder_calls : int
        The rows really passed to ``loss_fn`` in this call, all calls
        together (including the extra samples of SFE+ and sum-and-sample).
    support : torch.Tensor
        Shape (N,), float: the structures decoded for each example (K for
        dense, the support size for sparse ones, 1 for SFE, NVIL and Gumbel,
        2 for SFE+ and sum-and-sample): the paper's "decoder calls" per
        example.
    """

    surrogate: torch.Tensor
    loss: torch.Tensor
    entropy: torch.Tensor
    decoder_calls: int
    support: torch.Tensor


# --------------------------------------------------------------------------
# Helpers: checked loss calls, entropies, log-probabilities.


class _CheckedLoss:
    """Calls ``loss_fn``, checks its output and counts the rows passed to it."""

    def __init__(self, loss_fn: LossFn, *, check: bool) -> None:
        self.loss_fn = loss_fn
        self.check = check
        self.rows = 0

    def __call__(self, example: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        rows = int(example.shape[0])
        losses = self.loss_fn(example, z)
        self.rows += rows
        if not isinstance(losses, torch.Tensor):
            raise TypeError(f"loss_fn must return a torch.Tensor, got {type(losses).__name__}")
        if tuple(losses.shape) != (rows,):
            raise ValueError(
                f"loss_fn must return one loss per row, shape ({rows},), got shape {tuple(losses.shape)}"
            )
        if not losses.is_floating_point():
            raise TypeError(f"loss_fn must return a floating tensor, got dtype {losses.dtype}")
        if self.check and rows and bool(torch.isnan(losses).any()):
            bad = int(torch.isnan(losses).nonzero()[0, 0])
            raise ValueError(
                f"loss_fn returned NaN for example {int(example[bad])} at z = {z[bad].tolist()} "
                "(construct the estimator with check_nan=False to skip this check)"
            )
        return losses


def _entropy_of_probs(probs: torch.Tensor) -> torch.Tensor:
    """``-sum p log p`` over the last axis with ``0 log 0 = 0`` (zero gradient there)."""
    positive = probs > 0
    log_probs = torch.log(torch.where(positive, probs, torch.ones_like(probs)))
    return -torch.where(positive, probs * log_probs, torch.zeros_like(probs)).sum(-1)


def _softmax_entropy(scores: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(scores)`` per row, safe with ``-inf`` scores."""
    log_probs = torch.log_softmax(scores, dim=-1)
    probs = log_probs.exp()
    positive = probs > 0
    safe = torch.where(positive, log_probs, torch.zeros_like(log_probs))
    return -(probs * safe).sum(-1)


def _bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of D independent Bernoullis with ``logits``, summed over bits."""
    return (F.softplus(logits) - logits * torch.sigmoid(logits)).sum(-1)


def _bernoulli_log_prob(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """``log q(z) = sum_i log q(z_i)`` of 0/1 ``bits`` under Bernoulli ``logits``."""
    return -F.binary_cross_entropy_with_logits(logits, bits, reduction="none").sum(-1)


def _one_hot(index: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(index, size).to(dtype)


def _standard_gumbel(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise of ``like``'s shape, dtype and device."""
    exponential = torch.empty_like(like).exponential_()
    return -torch.log(exponential.clamp_min(torch.finfo(like.dtype).tiny))


def _check_positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        expected = "nonnegative" if allow_zero else "positive"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def _check_int(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _support_of(rows: int, per_example: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((rows,), float(per_example), dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------
# The interface.


class Estimator(torch.nn.Module):
    r"""Base class: turns scores and a loss function into a surrogate objective.

    Subclasses implement :meth:`_estimate`; :meth:`forward` checks the
    inputs and wraps ``loss_fn`` so that its output is checked and its rows
    counted for every estimator alike.

    Parameters
    ----------
    latent : {"categorical", "bitvector"}
        The latent variable: one of K categories, or D bits.
    size : int
        K (categorical) or D (bit-vector); ``scores`` has shape (N, size).
    entropy_weight : float, default 0.0
        :math:`\lambda`: the surrogate includes ``-entropy_weight * H(q_n)``
        (differentiable, computed exactly).
    check_nan : bool, default True
        Raise ``ValueError`` when ``scores`` hold a NaN or ``loss_fn``
        returns one (a host read per check; pass ``False`` to skip them).
        Shapes are always checked.

    Examples
    --------
    >>> import torch
    >>> from experiments.estimators import make_estimator
    >>> table = torch.tensor([[1.0, 2.0, 3.0]])
    >>> estimator = make_estimator("sparsemax", latent="categorical", size=3)
    >>> scores = torch.tensor([[1.0, 0.8, -1.0]], requires_grad=True)
    >>> out = estimator(scores, lambda example, z: (z * table[example]).sum(-1))
    >>> out.loss, out.decoder_calls, out.support
    (tensor([1.4000]), 2, tensor([2.]))
    >>> out.surrogate.backward()
    >>> scores.grad
    tensor([[-0.5000,  0.5000,  0.0000]])
    """

    latents: tuple[str, ...] = LATENTS

    def __init__(
        self,
        latent: str,
        size: int,
        *,
        entropy_weight: float = 0.0,
        check_nan: bool = True,
    ) -> None:
        super().__init__()
        if latent not in self.latents:
            raise ValueError(
                f"latent must be one of {', '.join(map(repr, self.latents))} for "
                f"{type(self).__name__}, got {latent!r}"
            )
        self.latent = latent
        self.size = _check_int(size, "size", minimum=1)
        self.entropy_weight = _check_positive(entropy_weight, "entropy_weight", allow_zero=True)
        self.check_nan = bool(check_nan)

    def extra_repr(self) -> str:
        return f"latent={self.latent!r}, size={self.size}, entropy_weight={self.entropy_weight}"

    def forward(
        self,
        scores: torch.Tensor,
        loss_fn: LossFn,
        *,
        baseline_input: torch.Tensor | None = None,
    ) -> EstimatorOutput:
        """Estimate the objective of a batch and the surrogate for its gradient.

        Parameters
        ----------
        scores : torch.Tensor
            Shape (N, size), floating: the encoder's scores (logits for the
            softmax and Bernoulli estimators, sparsemax or variable scores for
            the sparse ones).
        loss_fn : callable
            ``loss_fn(example, z) -> losses`` of shape (P,) (see the module
            documentation).
        baseline_input : torch.Tensor, optional
            Shape (N, F): the input of NVIL's baseline network (required by
            NVIL, ignored by the others).

        Returns
        -------
        EstimatorOutput
        """
        if not isinstance(scores, torch.Tensor):
            raise TypeError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
        if not scores.is_floating_point():
            raise TypeError(f"scores must have a floating dtype, got {scores.dtype}")
        if scores.ndim != 2 or scores.shape[1] != self.size or scores.shape[0] == 0:
            raise ValueError(
                f"scores must have shape (N, {self.size}) with N >= 1 for a {self.latent} latent of "
                f"size {self.size}, got shape {tuple(scores.shape)}"
            )
        if self.check_nan and bool(torch.isnan(scores).any()):
            raise ValueError("scores contain NaN (a NaN score has no distribution)")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        checked = _CheckedLoss(loss_fn, check=self.check_nan)
        per_example, loss, entropy, support, extra = self._estimate(scores, checked, baseline_input)
        surrogate = (per_example - self.entropy_weight * entropy).mean()
        if extra is not None:
            surrogate = surrogate + extra
        return EstimatorOutput(
            surrogate=surrogate,
            loss=loss.detach(),
            entropy=entropy.detach(),
            decoder_calls=checked.rows,
            support=support,
        )

    def _estimate(
        self, scores: torch.Tensor, loss_fn: _CheckedLoss, baseline_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(per_example_surrogate, loss, entropy, support, extra)``.

        ``per_example_surrogate`` excludes the entropy term, which
        :meth:`forward` adds; ``extra`` is a scalar added to the surrogate
        (a baseline's regression loss) or ``None``.
        """
        raise NotImplementedError

    # Helpers shared by the sampling estimators.

    def _entropy(self, scores: torch.Tensor) -> torch.Tensor:
        """Entropy of the softmax (categorical) or Bernoulli (bit-vector) distribution."""
        if self.latent == "categorical":
            return _softmax_entropy(scores)
        return _bernoulli_entropy(scores)

    def _sample(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A sample ``z`` (one-hot or 0/1, float) per row and its log-probability."""
        if self.latent == "categorical":
            log_probs = torch.log_softmax(scores, dim=-1)
            index = torch.multinomial(log_probs.detach().exp(), 1).squeeze(-1)
            log_prob = log_probs.gather(-1, index[:, None]).squeeze(-1)
            return _one_hot(index, self.size, scores.dtype), log_prob
        bits = torch.bernoulli(torch.sigmoid(scores.detach()))
        return bits, _bernoulli_log_prob(scores, bits)


def _examples(scores: torch.Tensor) -> torch.Tensor:
    return torch.arange(scores.shape[0], device=scores.device)


# --------------------------------------------------------------------------
# Exact marginalization.


class _Marginalization(Estimator):
    """Exact expectation over the support of a (sparse) distribution."""

    def distribution(self, scores: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The distribution marginalized over: dense probs (N, K), or ``(probs, atoms)``."""
        raise NotImplementedError

    def _estimate(
        self, scores: torch.Tensor, loss_fn: _CheckedLoss, baseline_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        distribution = self.distribution(scores)
        if isinstance(distribution, torch.Tensor):
            probs = distribution
            size, dtype = self.size, scores.dtype

            def category_loss(example: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
                return loss_fn(example, _one_hot(category, size, dtype))

            marginal = sparsecore_torch.marginalize(probs, category_loss, check=False)
        else:
            probs = distribution[0]
            marginal = sparsecore_torch.marginalize(distribution, loss_fn, check=False)
        entropy = _entropy_of_probs(probs)
        support = marginal.support.to(scores.dtype)
        return marginal.expectation, marginal.expectation, entropy, support, None


class DenseMarginalization(_Marginalization):
    r"""Softmax distribution, exact marginalization over all K categories.

    .. math::

        q = \operatorname{softmax}(s), \qquad
        \mathbb{E}_q[\ell] = \sum_{k=1}^K q_k\, \ell(n, e_k)

    Costs K decoder rows per example (fewer only where a probability
    underflows to exactly 0).  Categorical latent only.
    """

    latents = ("categorical",)

    def distribution(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores, dim=-1)


class SparsemaxMarginalization(_Marginalization):
    r"""Sparsemax distribution, exact marginalization over its support.

    .. math::

        q = \operatorname{sparsemax}(s) = \arg\min_{p \in \Delta^K} \|p - s\|^2, \qquad
        \mathbb{E}_q[\ell] = \sum_{k:\ q_k > 0} q_k\, \ell(n, e_k)

    Only the categories in the support are decoded (paper section 3).
    Categorical latent only.
    """

    latents = ("categorical",)

    def distribution(self, scores: torch.Tensor) -> torch.Tensor:
        return sparsecore_torch.sparsemax(scores)


class TopKSparsemaxMarginalization(_Marginalization):
    r"""Structured top-k sparsemax over bit-vectors, exact marginalization.

    The ``k`` best structures by :math:`\langle a_z, t\rangle`, then sparsemax
    over their scores (paper section 4.1); at most ``k`` rows are decoded
    per example, and the result is the full structured sparsemax whenever
    fewer than ``k`` get a nonzero probability.  Bit-vector latent only.

    Parameters
    ----------
    k : int, default 10
        Number of structures kept.
    """

    latents = ("bitvector",)

    def __init__(self, latent: str, size: int, *, k: int = 10, **options: Any) -> None:
        super().__init__(latent, size, **options)
        self.k = _check_int(k, "k", minimum=1)
        self.structure = BitVector(self.size)

    def distribution(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sparsecore_torch.topk_sparsemax_structured(scores, self.structure, self.k)


class SparseMAPMarginalization(_Marginalization):
    r"""SparseMAP over bit-vectors (optionally with a budget), exact marginalization.

    .. math::

        \mu^\star = \arg\min_{\mu \in \operatorname{conv}\{a_z\}} \|\mu - t'\|^2
        = \sum_z \xi_z a_z,

    a sparse distribution :math:`\xi` over structures (paper section 4.2),
    marginalized exactly.  Bit-vector latent only.

    Parameters
    ----------
    budget : int, optional
        At most ``budget`` bits on (:class:`sparsecore.Budget`); ``None`` for
        every bit-vector (:class:`sparsecore.BitVector`).
    scoring : {"paper", "standard"}, default "paper"
        ``"paper"``: :math:`t' = (t + 1) / 2`, which is what the paper's
        research code computed by scoring each bit as an on/off pair with
        scores ``[t_i, 0]`` (marginals ``clip((t + 1) / 2, 0, 1)`` without a
        budget); ``"standard"``: :math:`t' = t` (marginals ``clip(t, 0, 1)``).
    max_iter, tol, max_active
        Passed to :func:`sparsecore_torch.sparsemap`.
    """

    latents = ("bitvector",)

    def __init__(
        self,
        latent: str,
        size: int,
        *,
        budget: int | None = None,
        scoring: str = "paper",
        max_iter: int | None = None,
        tol: float | None = None,
        max_active: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(latent, size, **options)
        if scoring not in ("paper", "standard"):
            raise ValueError(f"scoring must be 'paper' or 'standard', got {scoring!r}")
        self.scoring = scoring
        self.budget = None if budget is None else _check_int(budget, "budget", minimum=0)
        self.structure: BitVector | Budget = (
            BitVector(self.size) if self.budget is None else Budget(self.size, self.budget)
        )
        self.solver_options: dict[str, Any] = {"max_iter": max_iter, "tol": tol, "max_active": max_active}

    def distribution(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scoring == "paper":
            scores = (scores + 1.0) / 2.0
        return sparsecore_torch.sparsemap(scores, self.structure, **self.solver_options)


# --------------------------------------------------------------------------
# Score function estimators.


class _RunningBaseline(Estimator):
    """An estimator with a running-mean baseline kept in registered buffers.

    ``baseline`` is the current value and ``baseline_updates`` the number of
    updates made; both are saved in the state dict.  The value is used
    before it is updated with the current batch (so it does not depend on
    the current samples), and it is updated only in training mode.
    """

    baseline: torch.Tensor
    baseline_updates: torch.Tensor

    def __init__(
        self,
        latent: str,
        size: int,
        *,
        baseline: str = "ema",
        decay: float = 0.99,
        **options: Any,
    ) -> None:
        super().__init__(latent, size, **options)
        self._init_baseline(baseline, decay)

    def _init_baseline(self, kind: str, decay: float) -> None:
        if kind not in ("ema", "cumulative"):
            raise ValueError(f"baseline must be 'ema' or 'cumulative', got {kind!r}")
        decay = _check_positive(decay, "decay", allow_zero=True)
        if decay >= 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.baseline_kind = kind
        self.decay = decay
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("baseline_updates", torch.zeros((), dtype=torch.int64))

    def _baseline_value(self, like: torch.Tensor) -> torch.Tensor:
        return self.baseline.detach().to(dtype=like.dtype, device=like.device).clone()

    @torch.no_grad()
    def _update_baseline(self, losses: torch.Tensor) -> None:
        """Fold the batch mean of ``losses`` into the baseline (training mode only).

        The first update sets the baseline to the batch mean; later ones
        take an exponential moving average with weight ``1 - decay`` on the
        new mean, or the cumulative mean of all batch means so far.
        """
        if not self.training:
            return
        batch_mean = losses.detach().mean().to(device=self.baseline.device, dtype=self.baseline.dtype)
        if self.baseline_kind == "ema":
            weight = torch.where(
                self.baseline_updates > 0,
                torch.full_like(self.baseline, 1.0 - self.decay),
                torch.ones_like(self.baseline),
            )
        else:
            weight = 1.0 / (self.baseline_updates + 1).to(self.baseline.dtype)
        self.baseline.add_(weight * (batch_mean - self.baseline))
        self.baseline_updates.add_(1)


def _score_term(signal: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
    """``signal.detach() * log_prob`` with value 0: only its gradient counts."""
    return signal.detach() * (log_prob - log_prob.detach())


class ScoreFunction(_RunningBaseline):
    r"""Score function estimator (REINFORCE) with a running-mean baseline.

    One sample :math:`z \sim q` per example (softmax or independent
    Bernoullis), and the per-example surrogate

    .. math::

        \ell(n, z) + (\ell(n, z) - b)\,\big(\log q(z) - \operatorname{sg}[\log q(z)]\big),

    whose value is the sampled loss and whose gradient is
    :math:`\nabla\ell + (\ell - b)\nabla\log q(z)`, unbiased for any
    constant baseline :math:`b`.

    Parameters
    ----------
    baseline : {"ema", "cumulative"}, default "ema"
        ``"ema"`` (the default): an exponential moving average of the batch
        mean loss, started at the first batch mean; ``"cumulative"``: the
        mean of all past batch means, what the paper's research code called
        a moving average.  Kept in the buffers ``baseline`` and
        ``baseline_updates``, used before being updated, and updated only in
        training mode.
    decay : float, default 0.99
        The moving average's decay (``"ema"`` only).
    """

    def _estimate(
        self, scores: torch.Tensor, loss_fn: _CheckedLoss, baseline_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        z, log_prob = self._sample(scores)
        losses = loss_fn(_examples(scores), z)
        baseline = self._baseline_value(losses)
        per_example = losses + _score_term(losses - baseline, log_prob)
        self._update_baseline(losses)
        support = _support_of(scores.shape[0], 1, scores)
        return per_example, losses, self._entropy(scores), support, None


class SelfCriticScoreFunction(Estimator):
    r"""SFE+: score function estimator with a self-critic baseline.

    Two independent samples :math:`z, z' \sim q` per example; the loss at
    :math:`z'`, evaluated under ``torch.no_grad()``, is the baseline:

    .. math::

        \ell(n, z) + (\ell(n, z) - \ell(n, z'))\,
        \big(\log q(z) - \operatorname{sg}[\log q(z)]\big).

    Unbiased (the baseline is independent of :math:`z`); two decoder rows
    per example.  The reported loss is :math:`\ell(n, z)`.
    """

    def _estimate(
        self, scores: torch.Tensor, loss_fn: _CheckedLoss, baseline_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        examples = _examples(scores)
        z, log_prob = self._sample(scores)
        losses = loss_fn(examples, z)
        with torch.no_grad():
            critic_z, _ = self._sample(scores)
            critic = loss_fn(examples, critic_z)
        per_example = losses + _score_term(losses - critic, log_prob)
        support = _support_of(scores.shape[0], 2, scores)
        return per_example, losses, self._entropy(scores), support, None


class NVIL(_RunningBaseline):
    r"""NVIL: score function estimator with a learned, input-dependent baseline.

    A network :math:`b_\psi(x)` (ReLU hidden layers) on
    ``baseline_input`` predicts the centered loss; the learning signal is
    :math:`\ell(n, z) - c - b_\psi(x_n)`, with :math:`c` a running mean of
    the loss when ``centering`` is on (Mnih and Gregor, 2014).  The
    surrogate adds the regression loss
    :math:`\operatorname{mean}_n (\ell(n, z) - c - b_\psi(x_n))^2`
    (gradient into :math:`\psi` only), so one optimizer trains it.
    ``baseline_input`` is detached: the regression trains only the baseline
    network.  Unbiased for any :math:`\psi`.

    Parameters
    ----------
    baseline_features : int
        F, the width of ``baseline_input`` (shape (N, F)).
    hidden : int or sequence of int, default 128
        Hidden units of the baseline network: one ReLU layer of that width,
        or one layer per entry (the research code's semi-supervised VAE:
        ``(512, 512, 512)``).
    centering : bool, default True
        Subtract an exponential moving average of the loss (buffers
        ``baseline`` and ``baseline_updates``, as in :class:`ScoreFunction`).
    decay : float, default 0.99
        Decay of that moving average.
    """

    def __init__(
        self,
        latent: str,
        size: int,
        *,
        baseline_features: int,
        hidden: int | Sequence[int] = 128,
        centering: bool = True,
        decay: float = 0.99,
        **options: Any,
    ) -> None:
        super().__init__(latent, size, baseline="ema", decay=decay, **options)
        self.baseline_features = _check_int(baseline_features, "baseline_features", minimum=1)
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        if not widths:
            raise ValueError("hidden must be an integer >= 1 or a non-empty sequence of them, got ()")
        widths = [_check_int(width, "hidden", minimum=1) for width in widths]
        layers: list[torch.nn.Module] = []
        for before, after in zip([self.baseline_features, *widths], widths, strict=False):
            layers += [torch.nn.Linear(before, after), torch.nn.ReLU()]
        self.baseline_net = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], 1))
        self.centering = bool(centering)

    def _estimate(
        self, scores: torch.Tensor, loss_fn: _CheckedLoss, baseline_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if baseline_input is None:
            raise ValueError(
                "NVIL needs baseline_input, the (N, F) input of its baseline network "
                f"(F = baseline_features = {self.baseline_features})"
            )
        if not isinstance(baseline_input, torch.Tensor):
            raise TypeError(f"baseline_input must be a torch.Tensor, got {type(baseline_input).__name__}")
        expected = (scores.shape[0], self.baseline_features)
        if tuple(baseline_input.shape) != expected:
            raise ValueError(
                f"baseline_input must have shape (N, baseline_features) = {expected}, "
                f"got shape {tuple(baseline_input.shape)}"
            )
        z, log_prob = self._sample(scores)
        losses = loss_fn(_examples(scores), z)
        center = self._baseline_value(losses) if self.centering else torch.zeros_like(losses[0])
        predicted = self.baseline_net(baseline_input.detach()).squeeze(-1)
        residual = losses.detach() - center - predicted
        per_example = losses + _score_term(residual, log_prob)
        regression = residual.pow(2).mean()
        if self.centering:
            self._update_baseline(losses)
        support = _support_of(scores.shape[0], 1, scores)
        return per_example, losses, self._entropy(scores), support, regression


class SumAndSample(_RunningBaseline):
    r"""Sum-and-sample (Liu et al., 2019): SFE Rao-Blackwellized over the top category.

    The most probable category :math:`c^\star` (probability :math:`q^\star`)
    is summed exactly, and one sample :math:`z'` from :math:`q` restricted to
    the other categories, :math:`q_{\text{rest}}(z) = q(z) / (1 - q^\star)`,
    estimates the rest:

    .. math::

        q^\star \ell(n, c^\star) + (1 - q^\star)\, \ell(n, z')
        + \operatorname{sg}[(1 - q^\star)(\ell(n, z') - b)]\,
          \big(\log q_{\text{rest}}(z') - \operatorname{sg}[\cdot]\big),

    unbiased for the value and the gradient of :math:`\mathbb{E}_q[\ell]`,
    with :math:`b` a running mean of the sampled losses :math:`\ell(n, z')`
    (kept, not reset to 0 as in the research code).  Two decoder rows per
    example (one when K = 1).  The reported loss is the first two terms.
    When :math:`q^\star = 1` the sampled term has weight 0 (and no NaN).
    Categorical latent only.

    Parameters
    ----------
    baseline : {"ema", "cumulative"}, default "ema"
    decay : float, default 0.99
        As in :class:`ScoreFunction`.
    """

    latents = ("categorical",)

    def _estimate(
        self, scores: torch.Tensor, loss_fn: _CheckedLoss, baseline_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rows = scores.shape[0]
        examples = _examples(scores)
        log_probs = torch.log_softmax(scores, dim=-1)
        probs = log_probs.exp()
        top = probs.detach().argmax(-1)
        is_top = F.one_hot(top, self.size).bool()
        top_prob = probs.gather(-1, top[:, None]).squeeze(-1)
        entropy = self._entropy(scores)
        if self.size == 1:
            losses = loss_fn(examples, _one_hot(top, self.size, scores.dtype))
            estimate = top_prob * losses
            return estimate, estimate, entropy, _support_of(rows, 1, scores), None

        rest_scores = scores.masked_fill(is_top, -math.inf)
        has_rest = torch.isfinite(rest_scores).any(-1)
        # Rows whose other categories all have probability 0 (-inf scores)
        # sample from a placeholder distribution; their weight is 0.
        rest_scores = torch.where(has_rest[:, None], rest_scores, torch.zeros_like(rest_scores))
        rest_log_probs = torch.log_softmax(rest_scores, dim=-1)
        sample = torch.multinomial(rest_log_probs.detach().exp(), 1).squeeze(-1)
        rest_log_prob = rest_log_probs.gather(-1, sample[:, None]).squeeze(-1)
        # 1 - q*, summed over the other categories for accuracy near q* = 1.
        rest_weight = torch.where(is_top, torch.zeros_like(probs), probs).sum(-1)
        rest_weight = torch.where(has_rest, rest_weight, torch.zeros_like(rest_weight))

        both = torch.cat([top, sample])
        losses = loss_fn(torch.cat([examples, examples]), _one_hot(both, self.size, scores.dtype))
        top_loss, rest_loss = losses[:rows], losses[rows:]
        baseline = self._baseline_value(rest_loss)
        estimate = top_prob * top_loss + rest_weight * rest_loss
        per_example = estimate + _score_term(rest_weight * (rest_loss - baseline), rest_log_prob)
        self._update_baseline(rest_loss)
        return per_example, estimate, entropy, _support_of(rows, 2, scores), None


# --------------------------------------------------------------------------
# Continuous relaxations.


class _Relaxed(Estimator):
    r"""Gumbel relaxations with an annealed temperature kept in buffers.

    The temperature of a training step is
    :math:`\tau = \max(\tau_{\min}, \tau_0 \exp(-r\, s))` where :math:`s`
    is the step rounded down to a multiple of ``anneal_every`` (the research
    code's signaling game updates it every 1,000 steps); the buffers
    ``step`` (training steps taken) and ``temperature`` (the last
    temperature used) are saved in the state dict.  In evaluation mode
    (``module.eval()``) no step is taken and the stored temperature is used.
    """

    step: torch.Tensor
    temperature: torch.Tensor

    def __init__(
        self,
        latent: str,
        size: int,
        *,
        tau0: float = 1.0,
        tau_min: float = 0.5,
        anneal_rate: float = 3e-5,
        anneal_every: int = 1,
        **options: Any,
    ) -> None:
        super().__init__(latent, size, **options)
        self.tau0 = _check_positive(tau0, "tau0")
        self.tau_min = _check_positive(tau_min, "tau_min")
        self.anneal_rate = _check_positive(anneal_rate, "anneal_rate", allow_zero=True)
        self.anneal_every = _check_int(anneal_every, "anneal_every", minimum=1)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("temperature", torch.tensor(self.tau0))

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, tau0={self.tau0}, tau_min={self.tau_min}, "
            f"anneal_rate={self.anneal_rate}, anneal_every={self.anneal_every}"
        )

    @torch.no_grad()
    def _next_temperature(self) -> None:
        if not self.training:
            return
        step = (self.step - self.step % self.anneal_every).to(self.temperature.dtype)
        annealed = self.tau0 * torch.exp(-self.anneal_rate * step)
        self.temperature.copy_(annealed.clamp_min(self.tau_min))
        self.step.add_(1)

    def _relaxed_sample(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(relaxed, hard)``: the relaxed sample and the hard one of the same noise."""
        self._next_temperature()
        temperature = self.temperature.detach().to(dtype=scores.dtype, device=scores.device)
        if self.latent == "categorical":
            perturbed = scores + _standard_gumbel(scores)
            relaxed = torch.softmax(perturbed / temperature, dim=-1)
            hard = _one_hot(perturbed.detach().argmax(-1), self.size, scores.dtype)
        else:
            # Logistic noise: the difference of two standard Gumbels.
            perturbed = scores + (_standard_gumbel(scores) - _standard_gumbel(scores))
            relaxed = torch.sigmoid(perturbed / temperature)
            hard = (perturbed.detach() > 0).to(scores.dtype)
        return relaxed, hard

    def _decode(self, relaxed: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _estimate(
        self, scores: torch.Tensor, loss_fn: _CheckedLoss, baseline_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        relaxed, hard = self._relaxed_sample(scores)
        losses = loss_fn(_examples(scores), self._decode(relaxed, hard))
        support = _support_of(scores.shape[0], 1, scores)
        return losses, losses, self._entropy(scores), support, None


class GumbelSoftmax(_Relaxed):
    r"""Gumbel-Softmax (categorical) or relaxed Bernoulli (bit-vector) samples.

    ``loss_fn`` receives the relaxed sample
    :math:`\operatorname{softmax}((s + g) / \tau)` with Gumbel noise
    :math:`g`, or :math:`\sigma((t + L) / \tau)` with logistic noise
    :math:`L`; the gradient is pathwise, biased, and the bias vanishes as
    :math:`\tau \to 0`.  The loss must accept relaxed (soft) ``z``.

    Parameters
    ----------
    tau0 : float, default 1.0
        Initial temperature.
    tau_min : float, default 0.5
        Smallest temperature.
    anneal_rate : float, default 3e-5
        ``tau = max(tau_min, tau0 * exp(-anneal_rate * step))`` at each
        training step (the schedule of Jang et al., 2017); 0 keeps
        ``tau0``.  ``step`` and ``temperature`` are buffers.
    anneal_every : int, default 1
        ``step`` is rounded down to a multiple of it: the temperature
        changes every ``anneal_every`` steps (1: every step).
    """

    def _decode(self, relaxed: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        return relaxed


class StraightThroughGumbel(_Relaxed):
    r"""Straight-through Gumbel: a hard sample forward, the relaxed gradient backward.

    The forward value is exactly the one-hot :math:`e_{\arg\max(s + g)}`
    (categorical) or the bits :math:`\mathbb{1}[t + L > 0]` (bit-vector): a
    sample of :math:`q` from the same noise as the relaxed sample, whose
    gradient is used backward.  Temperature options as in
    :class:`GumbelSoftmax`.
    """

    def _decode(self, relaxed: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        # ``relaxed - relaxed.detach()`` is exactly 0 in value, so the forward
        # value is exactly ``hard``; its gradient is the relaxed one.
        return hard + (relaxed - relaxed.detach())


# --------------------------------------------------------------------------
# The factory.

_CATEGORICAL_CLASSES: dict[str, type[Estimator]] = {
    "dense": DenseMarginalization,
    "sparsemax": SparsemaxMarginalization,
    "sfe": ScoreFunction,
    "sfe_plus": SelfCriticScoreFunction,
    "nvil": NVIL,
    "sum_and_sample": SumAndSample,
    "gumbel": GumbelSoftmax,
    "st_gumbel": StraightThroughGumbel,
}
_BITVECTOR_CLASSES: dict[str, type[Estimator]] = {
    "sfe": ScoreFunction,
    "sfe_plus": SelfCriticScoreFunction,
    "nvil": NVIL,
    "gumbel": GumbelSoftmax,
    "st_gumbel": StraightThroughGumbel,
    "topk_sparsemax": TopKSparsemaxMarginalization,
    "sparsemap": SparseMAPMarginalization,
    "sparsemap_budget": SparseMAPMarginalization,
}


def make_estimator(name: str, *, latent: str = "categorical", size: int, **options: Any) -> Estimator:
    """Build the estimator called ``name`` for a latent variable.

    Parameters
    ----------
    name : str
        One of ``ESTIMATORS[latent]``: for ``"categorical"``, ``"dense"``,
        ``"sparsemax"``, ``"sfe"``, ``"sfe_plus"``, ``"nvil"``,
        ``"sum_and_sample"``, ``"gumbel"``, ``"st_gumbel"``; for
        ``"bitvector"``, ``"sfe"``, ``"sfe_plus"``, ``"nvil"``, ``"gumbel"``,
        ``"st_gumbel"``, ``"topk_sparsemax"``, ``"sparsemap"``,
        ``"sparsemap_budget"``.
    latent : {"categorical", "bitvector"}, default "categorical"
    size : int
        K categories or D bits.
    **options
        Passed to the estimator's class: ``entropy_weight`` (default 0.0)
        and ``check_nan`` for all; ``baseline`` ("ema" or "cumulative") and
        ``decay`` (0.99) for "sfe" and "sum_and_sample"; ``baseline_features``
        (required), ``hidden`` (128), ``centering`` (True) and ``decay`` for
        "nvil"; ``tau0`` (1.0), ``tau_min`` (0.5), ``anneal_rate`` (3e-5),
        ``anneal_every`` (1) for "gumbel" and "st_gumbel"; ``k`` (10) for "topk_sparsemax";
        ``scoring`` ("paper" or "standard", default "paper"), ``max_iter``,
        ``tol``, ``max_active`` for the SparseMAP ones and ``budget``
        (default ``size // 2``) for "sparsemap_budget".

    Returns
    -------
    Estimator

    Examples
    --------
    >>> from experiments.estimators import make_estimator
    >>> make_estimator("sparsemap_budget", latent="bitvector", size=8).budget
    4
    >>> make_estimator("sfe", size=10, baseline="cumulative").baseline_kind
    'cumulative'
    """
    if latent not in ESTIMATORS:
        raise ValueError(f"latent must be one of {', '.join(map(repr, ESTIMATORS))}, got {latent!r}")
    classes = _CATEGORICAL_CLASSES if latent == "categorical" else _BITVECTOR_CLASSES
    if name not in classes:
        raise ValueError(
            f"unknown estimator {name!r} for a {latent} latent; valid names: {', '.join(ESTIMATORS[latent])}"
        )
    size = _check_int(size, "size", minimum=1)
    if name == "sparsemap_budget":
        options.setdefault("budget", size // 2)
    elif name == "sparsemap" and options.get("budget") is not None:
        raise ValueError("'sparsemap' takes no budget; use 'sparsemap_budget'")
    return classes[name](latent, size, **options)
