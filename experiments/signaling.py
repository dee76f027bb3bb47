r"""The signaling game of the paper's section 5.2, with every categorical estimator.

Two agents learn to communicate.  A *sender* sees one image :math:`v_y` and
sends one symbol :math:`z` of a vocabulary of :math:`V = 256`; a *receiver*
sees :math:`C = 16` candidate images :math:`\mathcal{V}` (the sender's among
them, at a random position) and the symbol, and must pick the sender's
image.  In the paper's terms the sender is the distribution
:math:`\pi(z \mid v_y)` and the loss is the receiver's negative
log-likelihood :math:`\ell(z) = -\log p(y \mid \mathcal{V}, z)`; every
estimator of :mod:`experiments.estimators` trains the sender through
:math:`\mathbb{E}_{\pi}[\ell(z)]` minus an entropy bonus.

Architecture (the research code's, on inputs of F features):

* sender: ``Linear(F -> 256, no bias)``, a 1x1 convolution to 512 maps (each
  map scales the 256 embedding values), sigmoid, a convolution collapsing
  the 512 maps (a weighted sum), sigmoid, ``Linear(256 -> V)``; the scores
  are divided by a temperature of 10 (for sparsemax too: it sets how sparse
  the distribution is).  No layer has a bias, as in the research code.
* receiver: ``Linear(F -> 256, no bias)`` per candidate, an ``Embedding(V,
  256)`` for the symbol (for the Gumbel methods a bias-free ``Linear(V ->
  256)`` with PyTorch's default initialization, as in the research code),
  used as ``z @ table`` so that relaxed Gumbel samples work, dot products
  and a log-softmax over the candidates.

``--sender mlp`` replaces the sender by ``Linear(F -> 256)``, tanh,
``Linear(256 -> V)`` (scores divided by the same temperature).  Why: the
paper's sender starts with scores that barely depend on the image (on
Fashion-MNIST they vary by about 1e-5 across images against 0.025 across
symbols); under exact marginalization (dense, sparsemax) the receiver then
learns to ignore the message, every symbol has the same loss, the sender
gets no gradient and the entropy bonus flattens it: a fixed point at
chance (receiver NLL log 16) that the runs here never leave, while the
noisy one-sample gradients of the Gumbel and SFE estimators escape it.  The
metrics ``score_spread_images`` and ``score_spread_symbols`` (see
:func:`score_spread`) show it in every run.

Methods (``--method``): ``sfe_nll`` (SFE on the NLL, moving-average
baseline), ``sfe_01`` (SFE whose reward is the 0/1 success, see
:meth:`SignalingGame.loss_fn`), ``sfe_plus`` (self-critic baseline, 0/1
reward like the research code's script, ``--sfe-plus-loss nll`` for the
NLL), ``nvil`` (learned baseline on the sender's input), ``gumbel``,
``st_gumbel`` (the research code's temperature ``max(0.5, exp(-1e-5
step))``, updated every 1,000 steps), ``dense``
(softmax, all 256 symbols decoded) and ``sparsemax`` (sparsemax, its
support decoded).

Data.  By default Fashion-MNIST images (pixels ``x / 255``, each vector
L2-normalized) stand in for the paper's VGG features of ImageNet images,
which are not available offline.  Fashion-MNIST has 10 classes, too few for
16 distinct concepts, so each game shows 16 *distinct images*.  Training
games are drawn from the training images with the harness's per-epoch
generator (so a resumed run draws the same games); validation and test games
are drawn once, with fixed seeds, from the held-out images (the last 5,000
training images and the official test set): the research code drew its
validation games from the training features, a defect not copied here.
``--image-features classifier`` replaces the pixels by a stand-in for the
paper's VGG features: the 512 ReLU features of a small classifier trained
a few seconds on the training split's images and labels only (seeded,
cached on disk under a hash of its data and settings; the held-out games'
images are never seen by it; :func:`classifier_features`).
``--features PATH`` reads a ``.npz`` file of features and concept labels
(like the paper's), split by concept into train/valid/test; each game then
shows 16 *distinct concepts*, one image of each, as in the paper.

Metrics on a split: communication success, twice: ``success_percent``
(the receiver's most probable candidate given the sender's most probable
symbol; chance is 1/16 = 6.25%) and ``expected_success_percent`` (the
success expected under the sender's distribution, ``sum_z pi(z) acc(z)``,
what the research code reported for dense and sparsemax), the sender's
score spread across images and symbols, the receiver's mean NLL of the right candidate, the symbols used,
and for dense and sparsemax the sender's support size (``support_mean``)
and ``union_calls``, the symbols used by any game of a batch: what the
research code decoded per example.  Every training step records the
receiver rows really decoded per example ("decoder calls").

Run ``python -m experiments.signaling --help`` for the options, e.g.::

    python -m experiments.signaling --method sparsemax --epochs 500
    python -m experiments.signaling --method dense --features vgg_features.npz

References
----------
Correia, Niculae, Aziz and Martins, "Efficient Marginalization of Discrete
and Structured Latent Variables via Sparsity", NeurIPS 2020, section 5.2.
Lazaridou, Peysakhovich and Baroni, "Multi-Agent Cooperation and the
Emergence of (Natural) Language", ICLR 2017.
"""

from __future__ import annotations

import dataclasses
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments import distributed, harness
from experiments.data import DataError
from experiments.estimators import Estimator, EstimatorOutput, make_estimator

__all__ = [
    "ENTROPY_WEIGHTS",
    "ESTIMATOR_NAMES",
    "GAME_SIZE",
    "IMAGE_FEATURES",
    "METHODS",
    "PAPER_SUCCESS",
    "SENDERS",
    "SMALL_BUDGET",
    "TABLE_COLUMNS",
    "VOCAB_SIZE",
    "Games",
    "MLPSender",
    "Pool",
    "Receiver",
    "Sender",
    "SignalingConfig",
    "SignalingExperiment",
    "SignalingGame",
    "check_config",
    "classifier_features",
    "default_lr",
    "draw_distinct",
    "draw_games",
    "expected_success",
    "load_features",
    "main",
    "run",
    "score_spread",
    "split_by_concept",
    "synthetic_features",
]

