"""The semi-supervised VAE end to end on tiny generated data, its losses, decoder calls and data fallback."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from experiments import data, harness, ssvae  # noqa: E402
from experiments.estimators import CATEGORICAL_ESTIMATORS  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one thread is as fast, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(method: str, tmp_path, **overrides) -> ssvae.SemiSupervisedConfig:
    settings = dict(
        method=method,
        dataset="synthetic",
        synthetic_size=200,
        labeled=40,
        batch_size=20,
        epochs=3,
        warmup_epochs=1,
        lr=5e-3,
        warmup_lr=5e-3,
        lr_setting="paper",
        classifier_hidden=32,
        hidden=32,
        latent_dim=4,
        eval_batch_size=50,
        out_dir=str(tmp_path / method),
        progress=False,
    )
    settings.update(overrides)
    return ssvae.SemiSupervisedConfig(**settings)


# The paper's decoder calls per unlabeled example of the methods whose count is fixed.
FIXED_CALLS = {
    "dense": 10,
    "sfe": 1,
    "nvil": 1,
    "gumbel": 1,
    "st_gumbel": 1,
    "sfe_plus": 2,
    "sum_and_sample": 2,
}


@pytest.mark.parametrize("method", CATEGORICAL_ESTIMATORS)
def test_each_method_trains_and_its_loss_decreases(method, tmp_path):
    config = tiny(method, tmp_path)
    result = ssvae.run(config)
    losses = [row["train_loss"] for row in result["history"]]
    assert len(losses) == 3
    assert losses[-1] < 0.95 * losses[0], losses
    test = result["test"]
    assert all(math.isfinite(value) for value in test.values()), test
    assert 0 <= test["accuracy_percent"] <= 100
    # The negative ELBO bounds -log p(x) >= 0 for binary images.
    assert test["negative_elbo"] > 0
    assert result["dataset"] == "synthetic"
    # 160 unlabeled images in 8 full batches of 20, each with 20 labeled images.
    calls = [row["calls_mean"] for row in result["history"]]
    rows = [row["rows_decoded_per_example"] for row in result["history"]]
    if method in FIXED_CALLS:
        assert calls == [FIXED_CALLS[method]] * 3
        assert test["support_mean"] == 10  # q is a softmax: every class has a nonzero probability
    else:
        assert all(1 <= c <= 10 for c in calls), calls
        assert 1 <= test["support_mean"] <= 10
        assert test["support_mean"] <= test["batch_union_support_mean"] <= 10
    # Rows decoded: the estimator's per unlabeled image, plus one per labeled image.
    assert rows == pytest.approx([c + 1 for c in calls])
    warmup = result["warmup"]
    assert len(warmup["history"]) == 1
    assert warmup["history"][0]["rows_decoded_per_example"] == 1
    assert result["train_seconds"] >= warmup["train_seconds"] > 0
    saved = json.loads((tmp_path / method / "result.json").read_text())
    assert saved["test"] == test and saved["dataset"] == "synthetic" and "warmup" in saved
    for name in ("metrics.jsonl", "metrics.csv", "checkpoint.pt", "learning_curves.png", "decoder_calls.png"):
        assert (tmp_path / method / name).stat().st_size > 0
    assert (tmp_path / method / "warmup" / "checkpoint.pt").stat().st_size > 0


def _fix_scores(experiment: ssvae.SemiSupervisedExperiment, scores: list[float]) -> None:
    """Make every image's classifier scores equal ``scores`` (zero last-layer weights)."""
    last = experiment.model.classifier[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(scores + [0.0] * (10 - len(scores))))


def _count_decoded_rows(experiment: ssvae.SemiSupervisedExperiment) -> list[int]:
    rows: list[int] = []
    experiment.model.decoder.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    return rows


