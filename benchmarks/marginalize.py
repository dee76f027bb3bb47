"""Time per training step of a small categorical-latent model under each estimator.

An encoder ``Linear(784 -> K)`` scores K = 256 categories for a batch of 64
inputs; the loss decodes a category with ``Linear(K -> 128) -> ReLU ->
Linear(128 -> 784)`` and returns the squared reconstruction error.  One
step is the forward pass, the estimator, the backward pass and an Adam
step.  The encoder's scores are scaled so that sparsemax's mean support is
about ``--support`` (1 to 3 by default), and every method sees those scores.
Prints the median step time, its ratio to SFE's, and the decoder calls per
example, all measured in one run on one CPU thread.

    python benchmarks/marginalize.py
    python benchmarks/marginalize.py --supports 1 2 3 8 --categories 256 --batch 64
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the experiments package

import sparsecore_torch
import torch

from experiments.estimators import make_estimator

METHODS = ("dense", "sparsemax", "sfe", "gumbel")


class Model(torch.nn.Module):
    def __init__(self, categories: int, method: str) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(784, categories)
        self.decoder = torch.nn.Sequential(
            torch.nn.Linear(categories, 128), torch.nn.ReLU(), torch.nn.Linear(128, 784)
        )
        self.scale = 1.0
        self.estimator = make_estimator(method, latent="categorical", size=categories)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.encoder(x)


def scale_for_support(model: Model, x: torch.Tensor, support: float) -> float:
    """The score scale at which sparsemax's mean support is about ``support`` (bisection in log scale)."""
    low, high = 1e-3, 1e4
    with torch.no_grad():
        raw = model.encoder(x)
        for _ in range(60):
            middle = (low * high) ** 0.5
            mean = float((sparsecore_torch.sparsemax(middle * raw) > 0).sum(-1).double().mean())
            low, high = (middle, high) if mean > support else (low, middle)
    return (low * high) ** 0.5


def time_steps(model: Model, x: torch.Tensor, budget: float) -> tuple[float, float]:
    """Median seconds per training step, and decoder calls per example."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def loss_fn(example: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return ((model.decoder(z) - x[example]) ** 2).sum(-1)

    calls: list[float] = []

    def step() -> None:
        out = model.estimator(model.scores(x), loss_fn)
        optimizer.zero_grad(set_to_none=True)
        out.surrogate.backward()
        optimizer.step()
        calls.append(out.decoder_calls / x.shape[0])

    for _ in range(3):
        step()
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), statistics.mean(calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--categories", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--supports", nargs="+", type=float, default=[1.0, 2.0, 3.0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    print(f"K = {args.categories}, batch {args.batch}, one CPU thread; median ms per training step")
    print()
    print("| target support | method | step (ms) | ratio to SFE | ratio to dense | decoder calls / example |")
    print("|---:|---|---:|---:|---:|---:|")
    for support in args.supports:
        rows = {}
        for method in METHODS:
            torch.manual_seed(args.seed)
            x = torch.rand(args.batch, 784)
            model = Model(args.categories, method)
            model.scale = scale_for_support(model, x, support)
            rows[method] = time_steps(model, x, args.budget)
        for method, (seconds, calls) in rows.items():
            print(
                f"| {support:g} | {method} | {seconds * 1e3:.2f} | {seconds / rows['sfe'][0]:.2f} "
                f"| {seconds / rows['dense'][0]:.3f} | {calls:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
