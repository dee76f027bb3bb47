r"""The semi-supervised VAE of the paper's section 5.1 (Kingma et al.'s M2), with every categorical estimator.

A generative model :math:`p(y)\, p(h)\, p(x \mid h, y)` of binarized digits
with a class :math:`y \in \{1, \dots, 10\}` under a uniform prior and a
continuous code :math:`h \in \mathbb{R}^8` under :math:`\mathcal{N}(0, I)`,
trained with 10% of the training labels:

* classifier :math:`q(y \mid x)`: ``784 -> 256 -> 256 -> 256 -> 10`` (ReLU);
  its logits are the estimators' ``scores``;
* inference network :math:`q(h \mid x, y)`: ``(784 + 10) -> 128 -> 128``
  (ReLU), then the mean and the log standard deviation of a diagonal
  Gaussian over :math:`h \in \mathbb{R}^8`;
* generative network :math:`p(x \mid h, y)`: ``(8 + 10) -> 128 -> 128
  (ReLU) -> 784`` Bernoulli logits.

(Two hidden layers each, as in the research code; the paper's appendix B
reads as one, ``--hidden-layers 1``.)  NVIL's baseline network is the
research code's ``784 -> 512 -> 512 -> 512 -> 1``.

Learning rates.  The classifier :math:`q(y \mid x)` and the rest of the
model are two parameter groups of one Adam optimizer.  ``--lr`` (default:
the paper's per method) sets the rest; ``--classifier-lr`` the classifier.
Its default, ``--lr-setting stable``, is 1e-4 for every method: at the
paper's 1e-3 the one-sample score-function estimators (NVIL,
sum-and-sample, SFE) collapse the classifier on Fashion-MNIST (its
predictions fall onto a few classes within a few hundred steps: the
expected loss varies across images by tens of nats where the classes of one
image differ by a few, so their learning signal is mostly per-image noise,
and the unlabeled term's gradient reaching the classifier is 30 to 60
times the supervised one).  ``--lr-setting paper`` trains the classifier
at ``--lr`` like the rest, as the paper did.  The warm start trains both
groups at ``--warmup-lr``.

Per-example losses (nats), with :math:`K = 10` and one reparameterized
sample of :math:`h` per (example, class):

.. math::

    \ell(x, y) &= \operatorname{BCE}(x \mid h, y)
        + \operatorname{KL}(q(h \mid x, y) \,\|\, \mathcal{N}(0, I)), \\
    \mathcal{U}(x) &= \mathbb{E}_{q(y \mid x)}[\ell(x, y)] - \mathbb{H}(q(y \mid x)) + \log K, \\
    \mathcal{L}(x, y) &= \ell(x, y) + \log K + \alpha\, \operatorname{CE}(q(\cdot \mid x), y),

the unlabeled and the labeled negative ELBOs (``+ log K`` is
:math:`-\log p(y)`, a constant), and the classification loss
:math:`\operatorname{CE}`: the cross-entropy of the softmax for the
softmax-based methods, the sparsemax loss (:func:`sparsemax_loss`) for
sparsemax, whose :math:`q` has zeros.  A training step takes a batch of
``batch_size`` labeled and ``batch_size`` unlabeled images and minimizes

.. math::

    \operatorname{mean}_{\text{labeled}} \mathcal{L}
    + w \operatorname{mean}_{\text{unlabeled}} \mathcal{U},
    \qquad w = 9 \ (\texttt{unlabeled\_weight}),

as EXPERIMENTS.md states (9 = 45,000 unlabeled / 5,000 labeled images: each
batch mean then stands for its share of the whole training set).  The
expectation over :math:`y` in :math:`\mathcal{U}` is the estimator's
(``make_estimator(method, latent="categorical", size=10,
entropy_weight=1)``): exact over all 10 classes (dense), exact over the
support of sparsemax, or a sampled estimate.  An optional warm start of
``warmup_epochs`` epochs on the labeled images alone (the paper: 100 at
lr 1e-3) precedes the ``epochs`` semi-supervised epochs; it is a run of its
own in ``out_dir/warmup``.

Decoder calls: every step reports, as ``support``, the classes decoded per
*unlabeled* example (10 for dense, the support size for sparsemax, 1 for
SFE, NVIL and the Gumbel estimators, 2 for SFE+ and sum-and-sample: the
paper's "decoder calls"), and as ``calls`` every row really decoded,
including the one row per *labeled* example (its true class).  So the
harness's ``calls_*`` columns are the paper's decoder calls and
``rows_decoded_per_example`` is ``calls / unlabeled examples``, i.e. the
paper's count plus 1 at equal labeled and unlabeled batches.  During the
warm start only labeled rows are decoded, one per example.

Metrics of a split (validation after each epoch, test at the end):
``accuracy_percent`` (argmax of :math:`q(y \mid x)`), ``negative_elbo``
(:math:`\mathcal{U}` with the expectation summed exactly over the classes
to which the method's :math:`q` gives a nonzero probability: softmax for
the softmax-based methods, sparsemax for sparsemax), ``support_mean``
(those classes per example) and, for sparsemax, ``batch_union_support_mean``
(the research code's count: it decoded a whole batch of ``batch_size`` for
every class any of its examples used).  Evaluation images are binarized
once by a fixed generator and the evaluation's :math:`h` samples come from
a generator seeded anew at every evaluation, so the metrics of different
epochs and methods use the same draws and evaluation never moves the
training's random state.  Training images are binarized afresh at every
access from torch's global generator (saved in checkpoints: resuming is
exact).

Run ``python -m experiments.ssvae --help`` for the options, e.g.::

    python -m experiments.ssvae --method sparsemax --epochs 200 --warmup-epochs 100

``--dataset mnist`` (the paper's, the default) falls back to Fashion-MNIST
with a notice when MNIST is neither found nor downloadable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sparsecore_torch
import torch
import torch.nn.functional as F

from experiments import data, distributed, harness
from experiments.estimators import CATEGORICAL_ESTIMATORS, Estimator, make_estimator

__all__ = [
    "PAPER_ACCURACY",
    "SMALL_BUDGET",
    "TABLE_COLUMNS",
    "SemiSupervisedConfig",
    "SemiSupervisedData",
    "SemiSupervisedExperiment",
    "SemiSupervisedVAE",
    "check_config",
    "classification_loss",
    "classifier_lr",
    "default_lr",
    "load_data",
    "main",
    "notices_once",
    "run",
    "sparsemax_loss",
    "synthetic_digits",
    "warmup_config",
]

PIXELS = 784
CLASSES = 10
DATASETS = ("mnist", "fashion-mnist", "synthetic")
#: The phases of a run: the optional warm start on labeled images, then semi-supervised training.
PHASES = ("warmup", "semi-supervised")
WARMUP_DIR = "warmup"
#: Seeds of the generators that binarize the evaluation images and draw the evaluation's h.
EVAL_BINARIZE_SEED = 20_140_511
EVAL_NOISE_SEED = 5_001

#: The paper's test accuracy (%) and decoder calls per example, per method (EXPERIMENTS.md).
PAPER_ACCURACY: dict[str, tuple[float, float]] = {
    "sfe": (94.75, 1.0),
    "sfe_plus": (96.53, 2.0),
    "nvil": (96.01, 1.0),
    "sum_and_sample": (96.73, 2.0),
    "gumbel": (95.46, 1.0),
    "st_gumbel": (86.35, 1.0),
    "dense": (96.93, 10.0),
    "sparsemax": (96.87, 1.01),
}

#: Columns of the comparison table: (header, test metric key, format).
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("accuracy (%)", "accuracy_percent", "{:.2f}"),
    ("neg. ELBO (nats)", "negative_elbo", "{:.1f}"),
    ("test support", "support_mean", "{:.2f}"),
)

#: Config overrides with which the eight methods together train and evaluate on
#: Fashion-MNIST in about 4 minutes on a 2-core CPU with one torch thread (the
#: paper's 5,000 labeled and 45,000 unlabeled images, 5 warm-start epochs, 2
#: semi-supervised epochs, the first 2,000 validation and test images).
SMALL_BUDGET: dict[str, Any] = {
    "epochs": 2,
    "warmup_epochs": 5,
    "max_eval_examples": 2_000,
}


#: The classifier's learning rate under ``lr_setting="stable"``.
STABLE_CLASSIFIER_LR = 1e-4
#: ``--lr-setting``: the classifier at 1e-4, or at the paper's rate like the rest.
LR_SETTINGS = ("stable", "paper")


def default_lr(method: str) -> float:
    """The paper's learning rate for ``method`` (EXPERIMENTS.md).

    Examples
    --------
    >>> default_lr("sparsemax"), default_lr("sfe_plus"), default_lr("dense")
    (0.0005, 0.0001, 0.001)
    """
    if method == "sparsemax":
        return 5e-4
    if method in ("sfe", "sfe_plus"):
        return 1e-4
    return 1e-3


@dataclasses.dataclass
class SemiSupervisedConfig(harness.RunConfig):
    """Semi-supervised VAE settings (defaults: the paper's, except where noted).

    Attributes
    ----------
    epochs : int
        Semi-supervised epochs, each one pass over the unlabeled images
        (the labeled ones are cycled); the warm start comes on top.
    batch_size : int
        Labeled images per step, and unlabeled images per step (64 + 64).
    warmup_epochs : int
        Epochs of warm start on the labeled images alone, before the
        semi-supervised epochs (the paper: 100; 0 skips it).
    warmup_lr : float
        Adam's learning rate during the warm start (the paper: 1e-3).
    dataset : str
        ``mnist`` (the paper's; falls back to ``fashion-mnist`` with a
        notice when MNIST cannot be found or downloaded), ``fashion-mnist``,
        or ``synthetic`` (small generated images, for tests and smoke runs).
    download : bool
        Whether to download a data set found nowhere.
    synthetic_size : int
        Training images of the ``synthetic`` data set.
    valid_size : int
        Images at the end of the official training set kept for validation.
    labeled : int or None
        Training images whose label is kept (class-balanced); ``None``: 10%
        of the training images (5,000 of 50,000).
    labeled_seed : int
        Seed of the draw of the labeled images (the same for every method
        and ``seed``, so that runs differ only by the model's randomness).
    unlabeled_weight : float
        w, the weight of the unlabeled batch's mean loss (EXPERIMENTS.md: 9,
        the unlabeled-to-labeled ratio of the full setup).
    classification_weight : float
        The weight of the classification loss in the labeled loss.
    weight_decay : float
        Adam's weight decay.
    classifier_hidden : int
        Units of each of the classifier's three hidden layers.
    hidden : int
        Hidden units of the inference and of the generative network.
    latent_dim : int
        Dimension of the Gaussian code h.
    sfe_baseline : str
        SFE's and sum-and-sample's running baseline: ``ema`` (exponential
        moving average, the default here) or ``cumulative`` (the mean of all
        past losses, what the research code called a moving average).
    eval_batch_size : int
        Images per evaluation batch.
    hidden_layers : int
        Hidden layers of the inference and of the generative network (the
        research code: 2).
    nvil_hidden, nvil_layers : int
        NVIL's baseline network: ``nvil_layers`` hidden ReLU layers of
        ``nvil_hidden`` units (the research code: 3 of 512).
    lr_setting : str
        ``stable`` (the classifier at 1e-4, see the module's notes) or
        ``paper`` (the classifier at ``lr``, like the rest of the model).
    classifier_lr : float or None
        The classifier's learning rate; ``None`` takes ``lr_setting``'s.
    """

    method: str = "sparsemax"
    epochs: int = 200
    warmup_epochs: int = 100
    warmup_lr: float = 1e-3
    dataset: str = "mnist"
    download: bool = True
    synthetic_size: int = 500
    valid_size: int = data.SEMISUPERVISED_VALID_SIZE
    labeled: int | None = None
    labeled_seed: int = 0
    unlabeled_weight: float = 9.0
    classification_weight: float = 1.0
    weight_decay: float = 1e-5
    classifier_hidden: int = 256
    hidden: int = 128
    latent_dim: int = 8
    sfe_baseline: str = "ema"
    eval_batch_size: int = 500
    hidden_layers: int = 2
    nvil_hidden: int = 512
    nvil_layers: int = 3
    lr_setting: str = "stable"
    classifier_lr: float | None = None
    out_dir: str = "runs/ssvae"


# --------------------------------------------------------------------------
# Classification losses.


def sparsemax_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""The sparsemax loss per example (Martins and Astudillo, 2016), shape (N,).

    .. math::

        L(s, y) = \tfrac12 \|e_y - s\|^2 - \tfrac12 \|p - s\|^2,
        \qquad p = \operatorname{sparsemax}(s),
        \qquad \nabla_s L = p - e_y.

    Nonnegative, zero exactly when :math:`p = e_y`, and well defined when
    :math:`p` has zeros (unlike the cross-entropy of :math:`p`).  ``p``
    enters detached: by the envelope theorem its derivative does not
    contribute, so the gradient is exactly :math:`p - e_y`.

    Parameters
    ----------
    scores : torch.Tensor
        Shape (N, K), floating.
    labels : torch.Tensor
        Shape (N,), int64 classes in ``[0, K)``.

    Returns
    -------
    torch.Tensor
        Shape (N,).

    References
    ----------
    Martins and Astudillo, "From Softmax to Sparsemax: A Sparse Model of
    Attention and Multi-Label Classification", ICML 2016.

    Examples
    --------
    >>> import torch
    >>> sparsemax_loss(torch.tensor([[2.0, 0.5, 0.0], [0.5, 0.5, 0.0]]), torch.tensor([0, 2]))
    tensor([0.0000, 0.7500])
    """
    probs = sparsecore_torch.sparsemax(scores.detach(), dim=-1)
    target = F.one_hot(labels, scores.shape[-1]).to(scores.dtype)
    return 0.5 * ((target - scores).pow(2).sum(-1) - (probs - scores).pow(2).sum(-1))


def classification_loss(method: str, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The classification loss of ``method``, shape (N,): sparsemax loss or softmax cross-entropy."""
    if method == "sparsemax":
        return sparsemax_loss(scores, labels)
    return F.cross_entropy(scores, labels, reduction="none")


# --------------------------------------------------------------------------
# The model.


def _mlp(inputs: int, hidden: int, layers: int, outputs: int) -> torch.nn.Sequential:
    """``inputs -> hidden -> ... -> outputs`` with ``layers`` ReLU hidden layers."""
    modules: list[torch.nn.Module] = []
    for before in [inputs] + [hidden] * (layers - 1):
        modules += [torch.nn.Linear(before, hidden), torch.nn.ReLU()]
    return torch.nn.Sequential(*modules, torch.nn.Linear(hidden, outputs))


def classifier_lr(config: SemiSupervisedConfig) -> float:
    """The classifier's learning rate in the semi-supervised phase.

    ``classifier_lr`` when given; else 1e-4 (``lr_setting="stable"``) or
    the rest of the model's rate (``"paper"``).
    """
    if config.classifier_lr is not None:
        return config.classifier_lr
    if config.lr_setting == "paper":
        return default_lr(config.method) if config.lr is None else config.lr
    return STABLE_CLASSIFIER_LR


class SemiSupervisedVAE(torch.nn.Module):
    """Classifier, inference and generative networks, and the estimator (its state is saved too)."""

    def __init__(self, config: SemiSupervisedConfig) -> None:
        super().__init__()
        self.method = config.method
        self.latent_dim = config.latent_dim
        width = config.classifier_hidden
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(PIXELS, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, CLASSES),
        )
        self.encoder = _mlp(PIXELS + CLASSES, config.hidden, config.hidden_layers, 2 * config.latent_dim)
        self.decoder = _mlp(config.latent_dim + CLASSES, config.hidden, config.hidden_layers, PIXELS)
        options: dict[str, Any] = {"entropy_weight": 1.0}
        if config.method in ("sfe", "sum_and_sample"):
            options["baseline"] = config.sfe_baseline
        if config.method == "nvil":
            options["baseline_features"] = PIXELS
            options["hidden"] = (config.nvil_hidden,) * config.nvil_layers
        self.estimator: Estimator = make_estimator(
            config.method, latent="categorical", size=CLASSES, **options
        )

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """The classifier's logits, shape (N, 10), for binarized images (N, 784)."""
        return self.classifier(images)  # type: ignore[no-any-return]

    def distribution(self, scores: torch.Tensor) -> torch.Tensor:
        """q(y | x), shape (N, 10): sparsemax for sparsemax, softmax for every other method."""
        if self.method == "sparsemax":
            return sparsecore_torch.sparsemax(scores, dim=-1)
        return torch.softmax(scores, dim=-1)

    def negative_elbo_given_class(
        self, images: torch.Tensor, classes: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        r"""``BCE(x | h, y) + KL(q(h | x, y) || N(0, I))`` per row, shape (P,).

        Parameters
        ----------
        images : torch.Tensor
            Shape (P, 784), binarized.
        classes : torch.Tensor
            Shape (P, 10): one-hot classes, or relaxed ones (Gumbel-Softmax).
        noise : torch.Tensor, optional
            Shape (P, latent_dim): the standard normal draw of the
            reparameterized :math:`h = \mu + \sigma \epsilon`; drawn from
            torch's global generator when omitted.
        """
        classes = classes.to(images.dtype)
        mean, log_std = self.encoder(torch.cat([images, classes], -1)).chunk(2, dim=-1)
        if noise is None:
            noise = torch.randn_like(mean)
        code = mean + log_std.exp() * noise
        logits = self.decoder(torch.cat([code, classes], -1))
        reconstruction = F.binary_cross_entropy_with_logits(logits, images, reduction="none").sum(-1)
        kl = 0.5 * (mean.pow(2) + (2 * log_std).exp() - 1 - 2 * log_std).sum(-1)
        return reconstruction + kl  # type: ignore[no-any-return]

    def loss_fn(self, images: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The estimators' ``loss_fn(example, y)``: BCE + KL of the rows ``images[example]`` at ``y``."""

        def loss(example: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            return self.negative_elbo_given_class(images[example], classes)

        return loss


# --------------------------------------------------------------------------
# Data.


@dataclasses.dataclass(frozen=True)
class SemiSupervisedData:
    """The images of a run, on the run's device.

    Attributes
    ----------
    dataset : str
        The data set really used (``fashion-mnist`` after a fallback).
    train_images : torch.Tensor
        uint8 (N, 784) pixel bytes, binarized afresh at every access.
    train_labels : torch.Tensor
        int64 (N,); only those of ``labeled`` are used.
    labeled, unlabeled : torch.Tensor
        int64 indices into the training images: the labeled and the
        unlabeled ones.
    eval_images : dict of str to torch.Tensor
        ``valid`` and ``test``: uint8 (M, 784) images of 0/1, binarized once.
    eval_labels : dict of str to torch.Tensor
        ``valid`` and ``test``: int64 (M,).
    """

    dataset: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    labeled: torch.Tensor
    unlabeled: torch.Tensor
    eval_images: dict[str, torch.Tensor]
    eval_labels: dict[str, torch.Tensor]


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: uint8 (count, 784) images of 10 classes, learnable, tiny, offline.

    Each class has a random pattern of bright pixels; an image is its class's
    pattern with per-pixel noise.  Labels cycle through the classes, so every
    class has ``count // 10`` or one more images.
    """
    rng = np.random.default_rng(seed)
    patterns = rng.random((CLASSES, PIXELS)) < 0.3
    labels = rng.permutation(np.arange(count) % CLASSES).astype(np.int64)
    bright = rng.integers(200, 256, size=(count, PIXELS))
    dark = rng.integers(0, 40, size=(count, PIXELS))
    return np.where(patterns[labels], bright, dark).astype(np.uint8), labels


#: Inside :func:`notices_once`: the notices printed so far (empty outside: print every one).
_shown_notices: list[set[str]] = []


def _notice(message: str) -> None:
    """Print ``message`` to stderr, unless :func:`notices_once` has already seen it."""
    if _shown_notices:
        if message in _shown_notices[0]:
            return
        _shown_notices[0].add(message)
    print(message, file=sys.stderr)


@contextlib.contextmanager
def notices_once() -> Iterator[None]:
    """Within this block each notice (the MNIST fallback) is printed once, however many runs load data.

    ``experiments.compare`` runs every method inside it.
    """
    _shown_notices.append(_shown_notices[0] if _shown_notices else set())
    try:
        yield
    finally:
        _shown_notices.pop()


def _load_splits(config: SemiSupervisedConfig) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``(dataset used, {split: (images (n, 784) uint8, labels (n,) int64)})``."""
    if config.dataset == "synthetic":
        images, labels = synthetic_digits(config.synthetic_size + 2 * 128, seed=1234)
        cut = config.synthetic_size
        return "synthetic", {
            "train": (images[:cut], labels[:cut]),
            "valid": (images[cut : cut + 128], labels[cut : cut + 128]),
            "test": (images[cut + 128 :], labels[cut + 128 :]),
        }
    if config.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {config.dataset!r}")
    name = config.dataset
    try:
        loaded = data.load_splits(
            name, config.data_dir, download=config.download, valid_size=config.valid_size, flatten=True
        )
    except data.DataError as error:
        if name != "mnist":
            raise
        first_line = str(error).splitlines()[0]
        _notice(
            f"notice: MNIST (the paper's data set) is not available ({first_line}); "
            "falling back to fashion-mnist"
        )
        name = "fashion-mnist"
        loaded = data.load_splits(
            name, config.data_dir, download=config.download, valid_size=config.valid_size, flatten=True
        )
    return name, {split: (part.images, part.labels) for split, part in loaded.items()}


def load_data(config: SemiSupervisedConfig, device: torch.device | None = None) -> SemiSupervisedData:
    """The run's images: the labeled/unlabeled split of the training images and the evaluation sets.

    ``max_train_examples`` keeps the first training images (before the
    labeled ones are drawn), ``max_eval_examples`` the first validation and
    test images.

    Raises
    ------
    ValueError
        If the labeled images would not leave unlabeled ones.
    experiments.data.DataError
        If the data set cannot be found (MNIST falls back to Fashion-MNIST
        first).
    """
    device = torch.device("cpu") if device is None else device
    name, splits = _load_splits(config)
    train_images, train_labels = splits["train"]
    train_images = train_images.reshape(train_images.shape[0], -1)[: config.max_train_examples]
    train_labels = train_labels[: config.max_train_examples]
    count = train_images.shape[0]
    labeled_count = round(0.1 * count) if config.labeled is None else config.labeled
    if not 0 < labeled_count < count:
        raise ValueError(
            f"--labeled {config.labeled}: expected between 1 and {count - 1} labeled images "
            f"of the {count} training images"
        )
    labeled, unlabeled = data.labeled_split(train_labels, labeled_count, seed=config.labeled_seed)
    binarizer = torch.Generator().manual_seed(EVAL_BINARIZE_SEED)
    eval_images, eval_labels = {}, {}
    for split in ("valid", "test"):
        images, labels = splits[split]
        images = torch.as_tensor(images.reshape(images.shape[0], -1)[: config.max_eval_examples])
        eval_images[split] = torch.bernoulli(images.double() / 255.0, generator=binarizer).to(torch.uint8)
        eval_images[split] = eval_images[split].to(device)
        eval_labels[split] = torch.as_tensor(labels[: config.max_eval_examples], device=device)
    return SemiSupervisedData(
        dataset=name,
        train_images=torch.as_tensor(train_images, device=device),
        train_labels=torch.as_tensor(train_labels, device=device),
        labeled=torch.as_tensor(labeled, device=device),
        unlabeled=torch.as_tensor(unlabeled, device=device),
        eval_images=eval_images,
        eval_labels=eval_labels,
    )


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


# --------------------------------------------------------------------------
# The experiment.


def check_config(config: SemiSupervisedConfig) -> None:
    """Refuse settings no run can use, naming the option.

    Raises
    ------
    ValueError
        For an unknown method, data set or learning-rate setting, or a size out of range.
    """
    harness.check_run_config(config)
    harness.check_fields(
        config,
        choices={
            "method": CATEGORICAL_ESTIMATORS,
            "dataset": DATASETS,
            "lr_setting": LR_SETTINGS,
            "sfe_baseline": ("ema", "cumulative"),
        },
        at_least={
            **dict.fromkeys(
                ("hidden_layers", "nvil_layers", "nvil_hidden", "hidden", "classifier_hidden"), 1
            ),
            **dict.fromkeys(("latent_dim", "synthetic_size", "eval_batch_size", "labeled"), 1),
            **dict.fromkeys(("lr", "classifier_lr", "warmup_lr", "warmup_epochs", "valid_size"), 0),
        },
    )


class SemiSupervisedExperiment:
    """The semi-supervised VAE behind the harness's :class:`~experiments.harness.Experiment` protocol.

    Parameters
    ----------
    config : SemiSupervisedConfig
    phase : {"semi-supervised", "warmup"}, default "semi-supervised"
        ``"warmup"``: batches of labeled images only and the labeled loss,
        at ``warmup_lr``; ``"semi-supervised"``: batches of ``batch_size``
        labeled and ``batch_size`` unlabeled images (an epoch is one pass
        over the unlabeled images, the labeled ones cycled in a fresh order)
        and the full loss, at ``lr``.
    data : SemiSupervisedData, optional
        Images already loaded (:func:`load_data`) for this config.
    """

    def __init__(
        self,
        config: SemiSupervisedConfig,
        *,
        phase: str = "semi-supervised",
        data: SemiSupervisedData | None = None,
    ) -> None:
        check_config(config)
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}")
        self.config = config
        self.phase = phase
        self.device = harness.resolve_device(config.device)
        harness.seed_everything(config.seed)
        self.data = load_data(config, self.device) if data is None else data
        self.model = SemiSupervisedVAE(config).to(self.device)
        if phase == "warmup":
            lr = head_lr = config.warmup_lr
        else:
            lr = default_lr(config.method) if config.lr is None else config.lr
            head_lr = classifier_lr(config)
        head = list(self.model.classifier.parameters())
        chosen = {id(parameter) for parameter in head}
        rest = [parameter for parameter in self.model.parameters() if id(parameter) not in chosen]
        # Two parameter groups: the classifier q(y|x), and the rest (encoder, decoder, estimator state).
        self.optimizer = torch.optim.Adam(
            [
                {"params": head, "lr": head_lr, "name": "classifier"},
                {"params": rest, "lr": lr, "name": "model"},
            ],
            weight_decay=config.weight_decay,
        )

    def _binarize(self, pixels: torch.Tensor) -> torch.Tensor:
        """A fresh 0/1 draw (from torch's global generator) of byte images (N, 784)."""
        return torch.bernoulli(pixels.to(torch.get_default_dtype()) / 255.0)

    def train_batches(self, generator: torch.Generator) -> Sequence[tuple[torch.Tensor, torch.Tensor]]:
        """``(labeled, unlabeled)`` index batches of this epoch, shuffled by ``generator`` only."""
        size = self.config.batch_size
        labeled = self.data.labeled.cpu()
        empty = torch.zeros(0, dtype=torch.int64)
        if self.phase == "warmup":
            order = labeled[torch.randperm(labeled.shape[0], generator=generator)]
            return [(order[start:stop], empty) for start, stop in _chunks(order.shape[0], size)]
        unlabeled = self.data.unlabeled.cpu()
        order = unlabeled[torch.randperm(unlabeled.shape[0], generator=generator)]
        chunks = _chunks(order.shape[0], size)
        rounds = math.ceil(len(chunks) * size / labeled.shape[0])
        cycled = torch.cat(
            [labeled[torch.randperm(labeled.shape[0], generator=generator)] for _ in range(rounds)]
        )
        return [
            (cycled[step * size : (step + 1) * size], order[start:stop])
            for step, (start, stop) in enumerate(chunks)
        ]

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor], epoch: int) -> dict[str, Any]:
        """One Adam step on the labeled loss plus ``unlabeled_weight`` times the unlabeled one.

        Returns the loss (its value, the ``log K`` constants included),
        ``calls`` (every decoded row: the estimator's plus one per labeled
        image) and ``support`` (classes decoded per unlabeled image; per
        labeled image, i.e. ones, during the warm start).
        """
        labeled, unlabeled = (index.to(self.device) for index in batch)
        step = distributed.forward(self.model, self._objective, labeled, unlabeled)
        objective, value, calls, support = step
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        return {"loss": float(value), "calls": calls, "support": support}

    def _objective(
        self, labeled: torch.Tensor, unlabeled: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """``(objective, its value, calls, support)`` of a step (what the step backpropagates)."""
        config, model = self.config, self.model
        log_classes = math.log(CLASSES)
        images = self._binarize(self.data.train_images[labeled])
        labels = self.data.train_labels[labeled]
        targets = F.one_hot(labels, CLASSES).to(images.dtype)
        labeled_loss = (
            model.negative_elbo_given_class(images, targets)
            + log_classes
            + config.classification_weight * classification_loss(config.method, model.scores(images), labels)
        ).mean()
        objective, value = labeled_loss, labeled_loss.detach()
        calls = int(labeled.shape[0])
        support = torch.ones(calls, dtype=images.dtype, device=self.device)
        if unlabeled.shape[0]:
            images = self._binarize(self.data.train_images[unlabeled])
            out = model.estimator(model.scores(images), model.loss_fn(images), baseline_input=images)
            unlabeled_loss = (out.loss - out.entropy).mean() + log_classes
            objective = objective + config.unlabeled_weight * out.surrogate
            value = value + config.unlabeled_weight * unlabeled_loss
            calls += out.decoder_calls
            support = out.support
        return objective, value, calls, support

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Accuracy (%), negative ELBO (nats, exact over q's support) and support sizes on ``split``."""
        model = self.model
        images_all = self.data.eval_images[split]
        labels_all = self.data.eval_labels[split]
        noise_generator = torch.Generator().manual_seed(EVAL_NOISE_SEED)
        correct, negative_elbo, support, union = 0, [], [], []
        for start, stop in _chunks(images_all.shape[0], self.config.eval_batch_size):
            images = images_all[start:stop].to(torch.get_default_dtype())
            scores = model.scores(images)
            probs = model.distribution(scores)
            example, category = torch.nonzero(probs, as_tuple=True)
            noise = torch.randn((example.shape[0], model.latent_dim), generator=noise_generator)
            per_row = model.negative_elbo_given_class(
                images[example],
                F.one_hot(category, CLASSES).to(images.dtype),
                noise.to(device=images.device, dtype=images.dtype),
            )
            # Scattered into (B, 10) rather than index_add-ed: deterministic on CUDA too.
            per_class = torch.zeros_like(probs)
            per_class[example, category] = per_row
            entropy = torch.special.entr(probs).sum(-1)
            negative_elbo.append((probs * per_class).sum(-1) - entropy + math.log(CLASSES))
            on_support = probs > 0
            support.append(on_support.sum(-1).to(per_row.dtype))
            for first, last in _chunks(images.shape[0], self.config.batch_size):
                union.append(float(on_support[first:last].any(0).sum()))
            correct += int((scores.argmax(-1) == labels_all[start:stop]).sum())
        count = max(images_all.shape[0], 1)
        metrics = {
            "accuracy_percent": 100.0 * correct / count,
            "negative_elbo": float(torch.cat(negative_elbo).mean()),
            "support_mean": float(torch.cat(support).mean()),
        }
        if model.method == "sparsemax":
            metrics["batch_union_support_mean"] = float(np.mean(union))
        return metrics


# --------------------------------------------------------------------------
# Running.


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (a temporary file renamed into place)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(json.dumps(payload, indent=2) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def warmup_config(config: SemiSupervisedConfig) -> SemiSupervisedConfig:
    """The warm start's config: ``warmup_epochs`` epochs at ``warmup_lr`` in ``out_dir/warmup``."""
    return dataclasses.replace(
        config,
        epochs=config.warmup_epochs,
        lr=config.warmup_lr,
        out_dir=str(Path(config.out_dir) / WARMUP_DIR),
    )


def run(config: SemiSupervisedConfig) -> dict[str, Any]:
    """Warm start (if any), then semi-supervised training; metrics, checkpoints, result and plots.

    The warm start is a harness run of its own in ``out_dir/warmup`` (so a
    run killed during either phase resumes exactly with ``resume``); the
    semi-supervised phase starts from its final model, with a fresh
    optimizer.  The result (also ``out_dir/result.json``) is the
    semi-supervised phase's, with ``dataset`` (the data set really used),
    ``warmup`` (the warm start's history, test metrics and time) and
    ``train_seconds`` counting both phases.
    """
    from experiments import plots

    check_config(config)
    loaded = load_data(config, harness.resolve_device(config.device))
    warmup: dict[str, Any] | None = None
    warm_state: dict[str, torch.Tensor] | None = None
    if config.warmup_epochs > 0:
        warm_config = warmup_config(config)
        warm = SemiSupervisedExperiment(warm_config, phase="warmup", data=loaded)
        warmup = harness.train(warm, warm_config)
        warm_state = warm.model.state_dict()
    experiment = SemiSupervisedExperiment(config, data=loaded)
    if warm_state is not None:
        experiment.model.load_state_dict(warm_state)
    result = harness.train(experiment, config)
    result["dataset"] = loaded.dataset
    if warmup is not None:
        result["warmup"] = {key: warmup[key] for key in ("history", "test", "train_seconds")}
        result["train_seconds"] += warmup["train_seconds"]
    if distributed.is_main_process():
        _write_json(Path(config.out_dir) / harness.RESULT_JSON, result)
        plots.run_plots(result, config.out_dir)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: train one method, print a one-line summary."""
    config = harness.parse_config(
        SemiSupervisedConfig,
        argv,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        choices={
            "method": CATEGORICAL_ESTIMATORS,
            "dataset": DATASETS,
            "sfe_baseline": ("ema", "cumulative"),
            "lr_setting": LR_SETTINGS,
        },
        check=check_config,
    )
    try:
        result = run(config)
    except data.DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not distributed.is_main_process():
        return 0
    test = result["test"]
    history = result["history"]
    calls = float(np.mean([row["calls_mean"] for row in history])) if history else float("nan")
    print(
        f"{config.method} on {result['dataset']}: test accuracy {test['accuracy_percent']:.2f}%, "
        f"negative ELBO {test['negative_elbo']:.1f} nats, decoder calls {calls:.2f} per example; "
        f"results in {config.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
