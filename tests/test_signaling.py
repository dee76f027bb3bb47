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
        [candidates[e] @ game.receiver.symbols.weight[k] for e, k in zip(example, z.argmax(-1), strict=True)]
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
    gumbel = signaling.SignalingExperiment(tiny("st_gumbel", tmp_path)).model.estimator
    assert (gumbel.tau0, gumbel.tau_min, gumbel.anneal_rate) == (1.0, 1.0, 0.0)
    # The sender is the research code's convolutions, its scores divided by the temperature.
    sender = signaling.Sender(8, 4, 6, 5, temperature=10.0)
    images = torch.randn(3, 8)
    maps = torch.sigmoid(sender.maps(sender.embed(images)[:, None, None, :]))  # (3, 6, 1, 4)
    collapsed = torch.sigmoid(sender.collapse(maps.transpose(1, 2)))  # (3, 1, 1, 4)
    expected = sender.vocabulary(collapsed.reshape(3, 4)) / 10.0
    assert torch.allclose(sender(images), expected, atol=1e-6)


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
