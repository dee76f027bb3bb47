r"""The bit-vector VAE of the paper's section 5.3, with every bit-vector estimator.

A VAE with a latent bit-vector :math:`z \in \{0, 1\}^D` under a uniform prior
:math:`p(z) = 2^{-D}`, on Fashion-MNIST (raw pixel bytes as 784 targets of
256 classes):

* encoder: ``784 -> 128 (ReLU) -> D`` scores from ``x / 255``;
* decoder: ``D -> 128 (ReLU) -> 784 * 5``, reshaped to ``(784, 5)``, then a
  ``Linear(5 -> 256)`` shared by the pixels gives each pixel's 256 logits;
* objective: :math:`\mathbb{E}_q[-\log p(x \mid z)] - \mathbb{H}(q)`, the
  negative ELBO up to the constant :math:`D \log 2`.

Metrics on a split: negative ELBO, rate :math:`D \log 2 - \mathbb{H}(q)`
(the KL to the prior), distortion :math:`\mathbb{E}_q[-\log p(x \mid z)]`
(nats), and the negative log-likelihood in bits per dimension by importance
sampling (:func:`log_likelihood`).  Every training step records the rows
really decoded per example.

Run ``python -m experiments.bitvector_vae --help`` for the options, e.g.::

    python -m experiments.bitvector_vae --method sparsemap --bits 32 --epochs 100
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from experiments import distributed, harness
from experiments.data import DataError
from experiments.estimators import BITVECTOR_ESTIMATORS, Estimator, EstimatorOutput, make_estimator

__all__ = [
    "PAPER_BITS_PER_DIM",
    "SMALL_BUDGET",
    "TABLE_COLUMNS",
    "BitVectorConfig",
    "BitVectorExperiment",
    "BitVectorVAE",
    "check_config",
    "default_lr",
    "exact_log_likelihood",
    "log_likelihood",
    "main",
]

PIXELS = 784
LEVELS = 256
#: Sparse methods: exact marginalization over a structured sparse distribution.
SPARSE_METHODS = ("topk_sparsemax", "sparsemap", "sparsemap_budget")
#: The paper's reported test NLL in bits/dim, (D = 32, D = 128) (EXPERIMENTS.md).
PAPER_BITS_PER_DIM = {
    "sfe": (3.74, 3.77),
    "sfe_plus": (3.61, 3.59),
    "nvil": (3.65, 3.60),
    "gumbel": (3.57, 3.49),
    "st_gumbel": (3.53, 3.55),
    "topk_sparsemax": (3.62, 3.61),
    "sparsemap": (3.72, 3.67),
    "sparsemap_budget": (3.64, 3.66),
}


#: The comparison table's columns: (header, test metric, format).
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("NLL (bits/dim)", "nll_bits_per_dim", "{:.3f}"),
    ("neg. ELBO (nats)", "negative_elbo", "{:.1f}"),
    ("rate (nats)", "rate", "{:.2f}"),
    ("distortion (nats)", "distortion", "{:.1f}"),
)
#: Config overrides of ``python -m experiments.compare bitvector``'s default
#: budget: every method in about 10 minutes on a 2-core CPU.
SMALL_BUDGET: dict[str, Any] = {
    "epochs": 2,
    "max_train_examples": 3000,
    "max_eval_examples": 300,
    "importance_samples": 64,
    "eval_samples": 4,
}


def default_lr(method: str, bits: int) -> float:
    """The paper's learning rate for ``method`` (EXPERIMENTS.md)."""
    if method == "topk_sparsemax":
        return 2e-3 if bits <= 32 else 1e-3
    if method in ("sparsemap", "sparsemap_budget"):
        return 2e-3
    return 1e-3


@dataclasses.dataclass
class BitVectorConfig(harness.RunConfig):
    """Bit-vector VAE settings (defaults: the paper's, except where noted).

    Attributes
    ----------
    bits : int
        D, the latent bits (the paper: 32 and 128).
    dataset : str
        ``fashion-mnist`` (the paper's), ``mnist``, or ``synthetic`` (small
        generated images, for tests and smoke runs).
    synthetic_size : int
        Training images of the ``synthetic`` data set.
    valid_size : int
        Images at the end of the training set kept for validation.
    k : int
        Structures kept by top-k sparsemax.
    budget : int or None
        SparseMAP's budget B (``None``: D / 2).
    scoring : str
        SparseMAP scoring: ``paper`` ((t + 1) / 2, the research code's on/off
        convention) or ``standard``.
    hidden : int
        Hidden units of the encoder and of the decoder.
    entropy_weight : float
        Weight of the entropy term (1: the ELBO).
    importance_samples : int
        Samples per test image for the NLL (the paper: 1024).
    eval_samples : int
        Samples of q per image for the ELBO of the sampling methods
        (sparse methods are exact).
    eval_batch_size : int
        Images per evaluation batch.
    """

    method: str = "sparsemap"
    epochs: int = 100
    bits: int = 32
    dataset: str = "fashion-mnist"
    synthetic_size: int = 512
    valid_size: int = 5000
    k: int = 10
    budget: int | None = None
    scoring: str = "paper"
    hidden: int = 128
    entropy_weight: float = 1.0
    importance_samples: int = 1024
    eval_samples: int = 16
    eval_batch_size: int = 100
    out_dir: str = "runs/bitvector_vae"


