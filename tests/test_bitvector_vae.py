"""The bit-vector VAE end to end on tiny generated data, its likelihood estimate, and the comparison."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from experiments import bitvector_vae, compare, harness  # noqa: E402
from experiments.estimators import BITVECTOR_ESTIMATORS  # noqa: E402


def tiny(method: str, tmp_path, **overrides) -> bitvector_vae.BitVectorConfig:
    settings = dict(
        method=method,
        dataset="synthetic",
        synthetic_size=96,
        bits=6,
        k=4,
        hidden=32,
        batch_size=32,
        epochs=4,
        lr=5e-3,
        importance_samples=8,
        eval_samples=2,
        max_eval_examples=16,
        out_dir=str(tmp_path / method),
        progress=False,
    )
    settings.update(overrides)
    return bitvector_vae.BitVectorConfig(**settings)


@pytest.mark.parametrize("method", BITVECTOR_ESTIMATORS)
def test_each_method_trains_and_its_loss_decreases(method, tmp_path):
    config = tiny(method, tmp_path)
    result = bitvector_vae.run(config)
    losses = [row["train_loss"] for row in result["history"]]
    assert losses[-1] < losses[0] - 10, losses
    test = result["test"]
    assert all(math.isfinite(value) for value in test.values()), test
    assert test["rate"] >= -1e-9
    assert test["rate"] <= config.bits * math.log(2) + 1e-9
    assert test["negative_elbo"] == pytest.approx(test["rate"] + test["distortion"])
    # The ELBO bounds the likelihood: NLL (nats) <= negative ELBO, up to the estimate's noise.
    assert test["nll_bits_per_dim"] * 784 * math.log(2) <= test["negative_elbo"] + 5.0
    calls = [row["rows_decoded_per_example"] for row in result["history"]]
    expected = {"sfe": 1.0, "nvil": 1.0, "gumbel": 1.0, "st_gumbel": 1.0, "sfe_plus": 2.0}
    if method in expected:
        assert calls == [expected[method]] * 4
    else:
        assert all(
            1.0 <= c <= {"topk_sparsemax": 4, "sparsemap": 7, "sparsemap_budget": 7}[method] for c in calls
        )
        # Rows decoded equal the support sizes recorded per example.
        assert [row["calls_mean"] for row in result["history"]] == pytest.approx(calls)
    for name in (
        "metrics.jsonl",
        "metrics.csv",
        "result.json",
        "checkpoint.pt",
        "learning_curves.png",
        "decoder_calls.png",
    ):
        assert (tmp_path / method / name).stat().st_size > 0


@pytest.mark.parametrize("method", ["gumbel", "sparsemap", "nvil"])
def test_kill_and_resume_gives_the_same_final_metrics(method, tmp_path, monkeypatch):
    whole = bitvector_vae.run(tiny(method, tmp_path / "whole"))
    config = tiny(method, tmp_path / "killed")
    original = bitvector_vae.BitVectorExperiment.train_step

    def dying(self, batch, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, batch, epoch)

    monkeypatch.setattr(bitvector_vae.BitVectorExperiment, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        bitvector_vae.run(config)
    monkeypatch.setattr(bitvector_vae.BitVectorExperiment, "train_step", original)
    torch.manual_seed(999)  # a new process would start from another state
    resumed = bitvector_vae.run(dataclasses.replace(config, resume=True))
    assert resumed["test"] == whole["test"]
    assert [row["train_loss"] for row in resumed["history"]] == [
        row["train_loss"] for row in whole["history"]
    ]


@pytest.mark.parametrize("method", ["sfe", "sparsemap", "topk_sparsemax"])
def test_importance_sampling_matches_the_exact_likelihood(method, tmp_path):
    torch.manual_seed(0)
    config = tiny(method, tmp_path, bits=4, k=3, epochs=2)
    experiment = bitvector_vae.BitVectorExperiment(config)
    if method != "sfe":
        # Training makes the sparse support nontrivial.  (A trained Bernoulli
        # proposal may miss a mode of p(x | z): importance sampling is then
        # right only in the limit, so the sampling method is checked untrained.)
        for batch in experiment.train_batches(torch.Generator().manual_seed(0)):
            experiment.train_step(batch, 0)
    experiment.model.eval()
    images = experiment.data["test"][:4]
    exact = bitvector_vae.exact_log_likelihood(experiment.model, images)
    samples = 2000
    estimate = bitvector_vae.log_likelihood(experiment.model, images, samples=samples)
    tolerance = torch.full_like(exact, 0.05)
    if method == "sfe":
        # Four standard errors of the estimate, from the exact variance of the
        # importance weights w = p(x | z) p(z) / q(z) under q (16 codes).
        codes = torch.tensor([[(i >> b) & 1 for b in range(4)] for i in range(16)], dtype=torch.float32)
        logits = experiment.model.scores(images)
        for n in range(images.shape[0]):
            log_q = -torch.nn.functional.binary_cross_entropy_with_logits(
                logits[n].expand(16, -1), codes, reduction="none"
            ).sum(-1)
            log_joint = -experiment.model.decoder.negative_log_likelihood(
                codes, images[n].expand(16, -1)
            ) - 4 * math.log(2)
            log_second_moment = torch.logsumexp(2 * log_joint - log_q, 0)
            relative_variance = torch.exp(log_second_moment - 2 * exact[n]) - 1
            tolerance[n] = 4 * torch.sqrt(relative_variance.clamp_min(0) / samples) + 0.01
    assert torch.all((estimate - exact).abs() <= tolerance), (estimate - exact, tolerance)
    # A crude estimate is worse, so the comparison can fail.
    crude = bitvector_vae.log_likelihood(experiment.model, images, samples=1)
    assert not torch.allclose(crude, exact, rtol=0, atol=0.05)


def test_exact_log_likelihood_refuses_large_codes(tmp_path):
    experiment = bitvector_vae.BitVectorExperiment(tiny("sfe", tmp_path, bits=20))
    with pytest.raises(ValueError, match="too large"):
        bitvector_vae.exact_log_likelihood(experiment.model, experiment.data["test"][:1])


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli"
    code = bitvector_vae.main(
        [
            "--method",
            "topk_sparsemax",
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "64",
            "--bits",
            "5",
            "--epochs",
            "2",
            "--importance-samples",
            "4",
            "--max-eval-examples",
            "8",
            "--out-dir",
            str(out),
            "--no-progress",
            "--hidden",
            "16",
        ]
    )
    assert code == 0
    assert "topk_sparsemax: test NLL" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["bits"] == 5
    assert len(result["history"]) == 2
    with pytest.raises(SystemExit):
        bitvector_vae.main(["--method", "dense"])


def test_nan_loss_stops_training(tmp_path, monkeypatch):
    config = tiny("sfe", tmp_path)

    def nan_scores(self, images):
        return torch.full((images.shape[0], self.bits), float("nan"))

    monkeypatch.setattr(bitvector_vae.BitVectorVAE, "scores", nan_scores)
    with pytest.raises((harness.TrainingDiverged, ValueError), match=r"NaN|nan"):
        bitvector_vae.run(config)


def test_compare_writes_a_table_and_plots(tmp_path):
    overrides = dict(
        dataset="synthetic",
        synthetic_size=64,
        bits=5,
        k=3,
        hidden=16,
        epochs=2,
        importance_samples=4,
        max_eval_examples=8,
        progress=False,
    )
    table, _ = compare.compare("bitvector", ["sfe", "sparsemap"], overrides, tmp_path)
    lines = table.splitlines()
    assert lines[0].startswith("| method | NLL (bits/dim) |")
    assert lines[2].startswith("| sfe |") and lines[3].startswith("| sparsemap |")
    assert "3.72" not in table  # the paper's numbers are shown for D = 32 and 128 only
    for name in ("table.md", "learning_curves.png", "decoder_calls.png", "rate_distortion.png"):
        assert (tmp_path / "bitvector" / name).stat().st_size > 0
    # A second call reuses the finished runs.
    again, _ = compare.compare("bitvector", ["sfe", "sparsemap"], overrides, tmp_path)
    assert again == table
    with pytest.raises(ValueError, match="unknown methods"):
        compare.compare("bitvector", ["dense"], overrides, tmp_path)
    # Several seeds: mean ± std in the table, one CSV row per method and seed.
    table, results = compare.compare(
        "bitvector", ["sfe", "sparsemap"], overrides, tmp_path / "seeds", seeds=3
    )
    assert lines[0].replace("| method |", "| method | seeds |") == table.splitlines()[0]
    values = [run["test"]["negative_elbo"] for run in results["sfe"]]
    assert [run["config"]["seed"] for run in results["sfe"]] == [0, 1, 2]
    assert len(set(values)) == 3
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    sfe_row = next(line for line in table.splitlines() if line.startswith("| sfe |"))
    assert "| 3 |" in sfe_row and f"{mean:.1f} ± {std:.1f}" in sfe_row
    rows = (tmp_path / "seeds" / "bitvector" / "results.csv").read_text().splitlines()
    assert rows[0].startswith("method,seed,nll_bits_per_dim,negative_elbo") and len(rows) == 7
    assert rows[1].startswith("sfe,0,") and rows[3].startswith("sfe,2,")
    assert (tmp_path / "seeds" / "bitvector" / "sfe" / "seed2" / "result.json").exists()
    with pytest.raises(ValueError, match="seeds"):
        compare.compare("bitvector", ["sfe"], overrides, tmp_path, seeds=0)


def test_compare_command_line(tmp_path, capsys):
    code = compare.main(
        [
            "bitvector",
            "--methods",
            "sfe",
            "--out-dir",
            str(tmp_path),
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "64",
            "--bits",
            "4",
            "--epochs",
            "1",
            "--importance-samples",
            "2",
            "--max-eval-examples",
            "4",
            "--hidden",
            "8",
            "--no-progress",
        ]
    )
    assert code == 0
    assert "| sfe |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        compare.main(["bitvector", "--no-such-option", "1"])
    with pytest.raises(SystemExit):
        compare.main(["nothing"])
    capsys.readouterr()
    for argv, message in [
        (["bitvector", "--bits", "0"], "--bits must be >= 1, got 0"),
        (["bitvector", "--seeds", "0"], "--seeds"),
        (["all", "--methods", "nothing"], "no experiment has the methods nothing"),
        (["signaling", "--methods", "topk_sparsemax"], "unknown methods topk_sparsemax"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            compare.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_reuse_freed_memory_applies_on_glibc():
    import platform
    import sys

    applied = harness.reuse_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied
    # The decoder's likelihood is still the 256-way cross-entropy of every pixel.
    model = bitvector_vae.BitVectorVAE(bitvector_vae.BitVectorConfig(bits=4, hidden=8, method="sfe"))
    z = torch.bernoulli(torch.full((3, 4), 0.5))
    images = torch.randint(0, 256, (3, bitvector_vae.PIXELS), dtype=torch.uint8)
    logits = model.decoder.pixel(model.decoder.body(z).reshape(3, bitvector_vae.PIXELS, 5))
    expected = -torch.log_softmax(logits, -1).gather(-1, images.long()[..., None]).squeeze(-1).sum(-1)
    assert torch.allclose(model.decoder.negative_log_likelihood(z, images.long()), expected, atol=1e-3)
