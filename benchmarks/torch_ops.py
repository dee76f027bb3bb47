"""Per-call cost of the two PyTorch paths: the autograd Function (eager calls)
against the ``torch.library`` custom operator (taken under torch.compile and
torch.export), at small shapes where per-call overhead dominates.

    python benchmarks/torch_ops.py
    python benchmarks/torch_ops.py --shapes 64x10 --budget 2

One CPU thread; prints medians in microseconds, interleaving the paths in
rounds so that a change in machine load hits both, and the ratio of the
operator to the Function.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sparsecore_torch
import torch
from sparsecore_torch import _ops


def sample(run: Callable[[], object], calls: int) -> float:
    """Seconds per call of ``run`` over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["64x10", "64x256"])
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per shape")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; medians in microseconds per call\n")
    print("| shape | pass | autograd Function | custom operator | operator / Function |")
    print("|---|---|---:|---:|---:|")
    for text in args.shapes:
        rows, size = (int(part) for part in text.split("x"))
        scores = torch.randn(rows, size, generator=torch.Generator().manual_seed(0))
        leaf = scores.clone().requires_grad_()
        paths = {
            "function": lambda s: sparsecore_torch.sparsemax(s, dim=-1),
            "operator": lambda s: _ops.sparsemax_op(s, 1, "propagate"),
        }
        for label in ("forward", "forward+backward"):
            runs = {}
            for name, path in paths.items():
                if label == "forward":
                    runs[name] = lambda path=path: path(scores)
                else:
                    runs[name] = lambda path=path: path(leaf).sum().backward()
            for run in runs.values():
                sample(run, 50)
            times: dict[str, list[float]] = {name: [] for name in runs}
            deadline = time.perf_counter() + args.budget / 2
            while time.perf_counter() < deadline or len(times["function"]) < 5:
                for name, run in runs.items():
                    times[name].append(sample(run, 20))
            function, operator = (statistics.median(times[name]) * 1e6 for name in ("function", "operator"))
            print(f"| {text} | {label} | {function:.1f} | {operator:.1f} | {operator / function:.2f} |")


if __name__ == "__main__":
    main()