#: Candidates the receiver sees (the paper: 16).
GAME_SIZE = 16
#: Symbols the sender chooses from (the paper: 256).
VOCAB_SIZE = 256
#: The senders (``--sender``): the research code's, and a plain MLP (see :class:`MLPSender`).
SENDERS = ("paper", "mlp")
#: The data sets (``--dataset``).
DATASETS = ("fashion-mnist", "mnist", "synthetic")
#: What the sender and receiver see of an image (``--image-features``).
IMAGE_FEATURES = ("pixels", "classifier")
#: The methods, by command-line name.
METHODS = ("sfe_nll", "sfe_01", "sfe_plus", "nvil", "gumbel", "st_gumbel", "dense", "sparsemax")
#: The estimator of ``experiments.estimators`` behind each method.
ESTIMATOR_NAMES = {
    "sfe_nll": "sfe",
    "sfe_01": "sfe",
    "sfe_plus": "sfe_plus",
    "nvil": "nvil",
    "gumbel": "gumbel",
    "st_gumbel": "st_gumbel",
    "dense": "dense",
    "sparsemax": "sparsemax",
}
#: The paper's entropy bonus per method (EXPERIMENTS.md; ST-Gumbel as Gumbel).
ENTROPY_WEIGHTS = {
    "sparsemax": 0.1,
    "dense": 0.1,
    "sfe_01": 0.01,
    "sfe_nll": 0.05,
    "sfe_plus": 0.05,
    "nvil": 0.1,
    "gumbel": 0.01,
    "st_gumbel": 0.01,
}
#: Methods that marginalize exactly over the sender's distribution.
MARGINALIZATION_METHODS = ("dense", "sparsemax")
#: Methods whose receiver sees a relaxed (soft) symbol or needs its gradient.
RELAXED_METHODS = ("gumbel", "st_gumbel")
#: The reported test communication success (%) and decoder calls per example
#: (EXPERIMENTS.md: the paper's table 1, SFE+ and NVIL from the thesis; the
#: calls of SFE+ and NVIL are theirs by construction).
PAPER_SUCCESS: dict[str, tuple[float, float]] = {
    "sfe_nll": (33.05, 1.0),
    "sfe_01": (55.36, 1.0),
    "sfe_plus": (44.32, 2.0),
    "nvil": (37.04, 1.0),
    "gumbel": (23.51, 1.0),
    "st_gumbel": (27.42, 1.0),
    "dense": (93.37, 256.0),
    "sparsemax": (93.35, 3.13),
}
#: Config overrides with which all eight methods train and evaluate on
#: Fashion-MNIST in about 4 minutes together on a 2-core CPU: the MLP sender
#: on the classifier features, the setting in which the paper's finding
#: (exact marginalization far above the sampling estimators, sparsemax on a
#: few symbols) shows at this budget.  The paper's sender stays at chance
#: under dense and sparsemax marginalization here (see :class:`MLPSender`).
SMALL_BUDGET: dict[str, Any] = {
    "sender": "mlp",
    "image_features": "classifier",
    "epochs": 4,
    "batches_per_epoch": 100,
    "max_eval_examples": 1024,
    "valid_games": 512,
}
#: The comparison table's columns: (header, test metric key, format).
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("success, expected (%)", "expected_success_percent", "{:.2f}"),
    ("success, argmax symbol (%)", "success_percent", "{:.2f}"),
    ("receiver NLL (nats)", "nll", "{:.3f}"),
    ("symbols used", "symbols_used", "{:.0f}"),
    ("test support", "support_mean", "{:.2f}"),
)

#: Seeds of the fixed validation and test games (the research code's).
VALID_SEED = 20200724
TEST_SEED = 20200725
#: Seed of the concept-preserving split of a features file.
SPLIT_SEED = 20200723
#: The synthetic data set: features, concepts and held-out images per split.
SYNTHETIC_FEATURES = 64
SYNTHETIC_CONCEPTS = 32
SYNTHETIC_HELDOUT = 256
_SYNTHETIC_SEEDS = {"prototypes": 1234, "train": 1, "valid": 2, "test": 3}


def default_lr(method: str) -> float:
    """The paper's learning rate for ``method``: 5e-3 for sparsemax, 1e-3 for the others."""
    return 5e-3 if method == "sparsemax" else 1e-3