@pytest.mark.parametrize(
    ("method", "scores", "expected"),
    [
        *((method, [0.3, -0.2], calls) for method, calls in FIXED_CALLS.items()),
        ("sparsemax", [5.0], 1),
        ("sparsemax", [3.0, 2.5], 2),
        ("sparsemax", [1.0, 1.0, 1.0], 3),
        ("sparsemax", [0.0], 10),
    ],
)
def test_decoder_calls_are_counted(method, scores, expected, tmp_path):
    experiment = ssvae.SemiSupervisedExperiment(tiny(method, tmp_path, lr=0.0))
    _fix_scores(experiment, scores)
    rows = _count_decoded_rows(experiment)
    batch = experiment.train_batches(torch.Generator().manual_seed(0))[0]
    labeled, unlabeled = batch[0].shape[0], batch[1].shape[0]
    assert (labeled, unlabeled) == (20, 20)
    out = experiment.train_step(batch, 0)
    assert out["support"].tolist() == [expected] * unlabeled
    assert out["calls"] == labeled + expected * unlabeled == sum(rows)


def test_warmup_batches_are_labeled_only_and_an_epoch_covers_the_unlabeled_images(tmp_path):
    config = tiny("dense", tmp_path, synthetic_size=210, batch_size=16)
    experiment = ssvae.SemiSupervisedExperiment(config)
    labeled = set(experiment.data.labeled.tolist())
    unlabeled = set(experiment.data.unlabeled.tolist())
    assert len(labeled) == 40 and len(unlabeled) == 170 and not labeled & unlabeled
    batches = experiment.train_batches(torch.Generator().manual_seed(3))
    assert len(batches) == math.ceil(170 / 16)
    seen = [int(i) for _, part in batches for i in part]
    assert sorted(seen) == sorted(unlabeled)
    cycled = [int(i) for part, _ in batches for i in part]
    assert all(len(part) == 16 for part, _ in batches)
    assert set(cycled) == labeled  # every labeled image comes back, in cycles
    assert all(set(cycled[start : start + 40]) == labeled for start in range(0, 160, 40))
    # The order depends only on the generator.
    again = experiment.train_batches(torch.Generator().manual_seed(3))
    assert all(
        torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True)
    )

    warm = ssvae.SemiSupervisedExperiment(config, phase="warmup", data=experiment.data)
    warm_batches = warm.train_batches(torch.Generator().manual_seed(3))
    assert sorted(int(i) for part, _ in warm_batches for i in part) == sorted(labeled)
    assert all(part.numel() == 0 for _, part in warm_batches)
    rows = _count_decoded_rows(warm)
    out = warm.train_step(warm_batches[0], 0)
    assert out["calls"] == 16 == sum(rows) and out["support"].tolist() == [1.0] * 16


def test_unlabeled_weight_scales_the_unlabeled_loss(tmp_path):
    losses = {}
    for weight in (0.0, 1.0, 9.0):
        experiment = ssvae.SemiSupervisedExperiment(tiny("dense", tmp_path, unlabeled_weight=weight))
        batch = experiment.train_batches(torch.Generator().manual_seed(0))[0]
        torch.manual_seed(7)  # the same images and codes are drawn for every weight
        losses[weight] = experiment.train_step(batch, 0)["loss"]
    unlabeled = losses[1.0] - losses[0.0]
    assert unlabeled > 100  # the unlabeled bound (nats) of a 784-pixel image
    assert losses[9.0] - losses[0.0] == pytest.approx(9 * unlabeled, rel=1e-5)


# --------------------------------------------------------------------------
# The sparsemax loss.


def _sparsemax_threshold(scores: np.ndarray) -> tuple[float, np.ndarray]:
    """tau and the support of sparsemax by sorting (Martins and Astudillo, 2016, algorithm 1)."""
    ordered = np.sort(scores)[::-1]
    cumulative = np.cumsum(ordered)
    ranks = np.arange(1, scores.size + 1)
    size = int(np.max(ranks[1 + ranks * ordered > cumulative]))
    tau = (cumulative[size - 1] - 1) / size
    return tau, scores > tau


