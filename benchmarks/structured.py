"""SparseMAP and structured top-k speed, batched, against a per-example solver.

For D in {32, 128}, batch in {64, 1024}, scores t ~ N(0, sigma^2) with sigma
in {1, 0.1}: ``sparsecore.sparsemap`` (BitVector, Budget with B = D/2 and
B = D/8) and ``sparsecore.topk_sparsemax_structured`` (BitVector, k = 10) on
NumPy, PyTorch and JAX under jit, against ``reference_active_set`` below: a
straightforward per-example NumPy active-set solver, one instance at a time.
Prints microseconds per instance, the ratio to the reference, and the mean
and largest support sizes found.  One CPU thread.

    python benchmarks/structured.py
    python benchmarks/structured.py --dims 32 --batches 64 --frameworks numpy torch
    python benchmarks/structured.py --floor    # lower bounds in PyTorch, batch 1024
    python benchmarks/structured.py --structures   # Sequence and DependencyTree rows

``--structures`` times instead ``Sequence(8, 4)`` (D = 144) and
``DependencyTree(8)`` (D = 72), projective (Eisner) and not (Chu-Liu-Edmonds
on a host copy, row by row), with the same per-example reference over the
same ``argmax`` oracle, and structured top-k (k = 10) where ``kbest`` exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

import sparsecore


def reference_active_set(
    t: np.ndarray, argmax: Callable[[np.ndarray], np.ndarray], tol: float = 1e-10
) -> np.ndarray:
    """Per-example active-set SparseMAP: returns the weights over found atoms."""
    atoms = [argmax(t)]
    weights = np.ones(1)
    for _ in range(100 * (t.size + 1)):
        matrix = np.array(atoms)
        size = len(atoms)
        kkt = np.zeros((size + 1, size + 1))
        kkt[:size, :size] = matrix @ matrix.T
        kkt[:size, size] = kkt[size, :size] = 1.0
        solved = np.linalg.solve(kkt, np.concatenate([matrix @ t, [1.0]]))[:size]
        if np.any(solved < 0):
            negative = solved < 0
            ratios = np.where(negative, weights / np.where(negative, weights - solved, 1.0), np.inf)
            step = ratios.min()
            weights = weights + step * (solved - weights)
            keep = ~(negative & (ratios <= step))
            atoms = [atom for atom, kept in zip(atoms, keep, strict=True) if kept]
            weights = weights[keep]
            continue
        weights = solved
        marginals = weights @ matrix
        candidate = argmax(t - marginals)
        if (candidate - marginals) @ (t - marginals) <= tol * (1 + t @ t) or any(
            np.array_equal(candidate, atom) for atom in atoms
        ):
            return weights
        atoms.append(candidate)
        weights = np.append(weights, 0.0)
    raise RuntimeError("reference active set did not converge")


def bitvector_argmax(v: np.ndarray) -> np.ndarray:
    return (v >= 0).astype(v.dtype)


def budget_argmax(budget: int) -> Callable[[np.ndarray], np.ndarray]:
    def argmax(v: np.ndarray) -> np.ndarray:
        order = np.argsort(-v, kind="stable")[:budget]
        z = np.zeros_like(v)
        z[order[v[order] >= 0]] = 1.0
        return z

    return argmax


def seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return float(best)


def floor_table(dims: list[int], batch: int, sigmas: list[float], repeats: int) -> None:
    """Lower bounds for any batched active set built from PyTorch operations.

    Every atom of a row's final support enters through one oracle call, and
    each entering step needs at least: the oracle (``Budget.argmax``), the
    new atom's inner products with the active ones (a batched matvec over
    (n, w, D)), the marginals (another), the bordered inverse times the new
    Gram column (a matvec over (n, w, w)) and its rank-one update, with w
    the atoms already active.  ``floor`` sums those five operations' measured
    cost per row over the widths 1, ..., (support - 1) of every row, using the
    supports sparsecore finds; drops, checks and bookkeeping come on top.
    """
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"float64, one CPU thread, torch, batch {batch}; microseconds per instance")
    print()
    print("| D | sigma | structure | support mean / max | floor (us) | sparsecore (us) | target (us) |")
    print("|---|---|---|---|---:|---:|---:|")
    for dim in dims:
        target = 10 if dim <= 32 else 100
        for sigma in sigmas:
            for budget in (dim // 2, dim // 8):
                structure = sparsecore.Budget(dim, budget)
                t = torch.from_numpy(sigma * rng.standard_normal((batch, dim)))
                elapsed = seconds(lambda t=t, s=structure: sparsecore.sparsemap(t, s), repeats) / batch
                probs, _ = sparsecore.sparsemap(t, structure)
                support = (probs > 0).sum(-1).numpy()
                cost = np.zeros(int(support.max()) + 1)  # cost[w]: one step at width w, per row
                scores = torch.from_numpy(rng.standard_normal((batch, dim)))
                oracle = seconds(lambda v=scores, s=structure: s.argmax(v), repeats)
                candidate = structure.argmax(scores)
                for width in range(1, len(cost)):
                    atoms = (torch.rand(batch, width, dim, dtype=torch.float64) < 0.5).double()
                    inverse = torch.rand(batch, width, width, dtype=torch.float64)
                    weights = torch.rand(batch, width, dtype=torch.float64)
                    steps = (
                        lambda: atoms @ candidate[:, :, None],
                        lambda: weights[:, None, :] @ atoms,
                        lambda: inverse @ weights[:, :, None],
                        lambda: inverse.addcmul_(weights[:, :, None], weights[:, None, :], value=1e-30),
                    )
                    cost[width] = (oracle + sum(seconds(step, repeats) for step in steps)) / batch
                floor = np.mean([cost[np.maximum(np.arange(size), 1)].sum() for size in support])
                print(
                    f"| {dim} | {sigma} | Budget B={budget} | {support.mean():.1f} / {support.max()} "
                    f"| {floor * 1e6:.1f} | {elapsed * 1e6:.1f} | {target} |",
                    flush=True,
                )


def structures_table(
    batches: list[int],
    sigmas: list[float],
    frameworks: list[str],
    converters: dict[str, Callable[[np.ndarray], object]],
    reference_rows: int,
    repeats: int,
) -> None:
    """Rows for the sequence and dependency-tree structures (see the module docs)."""
    rng = np.random.default_rng(0)
    structures = [
        ("Sequence(8, 4)", sparsecore.Sequence(8, 4)),
        ("DependencyTree(8, projective)", sparsecore.DependencyTree(8, projective=True)),
        ("DependencyTree(8)", sparsecore.DependencyTree(8)),
    ]
    print("float64, one CPU thread; microseconds per instance (best of repeats); ratio = time / reference")
    print()
    print(
        "| structure | D | batch | sigma | mapping | reference (us) | framework | batched (us) | ratio | support mean / max |"
    )
    print("|---|---|---|---|---|---:|---|---:|---:|---|")
    for label, structure in structures:
        mappings = [("sparsemap", lambda x, s=structure: sparsecore.sparsemap(x, s))]
        if isinstance(structure, sparsecore.Sequence) or structure.projective:
            mappings.append(
                ("topk k=10", lambda x, s=structure: sparsecore.topk_sparsemax_structured(x, s, 10))
            )
        for batch in batches:
            for sigma in sigmas:
                t = sigma * rng.standard_normal((batch, structure.dim))
                rows = t[:reference_rows]
                reference = seconds(
                    lambda rows=rows, s=structure: [reference_active_set(r, s.argmax) for r in rows], 1
                ) / len(rows)
                for name, function in mappings:
                    for framework in frameworks:
                        x = converters[framework](t)
                        if framework == "jax":
                            import jax

                            compiled = jax.jit(function)
                            run = lambda c=compiled, x=x: jax.block_until_ready(c(x))  # noqa: E731
                        else:
                            run = lambda f=function, x=x: f(x)  # noqa: E731
                        elapsed = seconds(run, repeats) / batch
                        probs = np.asarray(run()[0])
                        support = (probs > 0).sum(-1)
                        ratio = elapsed / reference if name == "sparsemap" else float("nan")
                        print(
                            f"| {label} | {structure.dim} | {batch} | {sigma} | {name} "
                            f"| {reference * 1e6:.0f} | {framework} | {elapsed * 1e6:.1f} | {ratio:.2f} "
                            f"| {support.mean():.1f} / {support.max()} |",
                            flush=True,
                        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dims", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 1024])
    parser.add_argument("--sigmas", nargs="+", type=float, default=[1.0, 0.1])
    parser.add_argument("--frameworks", nargs="+", default=["numpy", "torch", "jax"])
    parser.add_argument("--reference-rows", type=int, default=64, help="rows timed for the reference")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="instead, lower bounds on Budget for any active set from torch operations (largest batch)",
    )
    parser.add_argument(
        "--structures", action="store_true", help="instead, the Sequence and DependencyTree rows"
    )
    args = parser.parse_args(argv)
    if args.floor:
        floor_table(args.dims, max(args.batches), args.sigmas, max(args.repeats, 3))
        return 0

    converters: dict[str, Callable[[np.ndarray], object]] = {"numpy": lambda x: x}
    if "torch" in args.frameworks:
        import torch

        torch.set_num_threads(1)
        converters["torch"] = torch.from_numpy
    if "jax" in args.frameworks:
        import jax

        jax.config.update("jax_enable_x64", True)
        converters["jax"] = jax.numpy.asarray

    if args.structures:
        structures_table(
            args.batches, args.sigmas, args.frameworks, converters, args.reference_rows, args.repeats
        )
        return 0
    rng = np.random.default_rng(0)
    print("float64, one CPU thread; microseconds per instance (best of repeats); ratio = time / reference")
    print()
    print(
        "| D | batch | sigma | mapping | reference (us) | framework | batched (us) | ratio | support mean / max |"
    )
    print("|---|---|---|---|---:|---|---:|---:|---|")
    for dim in args.dims:
        mappings = [
            ("sparsemap BitVector", sparsecore.BitVector(dim), bitvector_argmax),
            (f"sparsemap Budget B={dim // 2}", sparsecore.Budget(dim, dim // 2), budget_argmax(dim // 2)),
            (f"sparsemap Budget B={dim // 8}", sparsecore.Budget(dim, dim // 8), budget_argmax(dim // 8)),
            ("topk k=10 BitVector", sparsecore.BitVector(dim), None),
        ]
        for batch in args.batches:
            for sigma in args.sigmas:
                t = sigma * rng.standard_normal((batch, dim))
                for name, structure, argmax in mappings:
                    if argmax is None:
                        function = lambda x, s=structure: sparsecore.topk_sparsemax_structured(x, s, 10)  # noqa: E731
                        reference = float("nan")
                    else:
                        function = lambda x, s=structure: sparsecore.sparsemap(x, s)  # noqa: E731
                        rows = t[: args.reference_rows]
                        reference = seconds(lambda: [reference_active_set(r, argmax) for r in rows], 1) / len(
                            rows
                        )
                    for framework in args.frameworks:
                        x = converters[framework](t)
                        if framework == "jax":
                            import jax

                            compiled = jax.jit(function)
                            run = lambda c=compiled, x=x: jax.block_until_ready(c(x))  # noqa: E731
                        else:
                            run = lambda f=function, x=x: f(x)  # noqa: E731
                        elapsed = seconds(run, args.repeats) / batch
                        probs = np.asarray(run()[0])
                        support = (probs > 0).sum(-1)
                        print(
                            f"| {dim} | {batch} | {sigma} | {name} | {reference * 1e6:.0f} | {framework} "
                            f"| {elapsed * 1e6:.1f} | {elapsed / reference:.2f} "
                            f"| {support.mean():.1f} / {support.max()} |",
                            flush=True,
                        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
