"""One experiment run, on one process or under ``torchrun``, instrumented for tests/test_distributed.py.

    python tests/distributed_worker.py SPEC_JSON

``SPEC_JSON`` holds ``experiment`` (a key of ``experiments.compare.EXPERIMENTS``),
``settings`` (the config's fields), ``probe_dir`` (where this process writes
what the test inspects), ``deterministic`` (replace the semi-supervised VAE's
random binarization and Gaussian noise by fixed values, so runs on different
numbers of processes draw the same numbers) and ``kill_after`` (rank 0 dies
right after writing that many checkpoints; 0: never).  Runs in float64.

Each process writes ``probe_dir/final-rank{R}.pt`` (its parameters, their
last gradients and the examples its training steps saw) and logs every file the harness writes to
``probe_dir/writes-rank{R}.log``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from experiments import compare, distributed, harness


def main() -> None:
    spec = json.loads(sys.argv[1])
    probe = Path(spec["probe_dir"])
    probe.mkdir(parents=True, exist_ok=True)
    process = distributed.rank()
    # float64: the 1- and 2-process runs differ by summation order only, which float32 and
    # Adam's normalization (tiny gradients get lr-sized steps) would blur.
    torch.set_default_dtype(torch.float64)
    module = compare.EXPERIMENTS[spec["experiment"]].load()
    config = compare.EXPERIMENTS[spec["experiment"]].config_class()(**spec["settings"])
    if spec.get("deterministic"):
        module.SemiSupervisedExperiment._binarize = lambda self, pixels: (pixels >= 128).to(
            torch.get_default_dtype()
        )
        torch.randn_like = lambda tensor, **kwargs: torch.full_like(tensor, 0.5, **kwargs)

    saved = {"checkpoints": 0}
    atomic_save, write_text = harness.atomic_save, harness._atomic_write_text

    def log(path: os.PathLike[str] | str) -> None:
        with open(probe / f"writes-rank{process}.log", "a") as stream:
            stream.write(f"{Path(path).name}\n")

    def logged_save(obj, path):
        log(path)
        atomic_save(obj, path)
        if Path(path).name == harness.CHECKPOINT:
            saved["checkpoints"] += 1
            if saved["checkpoints"] == spec.get("kill_after", 0):
                os._exit(17)

    def logged_write_text(path, text):
        log(path)
        write_text(path, text)

    harness.atomic_save = logged_save
    harness._atomic_write_text = logged_write_text
    experiments_trained = []
    train = harness.train

    examples = [0]

    def capturing_train(experiment, config):
        experiments_trained.append(experiment)
        step = experiment.train_step

        def counting_step(batch, epoch):
            out = step(batch, epoch)
            examples[0] += int(out["support"].shape[0])
            return out

        experiment.train_step = counting_step
        return train(experiment, config)

    harness.train = capturing_train
    module.run(config)
    model = experiments_trained[-1].model
    torch.save(
        {
            "params": {name: p.detach().clone() for name, p in model.named_parameters()},
            "grads": {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None},
            "examples": examples[0],
        },
        probe / f"final-rank{process}.pt",
    )


if __name__ == "__main__":
    main()