@dataclasses.dataclass
class SignalingConfig(harness.RunConfig):
    """Signaling game settings (defaults: the paper's, except where noted).

    Attributes
    ----------
    batches_per_epoch : int
        Training games per epoch are ``batches_per_epoch * batch_size``
        (the paper: 100 batches of 64).
    dataset : str
        ``fashion-mnist`` (the default: 16 distinct images a game), ``mnist``,
        or ``synthetic`` (small generated features, for tests and smoke
        runs).  Ignored when ``features`` is given.
    features : str or None
        A ``.npz`` file with ``features`` (n, F) and integer ``labels`` (n,)
        (concept ids, like the paper's VGG features): split by concept, and
        each game shows 16 distinct concepts.
    synthetic_size : int
        Training images of the ``synthetic`` data set.
    valid_size : int
        Images at the end of the training set kept for validation (image
        data sets).
    heldout_fraction : float
        For a features file: the fraction of each concept's images put in
        validation, and again in test (at least one each).
    game_size : int
        Candidates shown to the receiver (the paper: 16).
    vocab_size : int
        The sender's vocabulary (the paper: 256).
    embedding_size, hidden_size : int
        The paper: 256 and 512 (the sender's feature maps).
    sender : str
        ``paper`` (the research code's convolutional sender, kept exactly)
        or ``mlp`` (``Linear(F -> embedding_size)``, tanh,
        ``Linear(embedding_size -> V)``): see :class:`MLPSender` for why.
    image_features : str
        For the image data sets: ``pixels`` (``x / 255``) or ``classifier``
        (the 512 ReLU features of a small classifier trained on the
        training split only, see :func:`classifier_features`: a stand-in
        for the paper's VGG features).  Every vector is L2-normalized.
    sender_temperature : float
        The sender's scores are divided by it (the paper: 10).
    entropy_weight : float or None
        The entropy bonus; ``None`` takes the paper's for the method.
    sfe_baseline : str
        The baseline of ``sfe_nll`` and ``sfe_01``: ``ema`` (exponential
        moving average) or ``cumulative`` (the research code's mean of all
        past losses).
    sfe_plus_loss : str
        The loss whose gradient SFE+ estimates: ``01`` (the research code's
        script for the reported number) or ``nll``.
    zero_one_pick : str
        The receiver's guess scored by the 0/1 reward: ``argmax`` (its most
        probable candidate, as communication success scores it) or
        ``sample`` (a draw from its distribution, the research code's).
    gumbel_temperature, gumbel_tau_min, gumbel_anneal_rate, gumbel_anneal_every : float or int
        The Gumbel-Softmax temperature schedule of the research code:
        ``max(0.5, 1 * exp(-1e-5 * step))``, updated every 1,000 steps
        (``gumbel_anneal_rate 0`` keeps ``gumbel_temperature``).
    valid_games, eval_games : int
        Fixed validation games (the research code's 1024) and test games
        (the paper's 9,984); ``max_eval_examples`` caps both.
    eval_batch_size : int
        Games per evaluation batch.
    """

    method: str = "sparsemax"
    epochs: int = 500
    batches_per_epoch: int = 100
    dataset: str = "fashion-mnist"
    features: str | None = None
    synthetic_size: int = 512
    valid_size: int = 5000
    heldout_fraction: float = 0.1
    game_size: int = GAME_SIZE
    vocab_size: int = VOCAB_SIZE
    embedding_size: int = 256
    hidden_size: int = 512
    sender: str = "paper"
    image_features: str = "pixels"
    sender_temperature: float = 10.0
    entropy_weight: float | None = None
    sfe_baseline: str = "ema"
    sfe_plus_loss: str = "01"
    zero_one_pick: str = "argmax"
    gumbel_temperature: float = 1.0
    gumbel_tau_min: float = 0.5
    gumbel_anneal_rate: float = 1e-5
    gumbel_anneal_every: int = 1000
    valid_games: int = 1024
    eval_games: int = 9984
    eval_batch_size: int = 512
    out_dir: str = "runs/signaling"


# --------------------------------------------------------------------------
# Data: pools of images grouped by concept, and games drawn from them.


@dataclasses.dataclass(frozen=True)
class Pool:
    """The images of one split, grouped by concept: what games are drawn from.

    An image data set (Fashion-MNIST) makes every image its own concept, so
    that a game's 16 distinct concepts are 16 distinct images.

    Attributes
    ----------
    features : torch.Tensor
        Shape (n, F), floating, L2-normalized rows.
    concept_images : torch.Tensor
        Shape (n,), int64, CPU: the image indices sorted by concept.
    concept_start, concept_count : torch.Tensor
        Shape (C,), int64, CPU: where each concept's images start in
        ``concept_images`` and how many there are.
    """

    features: torch.Tensor
    concept_images: torch.Tensor
    concept_start: torch.Tensor
    concept_count: torch.Tensor

    @classmethod
    def build(cls, features: torch.Tensor, labels: np.ndarray | None = None) -> Pool:
        """A pool of ``features`` (n, F); ``labels`` (n,) concept ids, or ``None`` (one concept an image)."""
        count = features.shape[0]
        if labels is None:
            images = torch.arange(count)
            return cls(features, images, images.clone(), torch.ones(count, dtype=torch.int64))
        order = np.argsort(labels, kind="stable")
        _, start, sizes = np.unique(labels[order], return_index=True, return_counts=True)
        return cls(
            features,
            torch.as_tensor(order, dtype=torch.int64),
            torch.as_tensor(start, dtype=torch.int64),
            torch.as_tensor(sizes, dtype=torch.int64),
        )

    @property
    def num_concepts(self) -> int:
        return int(self.concept_start.shape[0])

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclasses.dataclass(frozen=True)
class Games:
    """A set of games: the candidates' image indices and the target's position.

    Attributes
    ----------
    images : torch.Tensor
        Shape (G, C), int64: indices into the pool's images, C distinct
        concepts per game, in the order the receiver sees them.
    target : torch.Tensor
        Shape (G,), int64: the position of the sender's image among them.
    """

    images: torch.Tensor
    target: torch.Tensor

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def __getitem__(self, rows: slice | torch.Tensor) -> Games:
        return Games(self.images[rows], self.target[rows])

    def target_images(self) -> torch.Tensor:
        """Shape (G,): the pool index of each game's target image."""
        return self.images.gather(1, self.target[:, None]).squeeze(1)