def test_sparsemax_loss_matches_its_closed_form_and_gradient():
    generator = np.random.default_rng(0)
    scores = generator.normal(scale=1.5, size=(64, 10))
    labels = generator.integers(0, 10, size=64)
    expected, expected_grad = [], []
    for row, label in zip(scores, labels, strict=True):
        tau, support = _sparsemax_threshold(row)
        # L(s, y) = -s_y + 1/2 sum_{j in S} (s_j^2 - tau^2) + 1/2 (Martins and Astudillo, eq. 20).
        expected.append(-row[label] + 0.5 * np.sum(row[support] ** 2 - tau**2) + 0.5)
        probs = np.maximum(row - tau, 0.0)
        expected_grad.append(probs - np.eye(10)[label])
    s = torch.tensor(scores, requires_grad=True)
    y = torch.tensor(labels)
    loss = ssvae.sparsemax_loss(s, y)
    assert loss.dtype == torch.float64 and loss.shape == (64,)
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    assert torch.all(loss >= -1e-12)
    loss.sum().backward()
    np.testing.assert_allclose(s.grad.numpy(), np.array(expected_grad), rtol=1e-10, atol=1e-12)


def test_sparsemax_loss_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 5, generator=generator, dtype=torch.float64) * 2
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    assert torch.autograd.gradcheck(lambda s: ssvae.sparsemax_loss(s, labels), (scores.requires_grad_(),))


def test_sparsemax_loss_is_zero_exactly_at_a_margin_of_one():
    labels = torch.tensor([0, 0, 0])
    scores = torch.tensor([[2.0, 1.0, 0.0], [1.5, 1.0, 0.0], [0.0, 1.0, 0.0]])
    loss = ssvae.sparsemax_loss(scores, labels)
    assert loss[0] == 0  # sparsemax(s) = e_0
    assert loss[1] > 0 and loss[2] > loss[1]
    assert torch.equal(ssvae.classification_loss("sparsemax", scores, labels), loss)
    softmax_loss = ssvae.classification_loss("dense", scores, labels)
    torch.testing.assert_close(
        softmax_loss, torch.nn.functional.cross_entropy(scores, labels, reduction="none")
    )
    assert softmax_loss[0] > 0  # the cross-entropy of a softmax is never 0


# --------------------------------------------------------------------------
# Evaluation, data, resume, command line.