class Decoder(torch.nn.Module):
    """``D -> hidden (ReLU) -> 784 * 5``, then a shared ``Linear(5 -> 256)`` per pixel."""

    def __init__(self, bits: int, hidden: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(bits, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, PIXELS * 5)
        )
        self.pixel = torch.nn.Linear(5, LEVELS)

    def negative_log_likelihood(self, z: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``-log p(x | z)`` in nats, shape (P,), for codes (P, D) and byte images (P, 784)."""
        features = self.body(z).reshape(z.shape[0], PIXELS, 5)
        logits = self.pixel(features)
        nll = F.cross_entropy(logits.reshape(-1, LEVELS), images.reshape(-1), reduction="none")
        return nll.reshape(z.shape[0], PIXELS).sum(-1)


class BitVectorVAE(torch.nn.Module):
    """Encoder, decoder and gradient estimator (its state is saved with the model)."""

    def __init__(self, config: BitVectorConfig) -> None:
        super().__init__()
        self.bits = config.bits
        self.method = config.method
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(PIXELS, config.hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(config.hidden, config.bits),
        )
        self.decoder = Decoder(config.bits, config.hidden)
        options: dict[str, Any] = {"entropy_weight": config.entropy_weight}
        if config.method == "topk_sparsemax":
            options["k"] = config.k
        if config.method in ("sparsemap", "sparsemap_budget"):
            options["scoring"] = config.scoring
        if config.method == "sparsemap_budget":
            options["budget"] = config.bits // 2 if config.budget is None else config.budget
        if config.method == "nvil":
            options["baseline_features"] = PIXELS
        self.estimator: Estimator = make_estimator(
            config.method, latent="bitvector", size=config.bits, **options
        )

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images.to(torch.get_default_dtype()) / 255.0)

    def loss_fn(self, images: torch.Tensor) -> Any:
        """The estimators' ``loss_fn(example, z)``: ``-log p(x_example | z)``."""

        def loss(example: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return self.decoder.negative_log_likelihood(z, images[example])

        return loss

    def is_sparse(self) -> bool:
        """Whether q is a structured sparse distribution (marginalized exactly)."""
        return self.method in SPARSE_METHODS

    def distribution(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, atoms)`` of a sparse method's q."""
        return self.estimator.distribution(scores)  # type: ignore[operator,no-any-return]


def _bernoulli_log_prob(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    return -F.binary_cross_entropy_with_logits(logits, bits, reduction="none").sum(-1)


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


@torch.no_grad()
def log_likelihood(
    model: BitVectorVAE, images: torch.Tensor, samples: int, chunk_rows: int = 512
) -> torch.Tensor:
    r"""Importance-sampling estimate of :math:`\log p(x)` (nats) per image, shape (N,).

    For a sampling method the proposal is the encoder's factorized
    Bernoulli :math:`q`:
    :math:`\log \frac{1}{S} \sum_s p(x \mid z_s)\, p(z_s) / q(z_s)`.  A
    sparse :math:`q` has no mass off its support, so its support is summed
    exactly and the rest of the structures is estimated with ``samples``
    draws from the uniform prior (draws that fall in the support count 0):
    :math:`\sum_{z \in S} p(z)\, p(x \mid z) + \frac{1}{S} \sum_s
    p(x \mid z_s)\, [z_s \notin S]`.  Decoder rows are processed
    ``chunk_rows`` at a time.
    """
    count, bits = images.shape[0], model.bits
    if count == 0:
        return torch.zeros(0, device=images.device)
    log_prior = -bits * math.log(2.0)
    scores = model.scores(images)
    per_chunk = max(1, chunk_rows // count)
    if model.is_sparse():
        probs, atoms = model.distribution(scores)
        on_support = probs > 0
        example, slot = torch.nonzero(on_support, as_tuple=True)
        exact = torch.full(probs.shape, -math.inf, dtype=scores.dtype, device=images.device)
        exact[example, slot] = log_prior - model.decoder.negative_log_likelihood(
            atoms[example, slot], images[example]
        )
        exact_part = torch.logsumexp(exact, -1)
    log_weights = []
    for start, stop in _chunks(samples, per_chunk):
        draws = stop - start
        repeated = images.repeat_interleave(draws, 0)
        if model.is_sparse():
            z = torch.bernoulli(
                torch.full((count, draws, bits), 0.5, dtype=scores.dtype, device=images.device)
            )
            nll = model.decoder.negative_log_likelihood(z.reshape(-1, bits), repeated).reshape(count, draws)
            inside = ((z[:, :, None, :] == atoms[:, None]).all(-1) & on_support[:, None]).any(-1)
            log_weights.append((-nll).masked_fill(inside, -math.inf))
        else:
            logits = scores.repeat_interleave(draws, 0)
            z = torch.bernoulli(torch.sigmoid(logits))
            nll = model.decoder.negative_log_likelihood(z, repeated)
            log_weight = -nll + log_prior - _bernoulli_log_prob(logits, z)
            log_weights.append(log_weight.reshape(count, draws))
    estimate = torch.logsumexp(torch.cat(log_weights, -1), -1) - math.log(samples)
    if model.is_sparse():
        estimate = torch.logaddexp(exact_part, estimate)
    return estimate


@torch.no_grad()
def exact_log_likelihood(model: BitVectorVAE, images: torch.Tensor) -> torch.Tensor:
    """:math:`\\log p(x)` by enumerating all :math:`2^D` codes (small D only), shape (N,)."""
    bits = model.bits
    if bits > 16:
        raise ValueError(f"exact_log_likelihood enumerates 2^D codes: D = {bits} is too large")
    codes = torch.tensor(
        [[(index >> bit) & 1 for bit in range(bits)] for index in range(2**bits)],
        dtype=torch.get_default_dtype(),
        device=images.device,
    )
    out = []
    for n in range(images.shape[0]):
        nll = model.decoder.negative_log_likelihood(codes, images[n : n + 1].expand(codes.shape[0], -1))
        out.append(torch.logsumexp(-nll, 0) - bits * math.log(2.0))
    return torch.stack(out)


def synthetic_images(count: int, seed: int) -> np.ndarray:
    """Byte images (count, 784) drawn around 8 random prototypes: learnable, tiny, offline."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(8, PIXELS))
    labels = rng.integers(0, 8, size=count)
    noise = rng.integers(-12, 13, size=(count, PIXELS))
    return np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)


#: The data sets and SparseMAP scorings offered on the command line.
DATASETS = ("fashion-mnist", "mnist", "synthetic")
SCORINGS = ("paper", "standard")


def check_config(config: BitVectorConfig) -> None:
    """Refuse settings no run can use, naming the option.

    Raises
    ------
    ValueError
        For an unknown method, data set or scoring, or a size out of range.
    """
    harness.check_run_config(config)
    harness.check_fields(
        config,
        choices={"method": BITVECTOR_ESTIMATORS, "dataset": DATASETS, "scoring": SCORINGS},
        at_least={
            **dict.fromkeys(
                (
                    "bits",
                    "k",
                    "hidden",
                    "importance_samples",
                    "eval_samples",
                    "eval_batch_size",
                    "synthetic_size",
                ),
                1,
            ),
            "valid_size": 0,
            "entropy_weight": 0,
        },
    )
    if config.budget is not None and not 1 <= config.budget <= config.bits:
        raise ValueError(f"--budget must be in [1, --bits = {config.bits}] or none, got {config.budget}")


class BitVectorExperiment:
    """The bit-vector VAE behind the harness's :class:`~experiments.harness.Experiment` protocol."""

    #: Under torchrun every process evaluates its part of the images (the
    #: test likelihood's importance samples are most of a short run's time).
    shares_evaluation = True

    def __init__(self, config: BitVectorConfig) -> None:
        check_config(config)
        self.config = config
        self.device = harness.resolve_device(config.device)
        harness.seed_everything(config.seed)
        self.data = self._load_data()
        self.model = BitVectorVAE(config).to(self.device)
        lr = default_lr(config.method, config.bits) if config.lr is None else config.lr
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def _load_data(self) -> dict[str, torch.Tensor]:
        config = self.config
        if config.dataset == "synthetic":
            images = synthetic_images(config.synthetic_size + 2 * 128, seed=1234)
            splits = {
                "train": images[: config.synthetic_size],
                "valid": images[config.synthetic_size : config.synthetic_size + 128],
                "test": images[config.synthetic_size + 128 :],
            }
        else:
            from experiments import data

            loaded = data.load_splits(
                config.dataset, config.data_dir, valid_size=config.valid_size, flatten=True
            )
            splits = {name: split.images for name, split in loaded.items()}
        limits = {"train": config.max_train_examples}
        limits["valid"] = limits["test"] = config.max_eval_examples
        return {
            name: torch.as_tensor(images[: limits[name]].astype(np.int64), device=self.device)
            for name, images in splits.items()
        }

    def train_batches(self, generator: torch.Generator) -> Sequence[torch.Tensor]:
        count = self.data["train"].shape[0]
        order = torch.randperm(count, generator=generator)
        return [order[start:stop] for start, stop in _chunks(count, self.config.batch_size)]

    def train_step(self, batch: torch.Tensor, epoch: int) -> dict[str, Any]:
        images = self.data["train"][batch.to(self.device)]
        out = distributed.forward(self.model, self._estimate, images)
        self.optimizer.zero_grad(set_to_none=True)
        out.surrogate.backward()
        self.optimizer.step()
        negative_elbo = out.loss - out.entropy + self.model.bits * math.log(2.0)
        return {"loss": float(negative_elbo.mean()), "calls": out.decoder_calls, "support": out.support}

    def _estimate(self, images: torch.Tensor) -> EstimatorOutput:
        """The estimator's output on a batch (the computation a training step backpropagates)."""
        scores = self.model.scores(images)
        return self.model.estimator(  # type: ignore[no-any-return]
            scores, self.model.loss_fn(images), baseline_input=images.to(scores.dtype) / 255.0
        )

    @torch.no_grad()
    def evaluate(self, split: str, *, samples: int | None = None) -> dict[str, float]:
        """Negative ELBO, rate, distortion (nats), NLL (bits/dim) and mean support on ``split``.

        The NLL uses ``importance_samples`` (or ``samples``) per image on the
        test split; validation reports the ELBO only (cheaper).
        """
        config = self.config
        model = self.model
        images_all = self.data[split]
        distortion, entropy, support, log_px = [], [], [], []
        # Under torchrun every process evaluates every so-many chunk (see shares_evaluation).
        process, processes = distributed.sharing()
        for start, stop in _chunks(images_all.shape[0], config.eval_batch_size)[process::processes]:
            images = images_all[start:stop]
            scores = model.scores(images)
            if model.is_sparse():
                probs, atoms = model.distribution(scores)
                example, slot = torch.nonzero(probs, as_tuple=True)
                nll = model.decoder.negative_log_likelihood(atoms[example, slot], images[example])
                expected = torch.zeros(images.shape[0], dtype=nll.dtype, device=nll.device)
                distortion.append(expected.index_add(0, example, probs[example, slot] * nll))
                entropy.append(torch.special.entr(probs).sum(-1))
                support.append((probs > 0).sum(-1).to(nll.dtype))
            else:
                repeated = scores.repeat_interleave(config.eval_samples, 0)
                z = torch.bernoulli(torch.sigmoid(repeated))
                nll = model.decoder.negative_log_likelihood(
                    z, images.repeat_interleave(config.eval_samples, 0)
                )
                distortion.append(nll.reshape(images.shape[0], config.eval_samples).mean(-1))
                probs_on = torch.sigmoid(scores)
                entropy.append((torch.special.entr(probs_on) + torch.special.entr(1 - probs_on)).sum(-1))
                support.append(torch.ones(images.shape[0], dtype=nll.dtype, device=nll.device))
            if split == "test":
                log_px.append(log_likelihood(model, images, samples or config.importance_samples))
        distortion_mean = float(distributed.gather_rows(distortion).mean())
        entropy_mean = float(distributed.gather_rows(entropy).mean())
        rate = model.bits * math.log(2.0) - entropy_mean
        metrics = {
            "negative_elbo": distortion_mean + rate,
            "rate": rate,
            "distortion": distortion_mean,
            "support_mean": float(distributed.gather_rows(support).mean()),
        }
        if split == "test":
            log_px_all = distributed.gather_rows(log_px)
            metrics["nll_bits_per_dim"] = float(-log_px_all.mean() / (PIXELS * math.log(2.0)))
        return metrics


def run(config: BitVectorConfig) -> dict[str, Any]:
    """Train and evaluate one method; writes metrics, checkpoint, result and plots to ``out_dir``."""
    from experiments import plots

    experiment = BitVectorExperiment(config)
    result = harness.train(experiment, config)
    if distributed.is_main_process():
        plots.run_plots(result, config.out_dir)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    # The decoder's (rows, 784, 256) logits are allocated and freed at every step.
    harness.reuse_freed_memory()
    config = harness.parse_config(
        BitVectorConfig,
        argv,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        choices={"method": BITVECTOR_ESTIMATORS, "dataset": DATASETS, "scoring": SCORINGS},
        check=check_config,
    )
    try:
        result = run(config)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not distributed.is_main_process():
        return 0
    test = result["test"]
    print(
        f"{config.method}: test NLL {test.get('nll_bits_per_dim', float('nan')):.3f} bits/dim, "
        f"negative ELBO {test['negative_elbo']:.1f}, rate {test['rate']:.2f}, "
        f"distortion {test['distortion']:.1f} nats; results in {config.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