def draw_distinct(total: int, count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` rows of ``size`` distinct integers of ``[0, total)``, each a uniform draw.

    Floyd's algorithm draws a uniformly random subset in ``size`` vectorized
    steps (no pass over ``total``); a random permutation then puts it in a
    uniformly random order.

    Returns
    -------
    torch.Tensor
        Shape (count, size), int64.
    """
    if size > total:
        raise ValueError(f"cannot draw {size} distinct values out of {total}")
    chosen = torch.empty((count, 0), dtype=torch.int64)
    for top in range(total - size, total):
        uniform = torch.rand(count, generator=generator, dtype=torch.float64)
        draw = (uniform * (top + 1)).long().clamp_max(top)
        taken = (chosen == draw[:, None]).any(-1)
        chosen = torch.cat([chosen, torch.where(taken, torch.full_like(draw, top), draw)[:, None]], 1)
    order = torch.rand((count, size), generator=generator).argsort(-1)
    return chosen.gather(1, order)


def draw_games(pool: Pool, count: int, generator: torch.Generator, game_size: int = GAME_SIZE) -> Games:
    """``count`` games of ``game_size`` distinct concepts, one image of each, from ``pool``.

    The concepts are a uniformly random subset in a uniformly random order,
    each image uniform among its concept's, and the target (the image the
    sender sees) is at a uniformly random position: the same distribution as
    drawing the target first and showing it at a random position.
    """
    if pool.num_concepts < game_size:
        raise DataError(
            f"a game shows {game_size} distinct concepts but this split has only {pool.num_concepts}"
        )
    concepts = draw_distinct(pool.num_concepts, count, game_size, generator)
    sizes = pool.concept_count[concepts]
    uniform = torch.rand(concepts.shape, generator=generator, dtype=torch.float64)
    offset = torch.minimum((uniform * sizes).long(), sizes - 1)
    images = pool.concept_images[pool.concept_start[concepts] + offset]
    target = torch.randint(game_size, (count,), generator=generator)
    return Games(images, target)


def _normalize(features: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (a zero row stays zero)."""
    norms = torch.linalg.vector_norm(features, dim=-1, keepdim=True)
    return features / norms.clamp_min(torch.finfo(features.dtype).tiny)


def load_features(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a features file: ``(features (n, F) float32, labels (n,) int64)``.

    The file is a NumPy ``.npz`` archive with an array ``features`` of shape
    (n, F), floating, finite, no row zero, and an array ``labels`` of shape
    (n,), integer concept ids (any values).

    Raises
    ------
    DataError
        If the file is missing or unreadable, or an array is missing or has
        the wrong shape, dtype or values; the message names the file.
    """
    path = Path(path)
    where = f"features file {str(path)!r}"
    if not path.is_file():
        raise DataError(f"{where} does not exist (expected a .npz with arrays 'features' and 'labels')")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{where} is not a readable .npz archive: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{where} holds a single array, not a .npz archive of 'features' and 'labels'")
    with archive:
        missing = [key for key in ("features", "labels") if key not in archive.files]
        if missing:
            raise DataError(
                f"{where} lacks the array(s) {', '.join(map(repr, missing))} "
                f"(it holds {', '.join(map(repr, archive.files)) or 'nothing'})"
            )
        try:
            features, labels = archive["features"], archive["labels"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise DataError(f"{where}: cannot read its arrays: {error}") from error
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise DataError(f"{where}: 'features' must have shape (n, F) with n, F >= 1, got {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise DataError(f"{where}: 'features' must be floating, got dtype {features.dtype}")
    if labels.shape != (features.shape[0],):
        raise DataError(
            f"{where}: 'labels' must have shape ({features.shape[0]},), one per row of 'features', "
            f"got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: 'labels' must be integer concept ids, got dtype {labels.dtype}")
    finite = np.isfinite(features).all(-1)
    if not finite.all():
        raise DataError(f"{where}: 'features' row {int(np.flatnonzero(~finite)[0])} is not finite")
    zero = ~features.any(-1)
    if zero.any():
        raise DataError(f"{where}: 'features' row {int(np.flatnonzero(zero)[0])} is zero (no direction)")
    return features.astype(np.float32), labels.astype(np.int64)


def split_by_concept(labels: np.ndarray, heldout_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Row indices of train/valid/test: every concept's images divided among the three splits.

    Each concept's images are shuffled; ``round(heldout_fraction * n_c)``
    of them (at least one) go to validation, as many to test, and the rest
    (at least one) to training.  Each split's indices are in random order.

    Raises
    ------
    DataError
        If a concept has too few images to appear in every split.
    """
    if not 0 < heldout_fraction < 0.5:
        raise ValueError(f"heldout_fraction must be in (0, 0.5), got {heldout_fraction!r}")
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    concepts, start, sizes = np.unique(labels[order], return_index=True, return_counts=True)
    parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    small = []
    for concept, first, size in zip(concepts, start, sizes, strict=True):
        held = max(1, round(heldout_fraction * size))
        if size - 2 * held < 1:
            small.append(int(concept))
            continue
        rows = rng.permutation(order[first : first + size])
        parts["valid"].append(rows[:held])
        parts["test"].append(rows[held : 2 * held])
        parts["train"].append(rows[2 * held :])
    if small:
        raise DataError(
            f"{len(small)} concept(s) have too few images to appear in train, valid and test "
            f"(each needs at least 3 with heldout_fraction={heldout_fraction}); "
            f"first: label {small[0]}"
        )
    return {name: rng.permutation(np.concatenate(rows)) for name, rows in parts.items()}


def synthetic_features(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (count, 64) around 32 fixed random prototypes, and their prototype labels.

    Each row is its prototype plus noise, L2-normalized: a tiny, offline,
    easily learned game (the sender need only name the prototype).
    """
    prototypes = np.random.default_rng(_SYNTHETIC_SEEDS["prototypes"]).standard_normal(
        (SYNTHETIC_CONCEPTS, SYNTHETIC_FEATURES)
    )
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, SYNTHETIC_CONCEPTS, size=count)
    features = prototypes[labels] + 0.5 * rng.standard_normal((count, SYNTHETIC_FEATURES))
    features /= np.linalg.norm(features, axis=-1, keepdims=True)
    return features.astype(np.float32), labels.astype(np.int64)


def expected_success(
    probs: torch.Tensor, candidates: torch.Tensor, table: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    r"""Per game, the success expected under the sender's distribution: :math:`\sum_z \pi(z)\, a(z)`.

    :math:`a(z)` is 1 when the receiver's most probable candidate given
    symbol :math:`z` is the target, else 0.

    Parameters
    ----------
    probs : torch.Tensor
        Shape (B, V): the sender's distribution :math:`\pi` of each game.
    candidates : torch.Tensor
        Shape (B, C, E): the receiver's candidate embeddings.
    table : torch.Tensor
        Shape (V, E): the receiver's message embedding of every symbol.
    target : torch.Tensor
        Shape (B,), int64: the target's position.

    Returns
    -------
    torch.Tensor
        Shape (B,), in [0, 1].
    """
    scores = torch.einsum("bce,ve->bvc", candidates, table)
    right = (scores.argmax(-1) == target[:, None]).to(probs.dtype)
    return (probs * right).sum(-1)


def score_spread(scores: torch.Tensor) -> dict[str, float]:
    """How much the sender's scores (N, V) vary across images and across symbols.

    ``score_spread_images``: the standard deviation over the N images of
    each symbol's score, averaged over symbols; ``score_spread_symbols``:
    the standard deviation over the V symbols of each image's scores,
    averaged over images.  A sender whose first is orders of magnitude
    below the second barely looks at its input (see :class:`MLPSender`).
    """
    values = scores.detach().double()
    images = values.std(0).mean() if values.shape[0] > 1 else values.new_zeros(())
    symbols = values.std(1).mean() if values.shape[1] > 1 else values.new_zeros(())
    return {"score_spread_images": float(images), "score_spread_symbols": float(symbols)}


#: The classifier whose hidden features stand in for the paper's VGG features.
CLASSIFIER_HIDDEN = 512
CLASSIFIER_EPOCHS = 2
CLASSIFIER_BATCH = 128
CLASSIFIER_LR = 1e-3
CLASSIFIER_SEED = 20200726


def classifier_features(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    images: Mapping[str, np.ndarray],
    *,
    hidden: int = CLASSIFIER_HIDDEN,
    epochs: int = CLASSIFIER_EPOCHS,
    seed: int = CLASSIFIER_SEED,
    cache_dir: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """The penultimate ReLU features of a small classifier trained on ``train_images`` only.

    A stand-in for the paper's VGG features: the classifier ``Linear(P ->
    hidden)``, ReLU, ``Linear(hidden -> classes)`` is trained with Adam
    (lr 1e-3, batches of 128, ``epochs`` passes, seeded by ``seed``) on the
    training images (uint8 pixels, used as ``x / 255``) and their labels;
    the images of the other splits are only passed through it.  Its weights
    are cached in ``cache_dir`` (default: ``experiments.data.cache_dir
    ("signaling-features")``) under a SHA-256 hash of the training data and
    of these settings, so the next run reuses them.

    Parameters
    ----------
    train_images : np.ndarray
        Shape (n, P), uint8 or floating.
    train_labels : np.ndarray
        Shape (n,), integer classes in ``[0, classes)``.
    images : mapping of str to np.ndarray
        Arrays (m, P) to compute features of (the training images included
        if wanted).

    Returns
    -------
    dict of str to np.ndarray
        The features (m, hidden), float32, of each array of ``images``.
    """
    import hashlib

    from experiments import data

    if train_images.ndim != 2 or train_labels.shape != (train_images.shape[0],):
        raise ValueError(
            f"train_images must be (n, P) and train_labels (n,), got {train_images.shape} "
            f"and {train_labels.shape}"
        )

    def as_input(array: np.ndarray) -> torch.Tensor:
        tensor = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)
        return tensor / 255.0 if array.dtype == np.uint8 else tensor

    labels = torch.as_tensor(train_labels, dtype=torch.int64)
    classes = int(labels.max()) + 1
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(train_images).tobytes())
    digest.update(np.ascontiguousarray(train_labels.astype(np.int64)).tobytes())
    digest.update(
        repr(
            (
                train_images.shape,
                str(train_images.dtype),
                hidden,
                epochs,
                seed,
                CLASSIFIER_BATCH,
                CLASSIFIER_LR,
            )
        ).encode()
    )
    folder = Path(cache_dir) if cache_dir is not None else data.cache_dir("signaling-features")
    path = folder / f"classifier-{digest.hexdigest()[:32]}.pt"
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
        torch.manual_seed(seed)
        model = torch.nn.Sequential(
            torch.nn.Linear(train_images.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes)
        )
        if path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            inputs = as_input(train_images)
            optimizer = torch.optim.Adam(model.parameters(), lr=CLASSIFIER_LR)
            generator = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                order = torch.randperm(inputs.shape[0], generator=generator)
                for start in range(0, inputs.shape[0], CLASSIFIER_BATCH):
                    rows = order[start : start + CLASSIFIER_BATCH]
                    loss = torch.nn.functional.cross_entropy(model(inputs[rows]), labels[rows])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            harness.atomic_save(model.state_dict(), path)
    hidden_layers = model[:2]
    out = {}
    with torch.no_grad():
        for name, array in images.items():
            out[name] = np.concatenate(
                [
                    hidden_layers(as_input(array[start : start + 4096])).numpy()
                    for start in range(0, array.shape[0], 4096)
                ]
                or [np.zeros((0, hidden), np.float32)]
            )
    return out


# --------------------------------------------------------------------------
# The agents.


class Sender(torch.nn.Module):
    """Image features (N, F) to symbol scores (N, V), divided by the temperature.

    ``Linear(F -> E)``, a 1x1 convolution to ``hidden`` maps (map ``k`` is
    ``w_k * e``), sigmoid, a convolution collapsing the maps
    (``sum_k u_k * map_k``), sigmoid, ``Linear(E -> V)``; no biases.  The
    convolutions are held as ``torch.nn.Conv2d`` (the research code's
    parameters and initialization) and computed as the broadcast products
    they are.
    """

    def __init__(
        self, features: int, embedding_size: int, hidden_size: int, vocab_size: int, temperature: float
    ) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(features, embedding_size, bias=False)
        self.maps = torch.nn.Conv2d(1, hidden_size, kernel_size=(1, 1), bias=False)
        self.collapse = torch.nn.Conv2d(
            1, 1, kernel_size=(hidden_size, 1), stride=(hidden_size, 1), bias=False
        )
        self.vocabulary = torch.nn.Linear(embedding_size, vocab_size, bias=False)
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embedded = self.embed(images)  # (N, E)
        maps = torch.sigmoid(embedded[:, :, None] * self.maps.weight.reshape(-1))  # (N, E, H)
        collapsed = torch.sigmoid(maps @ self.collapse.weight.reshape(-1))  # (N, E)
        return self.vocabulary(collapsed) / self.temperature


class MLPSender(torch.nn.Module):
    """Image features (N, F) to symbol scores (N, V): ``Linear(F -> E)``, tanh, ``Linear(E -> V)``.

    The scores are divided by the temperature, as the paper's sender's.
    Why a second sender: the paper's (:class:`Sender`) starts with scores
    that hardly depend on its input (a sigmoid of a sigmoid of a sum of 512
    maps: across images they vary by about 1e-5 where they vary by about
    0.025 across symbols, measured on Fashion-MNIST).  Under exact
    marginalization (dense, sparsemax) the receiver then learns to ignore
    the message, every symbol has the same loss, the sender gets no
    gradient and the entropy bonus flattens it to uniform: a fixed point
    that the run never leaves.  The metrics ``score_spread_images`` and
    ``score_spread_symbols`` measure it.  This sender's scores depend on
    its input from the first step.
    """

    def __init__(self, features: int, embedding_size: int, vocab_size: int, temperature: float) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(features, embedding_size)
        self.vocabulary = torch.nn.Linear(embedding_size, vocab_size)
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vocabulary(torch.tanh(self.hidden(images))) / self.temperature


class Receiver(torch.nn.Module):
    """Candidates (..., C, F) and a symbol to log-probabilities over the C candidates.

    The symbol's embedding is an ``Embedding(V, E)`` (``symbols="embedding"``,
    N(0, 1) initialization) or, as the research code's Gumbel receivers, a
    bias-free ``Linear(V -> E)`` with PyTorch's default initialization
    (``symbols="linear"``).
    """

    def __init__(
        self, features: int, embedding_size: int, vocab_size: int, symbols: str = "embedding"
    ) -> None:
        super().__init__()
        if symbols not in ("embedding", "linear"):
            raise ValueError(f"symbols must be 'embedding' or 'linear', got {symbols!r}")
        self.embed = torch.nn.Linear(features, embedding_size, bias=False)
        self.symbols: torch.nn.Module
        if symbols == "linear":
            self.symbols = torch.nn.Linear(vocab_size, embedding_size, bias=False)
        else:
            self.symbols = torch.nn.Embedding(vocab_size, embedding_size)

    def message_table(self) -> torch.Tensor:
        """Shape (V, E): every symbol's message embedding (``one_hot(z) @ table``)."""
        weight = self.symbols.weight
        assert isinstance(weight, torch.Tensor)
        return weight.T if isinstance(self.symbols, torch.nn.Linear) else weight

    def candidates(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (..., E) of image features (..., F)."""
        return self.embed(images)

    def log_probs(self, symbol: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N, C) of candidates (N, C, E) given int64 symbols (N,)."""
        message = self.message_table()[symbol]
        return torch.log_softmax(torch.einsum("ne,nce->nc", message, candidates), dim=-1)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SignalingGame(torch.nn.Module):
    """Sender, receiver and gradient estimator (its state is saved with the model)."""

    def __init__(self, config: SignalingConfig, features: int) -> None:
        super().__init__()
        self.method = config.method
        self.relaxed = config.method in RELAXED_METHODS
        self.sender: torch.nn.Module
        if config.sender == "mlp":
            self.sender = MLPSender(
                features, config.embedding_size, config.vocab_size, config.sender_temperature
            )
        else:
            self.sender = Sender(
                features,
                config.embedding_size,
                config.hidden_size,
                config.vocab_size,
                config.sender_temperature,
            )
        self.receiver = Receiver(
            features, config.embedding_size, config.vocab_size, "linear" if self.relaxed else "embedding"
        )
        weight = ENTROPY_WEIGHTS[config.method] if config.entropy_weight is None else config.entropy_weight
        options: dict[str, Any] = {"entropy_weight": weight}
        if config.method in ("sfe_nll", "sfe_01"):
            options["baseline"] = config.sfe_baseline
        if config.method == "nvil":
            options["baseline_features"] = features
        if self.relaxed:
            options.update(
                tau0=config.gumbel_temperature,
                tau_min=min(config.gumbel_tau_min, config.gumbel_temperature),
                anneal_rate=config.gumbel_anneal_rate,
                anneal_every=config.gumbel_anneal_every,
            )
        self.estimator: Estimator = make_estimator(
            ESTIMATOR_NAMES[config.method], latent="categorical", size=config.vocab_size, **options
        )
        zero_one = config.method == "sfe_01" or (config.method == "sfe_plus" and config.sfe_plus_loss == "01")
        self.reward = "01" if zero_one else "nll"
        self.pick = config.zero_one_pick

    def receiver_logits(
        self, candidates: torch.Tensor, example: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """The receiver's scores (P, C) of game ``example`` (P,) given symbols ``z`` (P, V).

        The message embedding is ``z @ embedding.weight``.  For the methods
        whose ``z`` are exact one-hots without a gradient path (all but the
        Gumbel ones) that product is a row lookup, and the scores are read
        from the table of every symbol against every candidate of the batch,
        ``(B, V, C)``, instead of gathering ``(P, C, E)`` candidate
        embeddings (dense marginalization has ``P = 256 B`` rows).
        """
        if self.relaxed:
            message = z @ self.receiver.message_table()
            return torch.einsum("pe,pce->pc", message, candidates[example])
        table = torch.einsum("bce,ve->bvc", candidates, self.receiver.message_table())
        return table[example, z.argmax(-1)]

    def loss_fn(self, candidates: torch.Tensor, target: torch.Tensor) -> LossFn:
        """The estimators' ``loss_fn(example, z)`` for a batch of games.

        ``candidates`` (B, C, E) are the receiver's candidate embeddings and
        ``target`` (B,) the right positions.  The loss is the receiver's NLL
        of the target.  With the 0/1 reward (``sfe_01``, and ``sfe_plus``
        by default) the loss *value* is 1 when the receiver's pick is wrong
        and 0 when it is right, so the sender's score-function signal is the
        0/1 success; its *gradient* is still the NLL's (``nll + sg[wrong -
        nll]``), so the receiver is trained by likelihood (the research code
        trained it by REINFORCE on the same reward).  The pick is the
        receiver's most probable candidate (``zero_one_pick="argmax"``, the
        guess that communication success scores), or a sample of its
        distribution (``"sample"``, the research code's, noisier).
        """

        def loss(example: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            log_probs = torch.log_softmax(self.receiver_logits(candidates, example, z), dim=-1)
            right = target[example]
            nll = -log_probs.gather(1, right[:, None]).squeeze(1)
            if self.reward == "nll":
                return nll
            if self.pick == "argmax":
                pick = log_probs.detach().argmax(-1)
            else:
                pick = torch.multinomial(log_probs.detach().exp(), 1).squeeze(1)
            wrong = (pick != right).to(nll.dtype)
            return nll + (wrong - nll).detach()

        return loss


# --------------------------------------------------------------------------
# The experiment.


def check_config(config: SignalingConfig) -> None:
    """Refuse settings no run can use, naming the option.

    Raises
    ------
    ValueError
        For an unknown method, sender, features or option value, or a size out of range.
    """
    harness.check_run_config(config)
    harness.check_fields(
        config,
        choices={
            "method": METHODS,
            "dataset": DATASETS,
            "sender": SENDERS,
            "image_features": IMAGE_FEATURES,
            "sfe_baseline": ("ema", "cumulative"),
            "sfe_plus_loss": ("01", "nll"),
            "zero_one_pick": ("argmax", "sample"),
        },
        at_least={
            "game_size": 2,
            **dict.fromkeys(
                ("vocab_size", "batches_per_epoch", "valid_games", "eval_games", "embedding_size"), 1
            ),
            **dict.fromkeys(("hidden_size", "synthetic_size", "eval_batch_size", "gumbel_anneal_every"), 1),
            "gumbel_anneal_rate": 0,
            "entropy_weight": 0,
        },
        positive=("sender_temperature", "gumbel_temperature", "gumbel_tau_min"),
    )
    if not 0 < config.heldout_fraction < 0.5:
        raise ValueError(f"--heldout-fraction must be in (0, 0.5), got {config.heldout_fraction}")


class SignalingExperiment:
    """The signaling game behind the harness's :class:`~experiments.harness.Experiment` protocol."""

    def __init__(self, config: SignalingConfig) -> None:
        check_config(config)
        self.config = config
        self.device = harness.resolve_device(config.device)
        harness.seed_everything(config.seed)
        self.pools = self._load_pools()
        self.eval_games = self._evaluation_games()
        features = self.pools["train"].features.shape[1]
        self.model = SignalingGame(config, features).to(self.device)
        lr = default_lr(config.method) if config.lr is None else config.lr
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def _load_pools(self) -> dict[str, Pool]:
        config = self.config
        labels: dict[str, np.ndarray | None]
        if config.features is not None:
            features_all, labels_all = load_features(config.features)
            try:
                rows = split_by_concept(labels_all, config.heldout_fraction, SPLIT_SEED)
            except DataError as error:
                raise DataError(f"features file {config.features!r}: {error}") from error
            arrays = {name: features_all[index] for name, index in rows.items()}
            labels = {name: labels_all[index] for name, index in rows.items()}
        elif config.dataset == "synthetic":
            sizes = {"train": config.synthetic_size, "valid": SYNTHETIC_HELDOUT, "test": SYNTHETIC_HELDOUT}
            arrays = {
                name: synthetic_features(size, _SYNTHETIC_SEEDS[name])[0] for name, size in sizes.items()
            }
            labels = dict.fromkeys(arrays)
        else:
            from experiments import data

            loaded = data.load_splits(
                config.dataset, config.data_dir, valid_size=config.valid_size, flatten=True
            )
            arrays = {name: split.images for name, split in loaded.items()}
            if config.max_train_examples is not None:
                arrays["train"] = arrays["train"][: config.max_train_examples]
            if config.image_features == "classifier":
                # Trained on the training split only: held-out games' images are never seen.
                train = loaded["train"]
                arrays = classifier_features(train.images, train.labels, arrays)
            labels = dict.fromkeys(arrays)
        if config.max_train_examples is not None and len(arrays["train"]) > config.max_train_examples:
            arrays["train"] = arrays["train"][: config.max_train_examples]
            if labels["train"] is not None:
                labels["train"] = labels["train"][: config.max_train_examples]
        pools = {}
        for name, array in arrays.items():
            features = torch.as_tensor(array, dtype=torch.get_default_dtype())
            if array.dtype == np.uint8:
                features = features / 255.0
            pools[name] = Pool.build(_normalize(features).to(self.device), labels[name])
            if pools[name].num_concepts < config.game_size:
                kind = "concepts" if labels[name] is not None else "images"
                source = config.dataset if config.features is None else f"features file {config.features!r}"
                raise DataError(
                    f"the {name} split of {source} has {pools[name].num_concepts} {kind}; a game needs "
                    f"{config.game_size} distinct ones"
                )
        return pools

    def _evaluation_games(self) -> dict[str, Games]:
        config = self.config
        games = {}
        for split, wanted, seed in (
            ("valid", config.valid_games, VALID_SEED),
            ("test", config.eval_games, TEST_SEED),
        ):
            # Capping takes a prefix of the same fixed games.
            generator = torch.Generator().manual_seed(seed)
            games[split] = draw_games(self.pools[split], wanted, generator, config.game_size)
            games[split] = games[split][: config.max_eval_examples]
        return games

    def train_batches(self, generator: torch.Generator) -> Sequence[Games]:
        config = self.config
        games = draw_games(
            self.pools["train"], config.batches_per_epoch * config.batch_size, generator, config.game_size
        )
        starts = range(0, len(games), config.batch_size)
        return [games[start : start + config.batch_size] for start in starts]

    def train_step(self, batch: Games, epoch: int) -> dict[str, Any]:
        model = self.model
        features = self.pools["train"].features
        images = batch.images.to(self.device)
        target = batch.target.to(self.device)
        sender_input = features[batch.target_images().to(self.device)]
        out = distributed.forward(model, self._estimate, sender_input, features[images], target)
        self.optimizer.zero_grad(set_to_none=True)
        out.surrogate.backward()
        self.optimizer.step()
        return {"loss": float(out.loss.mean()), "calls": out.decoder_calls, "support": out.support}

    def _estimate(
        self, sender_input: torch.Tensor, candidate_features: torch.Tensor, target: torch.Tensor
    ) -> EstimatorOutput:
        """The estimator's output on a batch of games (the computation a training step backpropagates)."""
        model = self.model
        scores = model.sender(sender_input)
        candidates = model.receiver.candidates(candidate_features)
        return model.estimator(  # type: ignore[no-any-return]
            scores, model.loss_fn(candidates, target), baseline_input=sender_input
        )

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Communication success (%), receiver NLL and symbols used on ``split``'s fixed games.

        ``success_percent``: the sender sends its most probable symbol and
        the receiver picks its most probable candidate.
        ``expected_success_percent``: the success expected under the
        sender's distribution (:func:`expected_success`, what the research
        code reported for dense and sparsemax).  The sender's
        :func:`score_spread` across images and across symbols.  For dense and sparsemax also the mean
        support size of the sender's distribution (``support_mean``, the
        decoder calls an example costs) and ``union_calls``: the symbols in
        the union of the supports of a batch of ``batch_size`` games, what
        the research code decoded per example.
        """
        model, config = self.model, self.config
        pool, games = self.pools[split], self.eval_games[split]
        embedded = model.receiver.candidates(pool.features)
        table = model.receiver.message_table()
        successes, expected, nlls, symbols, supports, all_scores = [], [], [], [], [], []
        for start in range(0, len(games), config.eval_batch_size):
            chunk = games[start : start + config.eval_batch_size]
            target = chunk.target.to(self.device)
            scores = model.sender(pool.features[chunk.target_images().to(self.device)])
            all_scores.append(scores)
            symbol = scores.argmax(-1)
            candidates = embedded[chunk.images.to(self.device)]
            log_probs = model.receiver.log_probs(symbol, candidates)
            successes.append(log_probs.argmax(-1) == target)
            nlls.append(-log_probs.gather(1, target[:, None]).squeeze(1))
            symbols.append(symbol)
            if self.config.method in MARGINALIZATION_METHODS:
                probs = model.estimator.distribution(scores)  # type: ignore[operator]
                supports.append(probs > 0)
            else:
                probs = torch.softmax(scores, dim=-1)
            expected.append(expected_success(probs, candidates, table, target))
        metrics = {
            "success_percent": 100.0 * float(torch.cat(successes).double().mean()),
            "expected_success_percent": 100.0 * float(torch.cat(expected).double().mean()),
            "nll": float(torch.cat(nlls).double().mean()),
            "symbols_used": float(torch.unique(torch.cat(symbols)).numel()),
            **score_spread(torch.cat(all_scores)),
        }
        if supports:
            support = torch.cat(supports)
            metrics["support_mean"] = float(support.sum(-1).double().mean())
            unions = [
                float(support[start : start + config.batch_size].any(0).sum())
                for start in range(0, support.shape[0], config.batch_size)
            ]
            metrics["union_calls"] = float(np.mean(unions))
        return metrics


def run(config: SignalingConfig) -> dict[str, Any]:
    """Train and evaluate one method; writes metrics, checkpoint, result and plots to ``out_dir``."""
    from experiments import plots

    experiment = SignalingExperiment(config)
    result = harness.train(experiment, config)
    if distributed.is_main_process():
        plots.run_plots(result, config.out_dir)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    config = harness.parse_config(
        SignalingConfig,
        argv,
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        choices={
            "method": METHODS,
            "dataset": DATASETS,
            "sfe_baseline": ("ema", "cumulative"),
            "sfe_plus_loss": ("01", "nll"),
            "zero_one_pick": ("argmax", "sample"),
            "sender": SENDERS,
            "image_features": IMAGE_FEATURES,
        },
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
    history = result["history"]
    calls = float(np.mean([row["rows_decoded_per_example"] for row in history])) if history else float("nan")
    print(
        f"{config.method}: test communication success {test['success_percent']:.2f}% "
        f"(chance {100.0 / config.game_size:.2f}%), receiver NLL {test['nll']:.3f}, "
        f"{calls:.2f} decoder calls per example; results in {config.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