@pytest.mark.parametrize("method", ["dense", "sparsemax"])
def test_evaluation_is_exact_over_the_support_and_leaves_the_random_state_alone(method, tmp_path):
    experiment = ssvae.SemiSupervisedExperiment(tiny(method, tmp_path, eval_batch_size=128))
    _fix_scores(experiment, [1.0, 0.8, 0.6, -1.0])
    model = experiment.model.eval()
    state = torch.get_rng_state()
    metrics = experiment.evaluate("valid")
    assert torch.equal(torch.get_rng_state(), state)
    assert experiment.evaluate("valid") == metrics
    # The same bound by brute force: every class, weighted by q (zero weights drop out).
    with torch.no_grad():
        images = experiment.data.eval_images["valid"].float()
        probs = model.distribution(model.scores(images))
        noise = torch.randn(
            (int((probs > 0).sum()), model.latent_dim),
            generator=torch.Generator().manual_seed(ssvae.EVAL_NOISE_SEED),
        )
        example, category = torch.nonzero(probs, as_tuple=True)
        per_class = torch.zeros(probs.shape, device=probs.device)
        per_class[example, category] = model.negative_elbo_given_class(
            images[example], torch.nn.functional.one_hot(category, 10).float(), noise.to(probs.device)
        )
        entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
        expected = (probs * per_class).sum(-1) - entropy + math.log(10)
    assert metrics["negative_elbo"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert metrics["support_mean"] == (10 if method == "dense" else 3)
    labels = experiment.data.eval_labels["valid"]
    assert metrics["accuracy_percent"] == pytest.approx(100 * float((labels == 0).float().mean()))


def _fake_splits(name: str) -> dict[str, data.Split]:
    images, labels = ssvae.synthetic_digits(300, seed=5)
    parts = {"train": slice(0, 200), "valid": slice(200, 250), "test": slice(250, 300)}
    return {split: data.Split(images[part], labels[part], name, split) for split, part in parts.items()}


def test_mnist_falls_back_to_fashion_mnist_with_a_notice(tmp_path, monkeypatch, capsys):
    requests = []

    def load_splits(name, data_dir=None, download=True, *, valid_size=5000, flatten=False):
        requests.append((name, download, valid_size, flatten))
        if name == "mnist":
            raise data.DataError("MNIST: train-images-idx3-ubyte.gz not found\nLooked in ...")
        return _fake_splits(name)

    monkeypatch.setattr(data, "load_splits", load_splits)
    config = tiny("sparsemax", tmp_path, dataset="mnist", labeled=None, download=False)
    loaded = ssvae.load_data(config)
    assert loaded.dataset == "fashion-mnist"
    notice = capsys.readouterr().err
    assert "falling back to fashion-mnist" in notice and "MNIST" in notice
    assert requests == [
        ("mnist", False, data.SEMISUPERVISED_VALID_SIZE, True),
        ("fashion-mnist", False, data.SEMISUPERVISED_VALID_SIZE, True),
    ]
    # 10% of the 200 training images keep their label, class-balanced.
    assert loaded.labeled.shape == (20,) and loaded.unlabeled.shape == (180,)
    assert torch.bincount(loaded.train_labels[loaded.labeled], minlength=10).tolist() == [2] * 10
    assert set(loaded.eval_images["test"].unique().tolist()) <= {0, 1}

    # Within notices_once (a compare run), the notice is printed for the first load only.
    with ssvae.notices_once():
        for _ in range(3):
            ssvae.load_data(config)
    assert capsys.readouterr().err.count("falling back to fashion-mnist") == 1
    ssvae.load_data(config)
    assert capsys.readouterr().err.count("falling back to fashion-mnist") == 1

    # Fashion-MNIST asked for directly: no fallback, and its failure is reported as is.
    requests.clear()
    assert ssvae.load_data(dataclasses.replace(config, dataset="fashion-mnist")).dataset == "fashion-mnist"
    assert [name for name, *_ in requests] == ["fashion-mnist"]
    assert capsys.readouterr().err == ""

    def missing(name, *args, **kwargs):
        raise data.DataError(f"{name}: not found")

    monkeypatch.setattr(data, "load_splits", missing)
    with pytest.raises(data.DataError, match="fashion-mnist: not found"):
        ssvae.load_data(config)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="labeled"):
        ssvae.load_data(tiny("dense", tmp_path, labeled=200))
    with pytest.raises(ValueError, match="method"):
        ssvae.SemiSupervisedExperiment(tiny("topk_sparsemax", tmp_path))
    with pytest.raises(ValueError, match="phase"):
        ssvae.SemiSupervisedExperiment(tiny("dense", tmp_path), phase="pretraining")
    with pytest.raises(ValueError, match="--lr-setting"):
        ssvae.SemiSupervisedExperiment(tiny("dense", tmp_path, lr_setting="fast"))
    with pytest.raises(ValueError, match="--hidden-layers"):
        ssvae.SemiSupervisedExperiment(tiny("dense", tmp_path, hidden_layers=0))
    with pytest.raises(ValueError, match="--classifier-lr"):
        ssvae.SemiSupervisedExperiment(tiny("dense", tmp_path, classifier_lr=-1.0))


