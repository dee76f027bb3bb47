"""The training harness: resume after a kill, atomic checkpoints, NaN stop, metrics, CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")

from experiments import harness  # noqa: E402


@dataclasses.dataclass
class ToyConfig(harness.RunConfig):
    """A toy config."""

    width: int = 3
    noise: float = 0.1
    tag: str | None = None


class Killed(Exception):
    pass


class ToyExperiment:
    """Noisy linear regression: uses the data order and torch's global RNG, like a real experiment."""

    def __init__(self, config: ToyConfig, kill_at: tuple[int, int] | None = None, nan_at: int | None = None):
        torch.manual_seed(config.seed)
        self.config = config
        self.inputs = torch.randn(40, config.width)
        self.targets = self.inputs @ torch.arange(1.0, config.width + 1)
        self.model = torch.nn.Linear(config.width, 1)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.05)
        self.kill_at = kill_at
        self.nan_at = nan_at
        self.steps = 0

    def train_batches(self, generator):
        order = torch.randperm(40, generator=generator)
        return [order[i : i + 8] for i in range(0, 40, 8)]

    def train_step(self, batch, epoch):
        if self.kill_at == (epoch, self.steps % 5):
            raise Killed
        self.steps += 1
        noise = self.config.noise * torch.randn(len(batch))  # the global RNG, restored on resume
        loss = ((self.model(self.inputs[batch]).squeeze(-1) - self.targets[batch] - noise) ** 2).mean()
        if self.nan_at is not None and self.steps == self.nan_at:
            loss = loss * float("nan")
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        support = torch.ones(len(batch)) * (1 + epoch % 2)
        return {"loss": loss.item(), "calls": int(support.sum()), "support": support}

    def evaluate(self, split):
        error = ((self.model(self.inputs).squeeze(-1) - self.targets) ** 2).mean()
        return {"mse": float(error), "split_is_test": float(split == "test")}


def run(tmp_path, name, **kwargs):
    config = ToyConfig(epochs=4, out_dir=str(tmp_path / name), progress=False, **kwargs)
    return harness.train(ToyExperiment(config), config)


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    reference = run(tmp_path, "whole")
    config = ToyConfig(epochs=4, out_dir=str(tmp_path / "killed"), progress=False)
    with pytest.raises(Killed):
        harness.train(ToyExperiment(config, kill_at=(2, 3)), config)
    # Two whole epochs were saved; the partial third is lost and redone.
    saved = torch.load(tmp_path / "killed" / harness.CHECKPOINT, weights_only=False)
    assert saved["epoch"] == 1
    resumed_config = dataclasses.replace(config, resume=True)
    # A fresh process: a new model with other initial weights and another RNG state.
    torch.manual_seed(12345)
    experiment = ToyExperiment(resumed_config)
    torch.nn.init.constant_(experiment.model.weight, 7.0)
    resumed = harness.train(experiment, resumed_config)
    assert resumed["test"] == reference["test"]
    strip = [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in resumed["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in reference["history"]]


def test_resume_refuses_another_config(tmp_path):
    run(tmp_path, "a")
    config = ToyConfig(epochs=4, out_dir=str(tmp_path / "a"), progress=False, resume=True, seed=3)
    with pytest.raises(ValueError, match="another config"):
        harness.train(ToyExperiment(config), config)


def test_resume_of_a_finished_run_only_evaluates(tmp_path):
    first = run(tmp_path, "done")
    again = run(tmp_path, "done", resume=True)
    assert again["test"] == first["test"]
    assert len(again["history"]) == 4


def test_metrics_files_and_calls_summary(tmp_path):
    result = run(tmp_path, "metrics")
    lines = (tmp_path / "metrics" / harness.METRICS_JSONL).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]
    csv_lines = (tmp_path / "metrics" / harness.METRICS_CSV).read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss,calls_mean,calls_median,calls_q1,calls_q3")
    assert len(csv_lines) == 5
    assert result["history"][0]["calls_median"] == 1.0
    assert result["history"][1]["calls_median"] == 2.0
    assert result["history"][1]["rows_decoded_per_example"] == 2.0
    assert result["test"]["split_is_test"] == 1.0
    assert result["history"][0]["valid_split_is_test"] == 0.0
    assert json.loads((tmp_path / "metrics" / harness.RESULT_JSON).read_text())["test"] == result["test"]
    summary = harness.calls_summary(torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0]))
    assert summary == {"calls_mean": 4.0, "calls_median": 3.0, "calls_q1": 2.0, "calls_q3": 4.0}


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    config = ToyConfig(epochs=4, out_dir=str(tmp_path / "nan"), progress=False, method="sfe", lr=0.1)
    with pytest.raises(harness.TrainingDiverged, match=r"sfe: the training loss is nan at epoch 1, step 2"):
        harness.train(ToyExperiment(config, nan_at=8), config)


