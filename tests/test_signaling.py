"""The signaling game end to end on tiny generated data: learning, decoder calls, games, data files, resume."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from experiments import harness, signaling  # noqa: E402
from experiments.data import DataError  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread (and the CPU is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(method: str, tmp_path, **overrides) -> signaling.SignalingConfig:
    """An easy game: 4 candidates (chance 25%), 32 symbols, small agents, synthetic features."""
    settings = dict(
        method=method,
        dataset="synthetic",
        game_size=4,
        vocab_size=32,
        hidden_size=32,
        embedding_size=32,
        sender_temperature=1.0,
        lr=0.01,
        batch_size=32,
        batches_per_epoch=100,
        epochs=8,
        valid_games=256,
        eval_games=512,
        out_dir=str(tmp_path / method),
        progress=False,
        device="cpu",
    )
    settings.update(overrides)
    return signaling.SignalingConfig(**settings)


def train(config: signaling.SignalingConfig) -> dict:
    """Train without the plots (``run`` adds them; the command-line test checks those)."""
    return harness.train(signaling.SignalingExperiment(config), config)


def sparsemax_support(scores: torch.Tensor) -> torch.Tensor:
    """Support size of sparsemax by its closed form: the largest k with 1 + k z_(k) > sum_{j<=k} z_(j)."""
    ordered = scores.double().sort(-1, descending=True).values
    k = torch.arange(1, scores.shape[-1] + 1, dtype=torch.float64)
    return (1 + k * ordered > ordered.cumsum(-1)).sum(-1)


# ---------------------------------------------------------------------------- learning


@pytest.mark.parametrize("method", signaling.METHODS)
def test_each_method_learns_to_communicate(method, tmp_path):
    config = tiny(method, tmp_path)
    experiment = signaling.SignalingExperiment(config)
    chance = 100 / 4
    before = experiment.evaluate("test")["success_percent"]
    assert abs(before - chance) < 10
    result = harness.train(experiment, config)
    after = result["test"]["success_percent"]
    assert after > 2 * chance and after > before + 25, (before, after)
    losses = [row["train_loss"] for row in result["history"]]
    assert losses[-1] < losses[0] - 0.2, losses
    if method in ("sfe_01", "sfe_plus"):
        # The reported loss of the 0/1 reward is the receiver's error rate.
        assert all(0 <= loss <= 1 for loss in losses)
    else:
        # A receiver that learns nothing from the symbol has NLL >= log 4.
        assert losses[-1] < math.log(4) - 0.3
    test = result["test"]
    assert all(math.isfinite(value) for value in test.values()), test
    assert test["symbols_used"] > 1


@pytest.mark.parametrize("method", ["dense", "sparsemax"])
def test_the_mlp_sender_learns_to_communicate(method, tmp_path):
    result = train(tiny(method, tmp_path, sender="mlp", epochs=4))
    assert result["test"]["success_percent"] > 60, result["test"]
    assert result["test"]["expected_success_percent"] > 50, result["test"]


def test_a_sender_blind_to_its_image_leaves_the_receiver_at_chance(tmp_path, monkeypatch):
    # The same training with the sender's input zeroed: its symbol carries no information, so
    # nothing else (the target's position, say) may let the receiver beat chance.
    original = signaling.Sender.forward
    monkeypatch.setattr(signaling.Sender, "forward", lambda self, images: original(self, 0 * images))
    result = train(tiny("sparsemax", tmp_path, epochs=4))
    assert abs(result["test"]["success_percent"] - 25) < 8, result["test"]


# ---------------------------------------------------------------------- decoder calls


@pytest.mark.parametrize("method", signaling.METHODS)
def test_decoder_calls_are_counted(method, tmp_path, monkeypatch):
    # The paper's vocabulary and game; a low temperature spreads the scores so sparsemax is sparse.
    config = tiny(
        method,
        tmp_path,
        game_size=16,
        vocab_size=256,
        batch_size=8,
        batches_per_epoch=1,
        sender_temperature=0.02,
    )
    experiment = signaling.SignalingExperiment(config)
    rows = []
    original = signaling.SignalingGame.receiver_logits

    def counting(self, candidates, example, z):
        rows.append(int(example.shape[0]))
        return original(self, candidates, example, z)

    monkeypatch.setattr(signaling.SignalingGame, "receiver_logits", counting)
    scores = []
    experiment.model.sender.register_forward_hook(
        lambda module, inputs, output: scores.append(output.detach())
    )
    (batch,) = experiment.train_batches(torch.Generator().manual_seed(0))
    out = experiment.train_step(batch, 0)
    expected = {"dense": 256, "sfe_plus": 2}.get(method, 1)
    if method == "sparsemax":
        support = sparsemax_support(scores[0])
        assert torch.equal(out["support"].long(), support)
        assert support.min() >= 1 and support.max() < 256
        assert out["calls"] == int(support.sum())
    else:
        assert torch.equal(out["support"], torch.full((8,), float(expected)))
        assert out["calls"] == 8 * expected
    assert sum(rows) == out["calls"]


def test_training_records_the_rows_decoded(tmp_path):
    result = train(tiny("dense", tmp_path, vocab_size=256, epochs=1, batches_per_epoch=2, batch_size=4))
    (row,) = result["history"]
    assert row["rows_decoded_per_example"] == 256
    assert row["calls_mean"] == row["calls_median"] == 256
    result = train(tiny("sfe_plus", tmp_path, epochs=1, batches_per_epoch=2))
    assert result["history"][0]["rows_decoded_per_example"] == 2


def test_evaluation_reports_the_sparsemax_support(tmp_path):
    config = tiny("sparsemax", tmp_path, vocab_size=256, sender_temperature=0.02, batch_size=16)
    experiment = signaling.SignalingExperiment(config)
    metrics = experiment.evaluate("valid")
    games = experiment.eval_games["valid"]
    pool = experiment.pools["valid"]
    with torch.no_grad():
        scores = experiment.model.sender(pool.features[games.target_images()])
    support = sparsemax_support(scores)
    assert metrics["support_mean"] == pytest.approx(float(support.double().mean()))
    probs = torch.zeros_like(scores, dtype=torch.bool)
    for row, size in enumerate(support):
        probs[row, scores[row].argsort(descending=True)[:size]] = True
    unions = [float(probs[i : i + 16].any(0).sum()) for i in range(0, len(games), 16)]
    assert metrics["union_calls"] == pytest.approx(np.mean(unions))
    assert metrics["union_calls"] >= metrics["support_mean"]


# ---------------------------------------------------------------------------- the loss


def test_zero_one_loss_has_the_value_of_the_error_and_the_gradient_of_the_nll(tmp_path):
    config = tiny("sfe_01", tmp_path)
    game = signaling.SignalingExperiment(config).model
    torch.manual_seed(0)
    candidates = torch.randn(6, 4, 32, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0, 1])
    example = torch.tensor([0, 1, 2, 3, 4, 5, 0, 0])
    z = torch.nn.functional.one_hot(torch.randint(32, (8,)), 32).float()
    zero_one = game.loss_fn(candidates, target)(example, z)
    logits = game.receiver_logits(candidates, example, z)
    picks = logits.argmax(-1)
    assert torch.equal(zero_one, (picks != target[example]).float())
    (gradient,) = torch.autograd.grad(zero_one.sum(), candidates)
    game.reward = "nll"
    nll = game.loss_fn(candidates, target)(example, z)
    assert torch.allclose(nll, -torch.log_softmax(logits, -1)[torch.arange(8), target[example]])
    (expected,) = torch.autograd.grad(nll.sum(), candidates)
    assert torch.allclose(gradient, expected)
    assert gradient.abs().sum() > 0


def test_relaxed_and_one_hot_messages_give_the_same_receiver_scores(tmp_path):
    game = signaling.SignalingExperiment(tiny("gumbel", tmp_path)).model
    candidates = torch.randn(5, 4, 32)
    example = torch.tensor([4, 0, 0, 3, 2, 1])
    z = torch.nn.functional.one_hot(torch.tensor([3, 3, 7, 0, 31, 5]), 32).float().requires_grad_()
    relaxed = game.receiver_logits(candidates, example, z)
    game.relaxed = False
    looked_up = game.receiver_logits(candidates, example, z.detach())
    assert torch.allclose(relaxed, looked_up, atol=1e-5)
    manual = torch.stack(
        [candidates[e] @ game.receiver.message_table()[k] for e, k in zip(example, z.argmax(-1), strict=True)]
    )
    assert torch.allclose(relaxed, manual, atol=1e-5)
    # A soft message mixes the symbols' embeddings, and its gradient reaches z.
    (gradient,) = torch.autograd.grad(relaxed.sum(), z)
    assert gradient.abs().sum() > 0


def test_paper_settings(tmp_path):
    config = signaling.SignalingConfig()
    assert (config.epochs, config.batch_size, config.batches_per_epoch) == (500, 64, 100)
    assert (config.game_size, config.vocab_size, config.hidden_size, config.embedding_size) == (
        16,
        256,
        512,
        256,
    )
    assert config.sender_temperature == 10 and config.eval_games == 9984
    assert config.dataset == "fashion-mnist"
    assert signaling.default_lr("sparsemax") == 5e-3
    assert {signaling.default_lr(m) for m in signaling.METHODS if m != "sparsemax"} == {1e-3}
    assert set(signaling.PAPER_SUCCESS) == set(signaling.METHODS) == set(signaling.ENTROPY_WEIGHTS)
    assert signaling.PAPER_SUCCESS["sparsemax"] == (93.35, 3.13)
    # The estimators get the paper's entropy bonus and Gumbel temperature.
    for method in ("sfe_01", "gumbel", "sparsemax"):
        model = signaling.SignalingExperiment(tiny(method, tmp_path, entropy_weight=None)).model
        assert model.estimator.entropy_weight == signaling.ENTROPY_WEIGHTS[method]
    game = signaling.SignalingExperiment(tiny("st_gumbel", tmp_path)).model
    gumbel = game.estimator
    assert (gumbel.tau0, gumbel.tau_min, gumbel.anneal_rate, gumbel.anneal_every) == (1.0, 0.5, 1e-5, 1000)
    # The research code's Gumbel receiver: a bias-free Linear(V -> E) with the default initialization.
    assert isinstance(game.receiver.symbols, torch.nn.Linear) and game.receiver.symbols.bias is None
    assert game.receiver.message_table().shape == (32, 32)
    assert game.receiver.message_table().abs().max() <= 1 / math.sqrt(32)
    assert isinstance(
        signaling.SignalingExperiment(tiny("dense", tmp_path)).model.receiver.symbols, torch.nn.Embedding
    )
    assert config.sender == "paper" and config.image_features == "pixels"
    # The sender is the research code's convolutions, its scores divided by the temperature.
    sender = signaling.Sender(8, 4, 6, 5, temperature=10.0)
    images = torch.randn(3, 8)
    maps = torch.sigmoid(sender.maps(sender.embed(images)[:, None, None, :]))  # (3, 6, 1, 4)
    collapsed = torch.sigmoid(sender.collapse(maps.transpose(1, 2)))  # (3, 1, 1, 4)
    expected = sender.vocabulary(collapsed.reshape(3, 4)) / 10.0
    assert torch.allclose(sender(images), expected, atol=1e-6)


def test_gumbel_temperature_follows_the_research_codes_schedule_every_1000_steps(tmp_path):
    game = signaling.SignalingExperiment(tiny("gumbel", tmp_path)).model
    estimator = game.estimator
    game.train()
    scores = torch.zeros(2, 32)

    def temperature_at(step: int) -> float:
        estimator.step.fill_(step)
        estimator(scores, lambda example, z: z.sum(-1))
        return float(estimator.temperature)

    for step, expected in [(0, 1.0), (999, 1.0), (1000, math.exp(-0.01)), (1999, math.exp(-0.01))]:
        assert temperature_at(step) == pytest.approx(expected, rel=1e-6), step
    assert temperature_at(54_321) == pytest.approx(math.exp(-1e-5 * 54_000), rel=1e-6)
    assert temperature_at(200_000) == pytest.approx(0.5)  # max(0.5, exp(-2))
    # Evaluation takes no step and keeps the temperature.
    game.eval()
    estimator(scores, lambda example, z: z.sum(-1))
    assert int(estimator.step) == 200_001 and float(estimator.temperature) == pytest.approx(0.5)


def test_expected_success_matches_a_hand_computation():
    # Two games of 3 candidates, 2-d embeddings, 3 symbols.
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])  # symbol embeddings (V, E)
    candidates = torch.tensor(
        [
            [[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]],  # symbol 0 -> 0, symbol 1 -> 1, symbol 2 -> 0
            [[0.0, 1.0], [1.0, 0.5], [-2.0, -2.0]],  # symbol 0 -> 1, symbol 1 -> 0, symbol 2 -> 2
        ]
    )
    target = torch.tensor([1, 2])
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.0, 0.9]])
    # Game 0: only symbol 1 picks candidate 1 -> 0.3.  Game 1: only symbol 2 picks 2 -> 0.9.
    got = signaling.expected_success(probs, candidates, table, target)
    assert torch.allclose(got, torch.tensor([0.3, 0.9]))
    # A one-hot distribution gives the 0/1 success of that symbol.
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.equal(
        signaling.expected_success(one_hot, candidates, table, target), torch.tensor([0.0, 1.0])
    )


@pytest.mark.parametrize("method", ["sparsemax", "gumbel"])
def test_evaluation_reports_expected_and_argmax_success(method, tmp_path):
    experiment = signaling.SignalingExperiment(tiny(method, tmp_path))
    metrics = experiment.evaluate("test")
    assert 0 <= metrics["expected_success_percent"] <= 100
    # Recompute the expected success by enumerating every symbol for every game.
    model, pool, games = experiment.model, experiment.pools["test"], experiment.eval_games["test"]
    with torch.no_grad():
        scores = model.sender(pool.features[games.target_images()])
        probs = model.estimator.distribution(scores) if method == "sparsemax" else torch.softmax(scores, -1)
        candidates = model.receiver.candidates(pool.features[games.images])
        total = 0.0
        for symbol in range(32):
            log_probs = model.receiver.log_probs(torch.full((len(games),), symbol), candidates)
            total += float((probs[:, symbol] * (log_probs.argmax(-1) == games.target)).sum())
    assert metrics["expected_success_percent"] == pytest.approx(100 * total / len(games), abs=1e-6)
    assert metrics["score_spread_images"] > 0 and metrics["score_spread_symbols"] > 0


def test_mlp_sender_and_the_score_spread_of_the_paper_sender(tmp_path):
    sender = signaling.MLPSender(8, 6, 5, temperature=10.0)
    images = torch.randn(3, 8)
    expected = sender.vocabulary(torch.tanh(sender.hidden(images))) / 10.0
    assert torch.allclose(sender(images), expected)
    game = signaling.SignalingExperiment(tiny("sparsemax", tmp_path, sender="mlp")).model
    assert isinstance(game.sender, signaling.MLPSender)
    # The spread: the standard deviation over images of each symbol's score, and over symbols.
    scores = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    spread = signaling.score_spread(scores)
    assert spread["score_spread_images"] == pytest.approx(float(np.std([0, 2], ddof=1) * 2 / 3))
    assert spread["score_spread_symbols"] == pytest.approx(1.0)
    # At initialization the paper's sender hardly depends on its input; the MLP sender does.
    features = torch.as_tensor(signaling.synthetic_features(512, 0)[0])
    torch.manual_seed(0)
    paper = signaling.score_spread(signaling.Sender(64, 256, 512, 256, temperature=10.0)(features))
    mlp = signaling.score_spread(signaling.MLPSender(64, 256, 256, temperature=10.0)(features))
    assert paper["score_spread_images"] < 0.01 * paper["score_spread_symbols"], paper
    assert mlp["score_spread_images"] > 0.1 * mlp["score_spread_symbols"], mlp


def generated_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 "images" of 16 pixels in 3 classes: each class brightens its own block of pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=count)
    pixels = rng.integers(0, 80, size=(count, 16))
    for label in range(3):
        pixels[labels == label, 5 * label : 5 * label + 5] += 150
    return pixels.astype(np.uint8), labels.astype(np.int64)


def test_classifier_features_are_trained_on_the_training_images_only_and_cached(tmp_path, monkeypatch):
    train_images, train_labels = generated_images(300, 0)
    held_out, held_out_labels = generated_images(100, 1)
    first = signaling.classifier_features(
        train_images, train_labels, {"train": train_images, "test": held_out}, hidden=8, cache_dir=tmp_path
    )
    assert first["train"].shape == (300, 8) and first["test"].shape == (100, 8)
    assert first["test"].dtype == np.float32 and (first["test"] >= 0).all()  # ReLU features
    cached = list(tmp_path.glob("classifier-*.pt"))
    assert len(cached) == 1
    # The classifier learned the classes: a nearest-class-mean rule on its held-out features works.
    means = np.stack([first["train"][train_labels == label].mean(0) for label in range(3)])
    guess = ((first["test"][:, None, :] - means[None]) ** 2).sum(-1).argmin(-1)
    assert (guess == held_out_labels).mean() > 0.9
    # The second call trains nothing: it loads the cached weights.
    monkeypatch.setattr(torch.optim, "Adam", None)
    again = signaling.classifier_features(
        train_images, train_labels, {"other": held_out[:10]}, hidden=8, cache_dir=tmp_path
    )
    assert np.array_equal(again["other"], first["test"][:10])
    monkeypatch.undo()
    # Other held-out images change nothing; other training data or seed is another classifier.
    signaling.classifier_features(train_images[:200], train_labels[:200], {}, hidden=8, cache_dir=tmp_path)
    signaling.classifier_features(train_images, train_labels, {}, hidden=8, seed=5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("classifier-*.pt"))) == 3
    # Seeded: a fresh cache gives the same features.
    fresh = signaling.classifier_features(
        train_images, train_labels, {"test": held_out}, hidden=8, cache_dir=tmp_path / "fresh"
    )
    assert np.allclose(fresh["test"], first["test"], atol=1e-6)


def test_classifier_image_features_see_only_the_training_split(tmp_path, monkeypatch):
    from experiments import data

    images, labels = generated_images(400, 2)
    splits = {
        "train": data.Split(images[:300], labels[:300], "fashion-mnist", "train"),
        "valid": data.Split(images[300:350], labels[300:350], "fashion-mnist", "valid"),
        "test": data.Split(images[350:], labels[350:], "fashion-mnist", "test"),
    }
    monkeypatch.setattr(data, "load_splits", lambda *args, **kwargs: splits)
    seen = {}
    original = signaling.classifier_features

    def spy(train_images, train_labels, arrays, **kwargs):
        seen["train"] = train_images
        return original(train_images, train_labels, arrays, hidden=8, cache_dir=tmp_path / "cache")

    monkeypatch.setattr(signaling, "classifier_features", spy)
    config = tiny(
        "sparsemax", tmp_path, dataset="fashion-mnist", image_features="classifier", max_train_examples=200
    )
    experiment = signaling.SignalingExperiment(config)
    assert np.array_equal(seen["train"], images[:300])
    pools = experiment.pools
    assert [len(pools[name]) for name in ("train", "valid", "test")] == [200, 50, 50]
    assert pools["test"].features.shape[1] == 8
    norms = pools["test"].features.norm(dim=-1)
    assert torch.all(((norms - 1).abs() < 1e-5) | (norms == 0))


# ---------------------------------------------------------------------------- games


def test_games_have_distinct_concepts_and_a_uniform_target_position():
    labels = np.repeat(np.arange(20), 4)  # 20 concepts, 4 images each
    features = torch.randn(80, 3)
    pool = signaling.Pool.build(features, np.random.default_rng(0).permutation(labels))
    games = signaling.draw_games(pool, 16_000, torch.Generator().manual_seed(0))
    assert games.images.shape == (16_000, 16) and games.target.shape == (16_000,)
    concepts = torch.as_tensor(pool_labels(pool))[games.images]
    assert all(len(set(row)) == 16 for row in concepts.tolist())
    expected = 1000.0
    positions = torch.bincount(games.target, minlength=16).double()
    assert ((positions - expected) ** 2 / expected).sum() < 60  # chi-square, 15 dof
    # Every concept is in a game equally often (16/20), anywhere (Floyd's draw alone would favour the end).
    counts = torch.bincount(concepts.reshape(-1), minlength=20).double()
    assert torch.all((counts - 12_800).abs() < 6 * math.sqrt(16_000 * 0.8 * 0.2))
    last = (concepts == 19).nonzero()[:, 1]
    spread = torch.bincount(last, minlength=16).double()
    assert ((spread - spread.mean()) ** 2 / spread.mean()).sum() < 60
    # Each image of a concept is chosen equally often.
    images = torch.bincount(games.images.reshape(-1), minlength=80).double()
    assert torch.all((images - 3200).abs() < 6 * math.sqrt(12_800 * 0.25 * 0.75))
    # The same generator draws the same games.
    again = signaling.draw_games(pool, 16_000, torch.Generator().manual_seed(0))
    assert torch.equal(again.images, games.images) and torch.equal(again.target, games.target)


def pool_labels(pool: signaling.Pool) -> np.ndarray:
    labels = np.empty(len(pool), dtype=np.int64)
    for concept, (start, count) in enumerate(zip(pool.concept_start, pool.concept_count, strict=True)):
        labels[pool.concept_images[start : start + count].numpy()] = concept
    return labels


def test_image_pools_make_every_image_a_concept():
    pool = signaling.Pool.build(torch.randn(30, 2))
    assert pool.num_concepts == 30
    games = signaling.draw_games(pool, 500, torch.Generator().manual_seed(1))
    assert all(len(set(row)) == 16 for row in games.images.tolist())
    with pytest.raises(DataError, match="16 distinct concepts but this split has only 10"):
        signaling.draw_games(signaling.Pool.build(torch.randn(10, 2)), 5, torch.Generator())


def test_evaluation_games_are_held_out_and_fixed(tmp_path):
    first = signaling.SignalingExperiment(tiny("sfe_nll", tmp_path, seed=0))
    second = signaling.SignalingExperiment(tiny("dense", tmp_path, seed=7))
    for split in ("valid", "test"):
        a, b = first.eval_games[split], second.eval_games[split]
        assert torch.equal(a.images, b.images) and torch.equal(a.target, b.target)
        assert len(a) == {"valid": 256, "test": 512}[split]
        # The games' images are held-out images, none of them a training image.
        held_out = first.pools[split].features[a.images.reshape(-1)]
        distance = torch.cdist(held_out, first.pools["train"].features)
        assert distance.min() > 1e-3
    assert first.evaluate("test") == first.evaluate("test")
    # Training games differ from epoch to epoch, and are repeated for the same epoch.
    epoch0 = first.train_batches(torch.Generator().manual_seed(0))
    epoch1 = first.train_batches(torch.Generator().manual_seed(1))
    assert not torch.equal(epoch0[0].images, epoch1[0].images)
    assert torch.equal(epoch0[0].images, second.train_batches(torch.Generator().manual_seed(0))[0].images)
    assert len(epoch0) == 100 and len(epoch0[0]) == 32
    capped = signaling.SignalingExperiment(tiny("sfe_nll", tmp_path, max_eval_examples=100))
    assert len(capped.eval_games["valid"]) == len(capped.eval_games["test"]) == 100
    assert torch.equal(capped.eval_games["test"].images, first.eval_games["test"].images[:100])


def test_fashion_mnist_games_use_normalized_pixels_and_held_out_images(tmp_path):
    from experiments import data

    try:
        splits = data.load_splits("fashion-mnist", download=False, flatten=True)
    except DataError as error:
        pytest.skip(f"Fashion-MNIST is not installed here: {error}")
    config = tiny(
        "sparsemax", tmp_path, dataset="fashion-mnist", max_train_examples=1000, max_eval_examples=64
    )
    experiment = signaling.SignalingExperiment(config)
    pools = experiment.pools
    assert [len(pools[name]) for name in ("train", "valid", "test")] == [1000, 5000, 10_000]
    pixels = torch.as_tensor(splits["valid"].images[:3], dtype=torch.float32) / 255
    assert torch.allclose(pools["valid"].features[:3], pixels / pixels.norm(dim=-1, keepdim=True))
    assert torch.allclose(pools["test"].features.norm(dim=-1), torch.ones(10_000))
    assert pools["valid"].num_concepts == 5000  # every image its own concept
    metrics = experiment.evaluate("valid")
    assert 0 <= metrics["success_percent"] <= 100


# --------------------------------------------------------------------- features files


def write_features(path, concepts=24, per_concept=10, width=12, seed=0):
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((concepts, width))
    labels = np.repeat(np.arange(concepts) * 7 + 3, per_concept)  # any integer ids
    features = prototypes[labels // 7] + 0.3 * rng.standard_normal((labels.shape[0], width))
    np.savez(path, features=features.astype(np.float32), labels=labels)
    return features, labels


def test_features_file_is_split_by_concept_and_games_show_distinct_concepts(tmp_path):
    path = tmp_path / "features.npz"
    features, labels = write_features(path)
    rows = signaling.split_by_concept(labels, 0.1, signaling.SPLIT_SEED)
    together = np.concatenate([rows["train"], rows["valid"], rows["test"]])
    assert sorted(together.tolist()) == list(range(240))  # disjoint, all rows
    for name, per_concept in (("train", 8), ("valid", 1), ("test", 1)):
        ids, counts = np.unique(labels[rows[name]], return_counts=True)
        assert len(ids) == 24 and set(counts) == {per_concept}
    again = signaling.split_by_concept(labels, 0.1, signaling.SPLIT_SEED)
    assert all(np.array_equal(rows[name], again[name]) for name in rows)

    config = tiny("sparsemax", tmp_path, features=str(path), game_size=16, epochs=2, batches_per_epoch=5)
    experiment = signaling.SignalingExperiment(config)
    train_pool = experiment.pools["train"]
    assert train_pool.num_concepts == 24 and len(train_pool) == 192
    expected = torch.as_tensor(features[rows["train"]], dtype=torch.float32)
    assert torch.allclose(train_pool.features, expected / expected.norm(dim=-1, keepdim=True), atol=1e-6)
    for split in ("valid", "test"):
        games = experiment.eval_games[split]
        concept = torch.as_tensor(labels[rows[split]])[games.images]
        assert all(len(set(row)) == 16 for row in concept.tolist())
    batch = experiment.train_batches(torch.Generator().manual_seed(0))[0]
    concept = torch.as_tensor(labels[rows["train"]])[batch.images]
    assert all(len(set(row)) == 16 for row in concept.tolist())
    result = signaling.run(config)
    assert 0 <= result["test"]["success_percent"] <= 100
    assert len(result["history"]) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"not an archive", "not a readable .npz"),
        ("single", "single array"),
        ({"features": np.ones((40, 3))}, "lacks the array.*'labels'"),
        ({"features": np.ones(40), "labels": np.arange(40)}, r"shape \(n, F\)"),
        ({"features": np.ones((40, 3), dtype=np.int64), "labels": np.arange(40)}, "must be floating"),
        ({"features": np.ones((40, 3)), "labels": np.arange(39)}, "one per row"),
        ({"features": np.ones((40, 3)), "labels": np.arange(40.0)}, "integer concept ids"),
        (
            {"features": np.where(np.eye(40, 3) > 0, np.nan, 1.0), "labels": np.arange(40)},
            "row 0 is not finite",
        ),
        (
            {"features": np.vstack([np.ones((39, 3)), np.zeros((1, 3))]), "labels": np.arange(40)},
            "row 39 is zero",
        ),
        ({"features": np.ones((40, 3)), "labels": np.arange(40) % 10}, "has 10 concepts; a game needs 16"),
        (
            {"features": np.ones((40, 3)), "labels": np.r_[np.arange(20) % 18, np.full(20, 17)]},
            "too few images",
        ),
    ],
)
def test_bad_features_files_give_clear_errors(content, message, tmp_path):
    path = tmp_path / "features.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "single":
        with path.open("wb") as stream:
            np.save(stream, np.ones((4, 3)))
    elif content is not None:
        np.savez(path, **content)
    with pytest.raises(DataError, match=message) as error:
        signaling.SignalingExperiment(tiny("sfe_nll", tmp_path, features=str(path), game_size=16))
    assert f"features file {str(path)!r}" in str(error.value)


# ------------------------------------------------------------------ resume, CLI, errors


@pytest.mark.parametrize(
    ("method", "options"), [("nvil", {}), ("gumbel", {}), ("sfe_01", {"zero_one_pick": "sample"})]
)
def test_kill_and_resume_gives_the_same_final_metrics(method, options, tmp_path, monkeypatch):
    settings = dict(epochs=4, batches_per_epoch=8, **options)
    whole = train(tiny(method, tmp_path / "whole", **settings))
    config = tiny(method, tmp_path / "killed", **settings)
    original = signaling.SignalingExperiment.train_step

    def dying(self, batch, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, batch, epoch)

    monkeypatch.setattr(signaling.SignalingExperiment, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(signaling.SignalingExperiment, "train_step", original)
    torch.manual_seed(999)  # a new process would start from another state
    resumed = train(dataclasses.replace(config, resume=True))
    assert resumed["test"] == whole["test"]
    losses = [row["train_loss"] for row in whole["history"]]
    assert [row["train_loss"] for row in resumed["history"]] == losses
    # The sampled picks draw from torch's generator, restored on resume; the losses are 0/1 error rates.
    if method == "sfe_01":
        assert all(0 <= loss <= 1 for loss in losses)


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    code = signaling.main(
        [
            "--method",
            "sparsemax",
            "--dataset",
            "synthetic",
            "--epochs",
            "2",
            "--batches-per-epoch",
            "3",
            "--hidden-size",
            "16",
            "--embedding-size",
            "16",
            "--valid-games",
            "64",
            "--eval-games",
            "128",
            "--out-dir",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "sparsemax: test communication success" in printed and "chance 6.25%" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["hidden_size"] == 16 and result["config"]["vocab_size"] == 256
    assert len(result["history"]) == 2
    assert set(result["test"]) >= {"success_percent", "nll", "symbols_used", "support_mean", "union_calls"}
    for name in ("metrics.jsonl", "metrics.csv", "checkpoint.pt", "learning_curves.png", "decoder_calls.png"):
        assert (out / name).stat().st_size > 0
    for bad in (["--method", "sfe"], ["--dataset", "imagenet"], ["--sfe-plus-loss", "acc"]):
        with pytest.raises(SystemExit):
            signaling.main(bad)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--method must be one of"):
        signaling.SignalingExperiment(tiny("sfe", tmp_path))
    with pytest.raises(ValueError, match="--sfe-baseline"):
        signaling.SignalingExperiment(tiny("sfe_nll", tmp_path, sfe_baseline="mean"))
    with pytest.raises(ValueError, match="--zero-one-pick"):
        signaling.SignalingExperiment(tiny("sfe_01", tmp_path, zero_one_pick="max"))
    with pytest.raises(ValueError, match="--eval-games must be >= 1"):
        signaling.SignalingExperiment(tiny("sfe_nll", tmp_path, eval_games=0))
    with pytest.raises(DataError, match="train split of synthetic has 20 images; a game needs 32"):
        signaling.SignalingExperiment(tiny("sfe_nll", tmp_path, game_size=32, max_train_examples=20))


def test_nan_scores_stop_training(tmp_path, monkeypatch):
    def nan_scores(self, images):
        return torch.full((images.shape[0], 32), float("nan"))

    monkeypatch.setattr(signaling.Sender, "forward", nan_scores)
    with pytest.raises((harness.TrainingDiverged, ValueError), match=r"NaN|nan"):
        train(tiny("sfe_nll", tmp_path, epochs=1))


def test_small_budget_and_table_columns_name_real_settings_and_metrics(tmp_path):
    fields = {field.name for field in dataclasses.fields(signaling.SignalingConfig)}
    assert set(signaling.SMALL_BUDGET) <= fields
    result = train(tiny("dense", tmp_path, epochs=1, batches_per_epoch=1))
    for header, key, style in signaling.TABLE_COLUMNS:
        assert key in result["test"], header
        style.format(result["test"][key])