def test_classifier_and_the_rest_have_their_own_learning_rates_saved_and_restored(tmp_path):
    def rates(experiment):
        return {group["name"]: group["lr"] for group in experiment.optimizer.param_groups}

    stable = ssvae.SemiSupervisedExperiment(tiny("nvil", tmp_path, lr=None, lr_setting="stable"))
    assert rates(stable) == {"classifier": 1e-4, "model": 1e-3}
    # The groups hold every parameter once; the classifier's group exactly the classifier's.
    groups = stable.optimizer.param_groups
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in stable.model.classifier.parameters()}
    assert sorted(id(p) for group in groups for p in group["params"]) == sorted(
        id(p) for p in stable.model.parameters()
    )
    paper = ssvae.SemiSupervisedExperiment(tiny("sparsemax", tmp_path, lr=None, lr_setting="paper"))
    assert rates(paper) == {"classifier": 5e-4, "model": 5e-4}
    explicit = ssvae.SemiSupervisedExperiment(tiny("dense", tmp_path, classifier_lr=2e-4))
    assert rates(explicit) == {"classifier": 2e-4, "model": 5e-3}
    warm = ssvae.SemiSupervisedExperiment(tiny("dense", tmp_path, classifier_lr=2e-4), phase="warmup")
    assert rates(warm) == {"classifier": 5e-3, "model": 5e-3}
    # A zero classifier rate freezes the classifier and nothing else.
    config = tiny("dense", tmp_path, classifier_lr=0.0, epochs=1, warmup_epochs=0)
    frozen = ssvae.SemiSupervisedExperiment(config)
    before = [p.detach().clone() for p in frozen.model.classifier.parameters()]
    decoder_before = [p.detach().clone() for p in frozen.model.decoder.parameters()]
    harness.train(frozen, config)
    assert all(torch.equal(a, b) for a, b in zip(before, frozen.model.classifier.parameters(), strict=True))
    assert not all(
        torch.equal(a, b) for a, b in zip(decoder_before, frozen.model.decoder.parameters(), strict=True)
    )
    # The rates are saved in the checkpoint and a resumed run gets them back.
    config = tiny("dense", tmp_path / "saved", classifier_lr=3e-4, epochs=1, warmup_epochs=0)
    harness.train(ssvae.SemiSupervisedExperiment(config), config)
    saved = torch.load(tmp_path / "saved" / "dense" / harness.CHECKPOINT, weights_only=False)
    assert [group["lr"] for group in saved["optimizer"]["param_groups"]] == [3e-4, 5e-3]
    assert saved["config"]["classifier_lr"] == 3e-4
    same = dataclasses.replace(config, resume=True)
    resumed = ssvae.SemiSupervisedExperiment(same)
    for group in resumed.optimizer.param_groups:
        group["lr"] = 1.0
    harness.train(resumed, same)
    assert rates(resumed) == {"classifier": 3e-4, "model": 5e-3}


def test_networks_follow_the_research_code(tmp_path):
    model = ssvae.SemiSupervisedExperiment(tiny("nvil", tmp_path, classifier_hidden=256, hidden=128)).model
    shapes = lambda net: [tuple(m.weight.shape) for m in net if isinstance(m, torch.nn.Linear)]  # noqa: E731
    assert shapes(model.estimator.baseline_net) == [(512, 784), (512, 512), (512, 512), (1, 512)]
    assert shapes(model.encoder) == [(128, 794), (128, 128), (8, 128)]
    assert shapes(model.decoder) == [(128, 14), (128, 128), (784, 128)]
    assert shapes(model.classifier) == [(256, 784), (256, 256), (256, 256), (10, 256)]
    one = ssvae.SemiSupervisedExperiment(tiny("dense", tmp_path, hidden_layers=1)).model
    assert shapes(one.encoder) == [(32, 794), (8, 32)]