def test_atomic_save_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "state.pt"
    harness.atomic_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        harness.atomic_save({"a": Unpicklable()}, path)
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_parse_config():
    config = harness.parse_config(
        ToyConfig,
        [
            "--method",
            "sfe",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--no-progress",
            "--tag",
            "x",
            "--max-train-examples",
            "none",
        ],
    )
    assert config.method == "sfe"
    assert config.batch_size == 16
    assert config.lr == 0.01
    assert config.progress is False
    assert config.tag == "x"
    assert config.max_train_examples is None
    assert harness.parse_config(ToyConfig, []) == ToyConfig()
    with pytest.raises(SystemExit):
        harness.parse_config(ToyConfig, ["--method", "nope"], choices={"method": ["sfe", "sparsemax"]})
    with pytest.raises(SystemExit):
        harness.parse_config(ToyConfig, ["--batch-size", "many"])


def test_resolve_device():
    assert harness.resolve_device("cpu").type == "cpu"
    assert harness.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            harness.resolve_device("cuda")


def test_every_option_of_every_experiment_has_help_and_bad_values_are_one_line_errors(capsys):
    from experiments import bitvector_vae, signaling, ssvae

    for module in (signaling, ssvae, bitvector_vae):
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        config_class = {
            signaling: signaling.SignalingConfig,
            ssvae: ssvae.SemiSupervisedConfig,
            bitvector_vae: bitvector_vae.BitVectorConfig,
        }[module]
        docs = harness.field_docs(config_class)
        for field in dataclasses.fields(config_class):
            assert docs.get(field.name), (module.__name__, field.name)
        assert "(one of sfe, sfe_plus" in text or "(one of sfe_nll" in text or "(one of dense" in text
    assert "--scoring {paper,standard}" in " ".join(harness_help(bitvector_vae).split())
    for module, argv, message in [
        (bitvector_vae, ["--bits", "0"], "--bits must be >= 1, got 0"),
        (bitvector_vae, ["--scoring", "odd"], "invalid choice"),
        (signaling, ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (signaling, ["--sender-temperature", "0"], "--sender-temperature must be > 0"),
        (ssvae, ["--classifier-lr", "-1"], "--classifier-lr must be >= 0"),
        (ssvae, ["--epochs", "x"], "invalid"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            module.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def harness_help(module) -> str:
    import contextlib
    import io

    stream = io.StringIO()
    with contextlib.redirect_stdout(stream), pytest.raises(SystemExit):
        module.main(["--help"])
    return stream.getvalue()


def test_field_docs_and_check_fields():
    @dataclasses.dataclass
    class Settings(harness.RunConfig):
        """Settings.

        Attributes
        ----------
        width, depth : int
            Sizes of the
            network (see :class:`Thing`).
        mode : str
            ``a`` or ``b``.
        """

        width: int = 1
        depth: int = 1
        mode: str = "a"

    docs = harness.field_docs(Settings)
    assert docs["width"] == docs["depth"] == "Sizes of the network (see Thing)."
    assert docs["mode"] == "a or b."
    assert docs["seed"].startswith("Seeds the parameters")  # from RunConfig
    harness.check_fields(Settings(), choices={"mode": ("a", "b")}, at_least={"width": 1}, positive=("depth",))
    with pytest.raises(ValueError, match="--mode must be one of a, b, got 'c'"):
        harness.check_fields(Settings(mode="c"), choices={"mode": ("a", "b")})
    with pytest.raises(ValueError, match="--width must be >= 2, got 1"):
        harness.check_fields(Settings(), at_least={"width": 2})
    with pytest.raises(ValueError, match="--depth must be > 0, got 0"):
        harness.check_fields(Settings(depth=0), positive=("depth",))
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        harness.check_run_config(Settings(batch_size=0))
    harness.check_run_config(Settings(lr=None, max_train_examples=None))
