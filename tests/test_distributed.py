"""The experiments under ``torchrun``: 2 gloo processes on CPU train exactly like 1 process.

Each run is a subprocess (``tests/distributed_worker.py``, under
``python -m torch.distributed.run`` for 2 processes) on generated data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("this build of PyTorch has no torch.distributed", allow_module_level=True)

from experiments import distributed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"

pytestmark = pytest.mark.slow

# Small runs whose steps are deterministic (exact marginalization; for the
# semi-supervised VAE also fixed binarization and noise), batches divisible by 2.
SETTINGS = {
    "bitvector": dict(
        method="sparsemap",
        dataset="synthetic",
        synthetic_size=64,
        bits=6,
        hidden=16,
        batch_size=16,
        epochs=2,
        lr=5e-3,
        importance_samples=2,
        eval_samples=2,
        max_eval_examples=12,
        eval_batch_size=4,
    ),
    "signaling": dict(
        method="sparsemax",
        dataset="synthetic",
        game_size=4,
        vocab_size=16,
        hidden_size=16,
        embedding_size=16,
        batch_size=16,
        batches_per_epoch=3,
        epochs=2,
        lr=0.01,
        valid_games=32,
        eval_games=32,
    ),
    "ssvae": dict(
        method="sparsemax",
        dataset="synthetic",
        synthetic_size=80,
        labeled=16,
        batch_size=8,
        epochs=1,
        warmup_epochs=1,
        lr=5e-3,
        warmup_lr=5e-3,
        classifier_hidden=16,
        hidden=16,
        latent_dim=4,
        eval_batch_size=40,
    ),
}


def run(
    experiment: str, settings: dict, out: Path, *, processes: int, kill_after: int = 0
) -> subprocess.CompletedProcess:
    spec = {
        "experiment": experiment,
        "settings": {**settings, "out_dir": str(out / "run"), "progress": False, "device": "cpu"},
        "probe_dir": str(out / "probe"),
        "deterministic": experiment == "ssvae",
        "kill_after": kill_after,
    }
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["MPLBACKEND"] = "Agg"
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command += [str(WORKER), json.dumps(spec)]
    return subprocess.run(
        command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def final(out: Path, process: int) -> dict:
    return torch.load(out / "probe" / f"final-rank{process}.pt")


@pytest.mark.parametrize("experiment", list(SETTINGS))
def test_two_processes_take_the_steps_of_one(experiment, tmp_path):
    one = run(experiment, SETTINGS[experiment], tmp_path / "one", processes=1)
    assert one.returncode == 0, one.stderr
    two = run(experiment, SETTINGS[experiment], tmp_path / "two", processes=2)
    assert two.returncode == 0, two.stderr

    single, rank0, rank1 = final(tmp_path / "one", 0), final(tmp_path / "two", 0), final(tmp_path / "two", 1)
    # Each process trains on its half of every batch ...
    assert rank0["examples"] == rank1["examples"] == single["examples"] // 2
    # ... the replicas stay identical, and equal the single process that saw each whole global batch.
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), name
        torch.testing.assert_close(value, single["params"][name], rtol=1e-9, atol=1e-10, msg=name)
    assert rank0["grads"].keys() == single["grads"].keys()
    for name, grad in rank0["grads"].items():
        torch.testing.assert_close(grad, rank1["grads"][name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(grad, single["grads"][name], rtol=1e-9, atol=1e-10, msg=name)

    result_one = json.loads((tmp_path / "one" / "run" / "result.json").read_text())
    result_two = json.loads((tmp_path / "two" / "run" / "result.json").read_text())
    assert (result_one["world_size"], result_two["world_size"]) == (1, 2)
    # Epoch metrics combine the processes exactly: sums of calls, losses weighted by examples.
    for row_one, row_two in zip(result_one["history"], result_two["history"], strict=True):
        for key in ("train_loss", "rows_decoded_per_example", "calls_mean", "calls_median"):
            assert row_two[key] == pytest.approx(row_one[key], rel=1e-9), key
    assert result_two["test"].keys() == result_one["test"].keys()
    if experiment == "bitvector":
        # Its evaluation is split across the processes (3 chunks: 2 on rank 0, 1 on rank 1) and
        # gathered; the exact metrics (all but the sampled likelihood) match one process's.
        for key in ("negative_elbo", "rate", "distortion", "support_mean"):
            assert result_two["test"][key] == pytest.approx(result_one["test"][key], rel=1e-9), key

    # Rank 0 writes every file; the other process writes none.
    assert not (tmp_path / "two" / "probe" / "writes-rank1.log").exists()
    written = set((tmp_path / "two" / "probe" / "writes-rank0.log").read_text().split())
    assert {"checkpoint.pt", "metrics.jsonl", "metrics.csv", "result.json"} <= written
    assert (tmp_path / "two" / "run" / "learning_curves.png").exists()


def test_a_killed_two_process_run_resumes_to_the_same_result(tmp_path):
    # A sampling estimator: each process draws its own samples, seeded per (seed, epoch, rank).
    settings = {**SETTINGS["bitvector"], "method": "gumbel", "epochs": 3}
    whole = run("bitvector", settings, tmp_path / "whole", processes=2)
    assert whole.returncode == 0, whole.stderr

    killed = run("bitvector", settings, tmp_path / "cut", processes=2, kill_after=2)
    assert killed.returncode != 0
    assert not (tmp_path / "cut" / "run" / "result.json").exists()
    checkpoint = torch.load(tmp_path / "cut" / "run" / "checkpoint.pt", weights_only=False)
    assert (checkpoint["epoch"], checkpoint["world_size"]) == (1, 2)

    resumed = run("bitvector", {**settings, "resume": True}, tmp_path / "cut", processes=2)
    assert resumed.returncode == 0, resumed.stderr
    expected = json.loads((tmp_path / "whole" / "run" / "result.json").read_text())
    got = json.loads((tmp_path / "cut" / "run" / "result.json").read_text())
    assert got["history"][-1]["train_loss"] == expected["history"][-1]["train_loss"]
    assert got["test"] == expected["test"]
    for name, value in final(tmp_path / "whole", 0)["params"].items():
        assert torch.equal(final(tmp_path / "cut", 1)["params"][name], value), name

    # Resuming with another number of processes is refused with a clear error.
    again = run("bitvector", {**settings, "resume": True}, tmp_path / "cut", processes=1)
    assert again.returncode != 0
    assert "resume with the same number of processes" in again.stderr


def test_shard_splits_like_distributed_sampler():
    batch = torch.arange(5)
    parts = [distributed.shard(batch, rank, 2) for rank in range(2)]
    # DistributedSampler without shuffling: rank::2, padded by repeating the first rows.
    assert parts[0].tolist() == [0, 2, 4]
    assert parts[1].tolist() == [1, 3, 0]
    pair = distributed.shard((torch.arange(4), torch.zeros(0, dtype=torch.int64)), 1, 2)
    assert pair[0].tolist() == [1, 3]
    assert pair[1].shape == (0,)
    assert distributed.shard(batch, 0, 1) is batch


def test_one_process_uses_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.init_from_environment(torch.device("cpu"))
    assert distributed.world_size() == 1
    assert distributed.is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "zero")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        distributed.world_size()


@pytest.mark.parametrize("experiment", list(SETTINGS))
def test_configs_round_trip_through_the_command_line(experiment, tmp_path):
    from experiments import compare, harness

    config_class = compare.EXPERIMENTS[experiment].config_class()
    module = compare.EXPERIMENTS[experiment].load()
    for settings in (
        {},
        module.SMALL_BUDGET,
        {**SETTINGS[experiment], "resume": True, "max_train_examples": None},
    ):
        config = config_class(**settings, out_dir=str(tmp_path))
        assert harness.parse_config(config_class, harness.to_arguments(config)) == config


def test_compare_runs_each_method_on_two_processes(tmp_path, capsys):
    from experiments import compare

    overrides = {key: value for key, value in SETTINGS["bitvector"].items() if key != "method"}
    overrides.update(progress=False, device="cpu", epochs=1)
    table, results = compare.compare("bitvector", ["sparsemap", "sfe"], overrides, tmp_path, nproc=2)
    assert [runs[0]["world_size"] for runs in results.values()] == [2, 2]
    assert "| sparsemap |" in table and "| sfe |" in table
    # A finished method is reused, not retrained.
    _, again = compare.compare("bitvector", ["sparsemap"], overrides, tmp_path, nproc=2)
    assert again["sparsemap"] == results["sparsemap"]
    with pytest.raises(ValueError, match="--nproc"):
        compare.compare("bitvector", ["sparsemap"], overrides, tmp_path, nproc=0)