@pytest.mark.parametrize(
    ("method", "phase", "kill_epoch"), [("nvil", "semi-supervised", 2), ("sparsemax", "warmup", 1)]
)
def test_kill_and_resume_gives_the_same_final_metrics(method, phase, kill_epoch, tmp_path, monkeypatch):
    settings = dict(warmup_epochs=2, epochs=3, synthetic_size=120, labeled=20)
    whole = ssvae.run(tiny(method, tmp_path / "whole", **settings))
    config = tiny(method, tmp_path / "killed", **settings)
    original = ssvae.SemiSupervisedExperiment.train_step

    def dying(self, batch, epoch):
        if self.phase == phase and epoch == kill_epoch:
            raise KeyboardInterrupt
        return original(self, batch, epoch)

    monkeypatch.setattr(ssvae.SemiSupervisedExperiment, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        ssvae.run(config)
    monkeypatch.setattr(ssvae.SemiSupervisedExperiment, "train_step", original)
    torch.manual_seed(999)  # a new process would start from another state
    resumed = ssvae.run(dataclasses.replace(config, resume=True))
    assert resumed["test"] == whole["test"]
    assert [row["train_loss"] for row in resumed["history"]] == [
        row["train_loss"] for row in whole["history"]
    ]
    assert resumed["warmup"]["test"] == whole["warmup"]["test"]
    assert len(resumed["history"]) == 3 and len(resumed["warmup"]["history"]) == 2


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    code = ssvae.main(
        [
            "--method",
            "sum_and_sample",
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "100",
            "--labeled",
            "20",
            "--epochs",
            "2",
            "--warmup-epochs",
            "0",
            "--classifier-hidden",
            "16",
            "--hidden",
            "16",
            "--out-dir",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "sum_and_sample on synthetic: test accuracy" in printed and "decoder calls 2.00" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["labeled"] == 20 and result["config"]["lr"] is None
    assert len(result["history"]) == 2 and "warmup" not in result
    assert set(result["test"]) == {"accuracy_percent", "negative_elbo", "support_mean"}
    assert not (out / "warmup").exists()
    with pytest.raises(SystemExit):
        ssvae.main(["--method", "sparsemap"])


def test_paper_constants():
    assert set(ssvae.PAPER_ACCURACY) == set(CATEGORICAL_ESTIMATORS)
    assert ssvae.PAPER_ACCURACY["sparsemax"] == (96.87, 1.01)
    assert {method: ssvae.default_lr(method) for method in CATEGORICAL_ESTIMATORS} == {
        "sparsemax": 5e-4,
        "dense": 1e-3,
        "nvil": 1e-3,
        "sum_and_sample": 1e-3,
        "gumbel": 1e-3,
        "st_gumbel": 1e-3,
        "sfe": 1e-4,
        "sfe_plus": 1e-4,
    }
    config = ssvae.SemiSupervisedConfig()
    assert (config.dataset, config.epochs, config.warmup_epochs, config.batch_size) == ("mnist", 200, 100, 64)
    assert (config.unlabeled_weight, config.weight_decay, config.valid_size) == (9.0, 1e-5, 10_000)
    keys = {key for _, key, _ in ssvae.TABLE_COLUMNS}
    assert keys <= {"accuracy_percent", "negative_elbo", "support_mean", "batch_union_support_mean"}
    assert set(ssvae.SMALL_BUDGET) <= {field.name for field in dataclasses.fields(ssvae.SemiSupervisedConfig)}


def test_docstring_examples():
    import doctest

    result = doctest.testmod(ssvae, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2 and result.failed == 0


def test_compare_has_a_supervised_only_row_and_per_seed_results(tmp_path):
    from experiments import compare

    overrides = dict(
        dataset="synthetic",
        synthetic_size=100,
        labeled=20,
        batch_size=20,
        epochs=1,
        warmup_epochs=1,
        classifier_hidden=16,
        hidden=16,
        latent_dim=4,
        eval_batch_size=50,
        progress=False,
        max_eval_examples=None,
    )
    table, results = compare.compare("ssvae", ["dense", "sfe"], overrides, tmp_path, seeds=2)
    assert [len(runs) for runs in results.values()] == [2, 2]
    assert [run["config"]["seed"] for run in results["sfe"]] == [0, 1]
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines()[2:]}
    assert set(rows) == {"dense", "sfe", compare.SUPERVISED_ONLY}
    # The supervised-only row is the warm start's test accuracy, mean ± std over the seeds.
    warm = [run["warmup"]["test"]["accuracy_percent"] for run in results["dense"]]
    mean, std = float(np.mean(warm)), float(np.std(warm, ddof=1))
    assert f"{mean:.2f} ± {std:.2f}" in rows[compare.SUPERVISED_ONLY]
    lines = (tmp_path / "ssvae" / "results.csv").read_text().splitlines()
    assert lines[0].startswith("method,seed,accuracy_percent,")
    assert len(lines) == 1 + 2 * 3
