"""Sparsemax speed against the public anchors, in one run, on one CPU thread.

Forward and forward+backward in float32, for each shape: ``sparsecore_torch``
(fused CPU kernels, and the array-API reference path) against
``torch.softmax``, ``entmax.sparsemax`` (sort-based, and with its partial
top-k ``k=``) and ``entmax.sparsemax_bisect``, with
``sparsecore_torch.topk_sparsemax`` at the same ``k``; ``sparsecore`` on
NumPy arrays against ``scipy.special.softmax`` (forward); ``sparsecore_jax``
under ``jax.jit`` against ``jax.nn.softmax`` and optax's
``projection_simplex``.  Prints medians (microseconds) and ratios to the
framework's softmax, and first the one-off cost of the first call (numba's
import and compilation, or its load from numba's disk cache), measured in
fresh processes.

    python benchmarks/sparsemax.py                 # every shape
    python benchmarks/sparsemax.py --shapes 64x10 1024x256 --scale 0.1
    python benchmarks/sparsemax.py --frameworks torch numpy --budget 0.1
    python benchmarks/sparsemax.py --device gpu    # CUDA tensors / JAX's GPU
    python benchmarks/sparsemax.py --floor         # lower bounds in PyTorch and JAX

On the GPU the table also has float32 and bfloat16, the shape 4096x32768,
top-k sparsemax on the reference path beside its Triton kernels (the tiled
kernel at 16x65536 and 4096x32768), and the achieved memory bandwidth as a
share of the device's peak at the two largest shapes (``--peak-gbps`` when
the device is not in PEAK_GBPS).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# One CPU thread for every framework, set before they are imported (a GPU run
# passes --device gpu, which main() reads before importing any framework).
if "gpu" not in sys.argv:
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np

SHAPES = ((64, 10), (64, 256), (1024, 256), (256, 4096), (16, 65536))
GPU_SHAPES = (*SHAPES, (4096, 32768))
# Peak memory bandwidth (GB/s) by device name, from the vendors' data sheets.
PEAK_GBPS = {"H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H200": 4800.0, "A100-SXM4-80GB": 2039.0}


def median_seconds(run: Callable[[], object], budget: float, min_repeats: int = 5) -> float:
    """Median wall time of ``run`` over repeats filling ``budget`` seconds."""
    run()
    run()
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or len(times) < min_repeats:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# The row of sparsecore with the fused kernels switched off (forward and backward).
REFERENCE_ROW = "sparsecore_torch.sparsemax (reference path)"


def kernel_switch(name: str) -> Any:
    """``sparsecore.use_kernels(False)`` for the reference rows, else a null context."""
    import contextlib

    if "(reference path)" not in name:
        return contextlib.nullcontext()
    import sparsecore

    return sparsecore.use_kernels(False)


def time_torch(
    methods: dict[str, Callable[[Any], Any]], s: Any, g: Any, budget: float, sync: Callable[[], object]
) -> dict[str, tuple[float, float]]:
    """Median forward and forward+backward seconds of each PyTorch method."""
    import torch

    rows = {}
    for name, fn in methods.items():

        def forward(fn: Callable[[Any], Any] = fn) -> None:
            with torch.no_grad():
                fn(s)
            sync()

        def forward_backward(fn: Callable[[Any], Any] = fn) -> None:
            x = s.detach().requires_grad_()
            fn(x).backward(g)
            sync()

        with kernel_switch(name):
            rows[name] = (median_seconds(forward, budget), median_seconds(forward_backward, budget))
    return rows


def time_jax(
    methods: dict[str, Callable[[Any], Any]], s: Any, g: Any, budget: float
) -> dict[str, tuple[float, float]]:
    """Median forward and forward+backward seconds of each JAX method under ``jit``."""
    import jax
    import jax.numpy as jnp

    rows = {}
    for name, fn in methods.items():
        forward = jax.jit(fn)
        forward_backward = jax.jit(jax.grad(lambda x, fn=fn: jnp.vdot(fn(x), g)))
        rows[name] = (
            median_seconds(lambda forward=forward: forward(s).block_until_ready(), budget),
            median_seconds(lambda fb=forward_backward: fb(s).block_until_ready(), budget),
        )
    return rows


def torch_rows(
    scores: np.ndarray, cotangent: np.ndarray, budget: float, gpu: bool = False, dtype: str = "float32"
) -> dict[str, tuple[float, float]]:
    import entmax
    import sparsecore_torch
    import torch

    device = "cuda" if gpu else "cpu"
    if not gpu:
        torch.set_num_threads(1)
    s = torch.from_numpy(scores).to(device, getattr(torch, dtype))
    g = torch.from_numpy(cotangent).to(device, getattr(torch, dtype))
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    size = scores.shape[-1]
    partial_k = min(16, size)
    methods: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "torch.softmax": lambda x: torch.softmax(x, dim=-1),
        "sparsecore_torch.sparsemax": lambda x: sparsecore_torch.sparsemax(x, dim=-1),
        REFERENCE_ROW: lambda x: sparsecore_torch.sparsemax(x, dim=-1),
        "entmax.sparsemax": lambda x: entmax.sparsemax(x, dim=-1),
        f"sparsecore_torch.topk_sparsemax(k={partial_k})": lambda x: sparsecore_torch.topk_sparsemax(
            x, partial_k, dim=-1
        ),
        f"entmax.sparsemax(k={partial_k})": lambda x: entmax.sparsemax(x, dim=-1, k=partial_k),
        "entmax.sparsemax_bisect": lambda x: entmax.sparsemax_bisect(x, dim=-1),
    }
    if gpu:
        del methods["entmax.sparsemax_bisect"]
        # Top-k on the reference path too: against the Triton kernels (rows of
        # more than 16,384 entries take the tiled one, 16x65536 and 4096x32768).
        methods[f"sparsecore_torch.topk_sparsemax(k={partial_k}) (reference path)"] = methods[
            f"sparsecore_torch.topk_sparsemax(k={partial_k})"
        ]
    return time_torch(methods, s, g, budget, sync)


def peak_gbps(override: float | None) -> float | None:
    """The GPU's peak memory bandwidth in GB/s, if known."""
    if override is not None:
        return override
    import torch

    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_GBPS.items() if key in name), None)


def torch_floor_rows(
    scores: np.ndarray, cotangent: np.ndarray, budget: float
) -> dict[str, tuple[float, float]]:
    """Lower bounds for any sparsemax built from PyTorch operations (CPU).

    ``custom Function`` is an autograd Function whose forward and backward
    each make one elementwise pass: what registering any rule costs.
    ``idealized sparsemax`` makes the fewest passes an exact method needs when
    it is lucky, with in-place operations after one fresh output: the row
    maximum, one Newton step for the threshold from ``max - 1`` (a sum and a
    count of the clamped shifted scores), the output, and a backward of
    support, masked mean and output.  It is not exact in general (no
    verification, no second step); it only bounds from below what PyTorch's
    operators allow.
    """
    import torch

    torch.set_num_threads(1)
    s = torch.from_numpy(scores)
    g = torch.from_numpy(cotangent)

    class OnePass(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            return x * 1.0

        @staticmethod
        def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            return grad * 1.0

    class Idealized(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            # One Newton step from tau = max - 1, in place after one fresh pass.
            probs = (x - (x.amax(dim=-1, keepdim=True) - 1.0)).clamp_(min=0.0)
            # The sign's float sum counts faster than any boolean reduction.
            count = probs.sign().sum(dim=-1, keepdim=True)
            probs.sub_((probs.sum(dim=-1, keepdim=True) - 1.0) / count).clamp_(min=0.0)
            ctx.save_for_backward(probs)  # type: ignore[attr-defined]
            return probs

        @staticmethod
        def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            (probs,) = ctx.saved_tensors  # type: ignore[attr-defined]
            support = probs.sign()
            out = grad * support
            mean = out.sum(dim=-1, keepdim=True) / support.sum(dim=-1, keepdim=True)
            return out.sub_(mean).mul_(support)

    from sparsecore._kernels import _numba as kernels

    class Kernels(torch.autograd.Function):
        """The numba kernels alone in an autograd Function: no checks, no
        dispatch, no axis moves (what the glue around them costs is the
        difference to ``sparsecore_torch.sparsemax``)."""

        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            out = torch.empty_like(x)
            kernels.sparsemax_rows(x.detach().numpy(), out.numpy(), 1)
            ctx.save_for_backward(out)  # type: ignore[attr-defined]
            return out

        @staticmethod
        def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            (probs,) = ctx.saved_tensors  # type: ignore[attr-defined]
            out = torch.empty_like(grad)
            kernels.sparsemax_vjp_rows(probs.numpy(), grad.contiguous().numpy(), out.numpy(), 1)
            return out

    methods: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "torch.softmax": lambda x: torch.softmax(x, dim=-1),
        "floor: custom Function, one pass each way": OnePass.apply,
        "floor: custom Function over the numba kernels alone": Kernels.apply,
        "floor: idealized sparsemax (not exact)": Idealized.apply,
        "sparsecore_torch.sparsemax": lambda x: __import__("sparsecore_torch").sparsemax(x, dim=-1),
        REFERENCE_ROW: lambda x: __import__("sparsecore_torch").sparsemax(x, dim=-1),
    }
    return time_torch(methods, s, g, budget, lambda: None)


def jax_floor_rows(
    scores: np.ndarray, cotangent: np.ndarray, budget: float
) -> dict[str, tuple[float, float]]:
    """The idealized sparsemax of :func:`torch_floor_rows` under ``jax.jit``
    (a ``custom_vjp``), against ``jax.nn.softmax`` and ``sparsecore_jax``."""
    import jax
    import jax.numpy as jnp
    import sparsecore_jax

    s = jnp.asarray(scores)
    g = jnp.asarray(cotangent)

    @jax.custom_vjp
    def idealized(x: jax.Array) -> jax.Array:
        probs = jnp.maximum(x - (x.max(axis=-1, keepdims=True) - 1.0), 0.0)
        count = jnp.sign(probs).sum(axis=-1, keepdims=True)
        return jnp.maximum(probs - (probs.sum(axis=-1, keepdims=True) - 1.0) / count, 0.0)

    def forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        probs = idealized(x)
        return probs, probs

    def backward(probs: jax.Array, grad: jax.Array) -> tuple[jax.Array]:
        support = jnp.sign(probs)
        out = grad * support
        mean = out.sum(axis=-1, keepdims=True) / support.sum(axis=-1, keepdims=True)
        return ((out - mean) * support,)

    idealized.defvjp(forward, backward)
    methods = {
        "jax.nn.softmax (jit)": lambda x: jax.nn.softmax(x, axis=-1),
        "floor: idealized sparsemax (jit, not exact)": idealized,
        "sparsecore_jax.sparsemax (jit)": lambda x: sparsecore_jax.sparsemax(x, axis=-1),
    }
    return time_jax(methods, s, g, budget)


def jax_rows(
    scores: np.ndarray, cotangent: np.ndarray, budget: float, gpu: bool = False
) -> dict[str, tuple[float, float]]:
    import jax
    import jax.numpy as jnp
    import optax
    import sparsecore_jax

    device = jax.devices("gpu" if gpu else "cpu")[0]
    s = jax.device_put(jnp.asarray(scores), device)
    g = jax.device_put(jnp.asarray(cotangent), device)
    methods = {
        "jax.nn.softmax (jit)": lambda x: jax.nn.softmax(x, axis=-1),
        "sparsecore_jax.sparsemax (jit)": lambda x: sparsecore_jax.sparsemax(x, axis=-1),
        "optax projection_simplex (jit)": jax.vmap(optax.projections.projection_simplex),
    }
    return time_jax(methods, s, g, budget)


def numpy_rows(scores: np.ndarray, cotangent: np.ndarray, budget: float) -> dict[str, tuple[float, float]]:
    """Median forward seconds of ``sparsecore`` on NumPy arrays (fused kernel
    and reference path) against ``scipy.special.softmax``; forward+backward
    (``sparsemax`` then ``sparsemax_vjp``) is timed for sparsecore only."""
    import scipy.special

    import sparsecore

    def both(scores: np.ndarray) -> None:
        sparsecore.sparsemax_vjp(sparsecore.sparsemax(scores), cotangent)

    rows = {
        "scipy.special.softmax": (median_seconds(lambda: scipy.special.softmax(scores, axis=-1), budget), NAN)
    }
    for name, enabled in (("sparsecore.sparsemax", True), ("sparsecore.sparsemax (reference path)", False)):
        with sparsecore.use_kernels(enabled):
            rows[name] = (
                median_seconds(lambda: sparsecore.sparsemax(scores), budget),
                median_seconds(lambda: both(scores), budget),
            )
    return rows


NAN = float("nan")

FIRST_CALL = """
import time
start = time.perf_counter()
import numpy as np
import sparsecore
imported = time.perf_counter()
s = np.random.default_rng(0).standard_normal((4, 300)).astype(np.float32)
probs = sparsecore.sparsemax(s)
sparsecore.sparsemax_vjp(probs, s)
sparsecore.sparsemax_vjp(sparsecore.topk_sparsemax(s, 16), s)
done = time.perf_counter()
print(imported - start, done - imported)
"""


def first_call_seconds() -> tuple[tuple[float, float], tuple[float, float]]:
    """``(import, first calls)`` seconds of float32 sparsemax, its VJP and
    top-k sparsemax in fresh processes, with an empty numba cache and then
    with the cache that the first process wrote."""
    import subprocess
    import tempfile

    results = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for _ in range(2):
            output = subprocess.run(
                [sys.executable, "-c", FIRST_CALL], env=env, check=True, capture_output=True, text=True
            ).stdout.split()
            results.append((float(output[0]), float(output[1])))
    return results[0], results[1]


def parse_shape(text: str) -> tuple[int, int]:
    batch, size = text.lower().split("x")
    return int(batch), int(size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None, help="BATCHxK")
    parser.add_argument(
        "--dtypes", nargs="+", default=None, choices=["float32", "bfloat16"], help="torch dtypes (GPU)"
    )
    parser.add_argument("--peak-gbps", type=float, default=None, help="the GPU's peak memory bandwidth")
    parser.add_argument("--scale", type=float, default=1.0, help="scores ~ N(0, scale^2)")
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--frameworks", nargs="+", default=["torch", "numpy", "jax"], choices=["torch", "numpy", "jax"]
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="cpu (one thread) or gpu")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="instead, lower bounds: a one-pass custom Function and an idealized sparsemax (and JAX's)",
    )
    args = parser.parse_args(argv)
    gpu = args.device == "gpu"
    if args.floor and gpu:
        parser.error("--floor measures the CPU")
    shapes = args.shapes or list(GPU_SHAPES if gpu else SHAPES)
    dtypes = args.dtypes or (["float32", "bfloat16"] if gpu else ["float32"])
    largest = sorted(shapes, key=lambda shape: shape[0] * shape[1])[-2:] if gpu else []
    bandwidth: list[str] = []

    rng = np.random.default_rng(args.seed)
    if not gpu and not args.floor:
        (cold_import, cold), (warm_import, warm) = first_call_seconds()
        print(
            "first call (fresh process; float32 sparsemax, its VJP and top-k sparsemax): "
            f"{cold:.2f} s with an empty numba cache (compilation), {warm:.2f} s with the cache; "
            f"import sparsecore {cold_import:.2f} s / {warm_import:.2f} s"
        )
        print()
    where = "GPU" if gpu else "one CPU thread"
    print(
        f"{', '.join(dtypes)}, scores ~ N(0, {args.scale}^2), {where}; median microseconds; ratio = time / softmax"
    )
    if gpu:
        import torch

        print(f"device: {torch.cuda.get_device_name()}")
    print()
    print("| shape | dtype | method | forward (us) | fwd ratio | fwd+bwd (us) | fwd+bwd ratio |")
    print("|---|---|---|---:|---:|---:|---:|")
    for batch, size in shapes:
        scores = (args.scale * rng.standard_normal((batch, size))).astype(np.float32)
        cotangent = rng.standard_normal((batch, size)).astype(np.float32)
        for framework in args.frameworks:
            if framework == "numpy" and (args.floor or gpu):
                continue
            for dtype in dtypes if framework == "torch" else ["float32"]:
                if framework == "numpy":
                    rows = numpy_rows(scores, cotangent, args.budget)
                elif args.floor:
                    floor_rows = torch_floor_rows if framework == "torch" else jax_floor_rows
                    rows = floor_rows(scores, cotangent, args.budget)
                elif framework == "torch":
                    rows = torch_rows(scores, cotangent, args.budget, gpu, dtype)
                else:
                    rows = jax_rows(scores, cotangent, args.budget, gpu)
                base_forward, base_both = next(iter(rows.values()))
                for name, (forward, both) in rows.items():
                    both_cells = "- | -" if both != both else f"{both * 1e6:.1f} | {both / base_both:.2f}"
                    if base_both != base_both and both == both:
                        both_cells = f"{both * 1e6:.1f} | -"
                    print(
                        f"| {batch}x{size} | {dtype} | {name} | {forward * 1e6:.1f} "
                        f"| {forward / base_forward:.2f} | {both_cells} |",
                        flush=True,
                    )
                if (batch, size) in largest and framework == "torch":
                    bandwidth.extend(bandwidth_lines(rows, batch, size, dtype, peak_gbps(args.peak_gbps)))
    if bandwidth:
        print()
        print("| shape | dtype | method | forward GB/s | fwd+bwd GB/s | share of peak (fwd, fwd+bwd) |")
        print("|---|---|---|---:|---:|---:|")
        print("\n".join(bandwidth))
    return 0


def bandwidth_lines(
    rows: dict[str, tuple[float, float]], batch: int, size: int, dtype: str, peak: float | None
) -> list[str]:
    """Achieved bandwidth of each method: the forward reads the scores and
    writes the output (2 passes of the array); the backward reads the output
    and the cotangent and writes the gradient (3 more)."""
    array_bytes = batch * size * (4 if dtype == "float32" else 2)
    lines = []
    for name, (forward, both) in rows.items():
        forward_gbps, both_gbps = 2 * array_bytes / forward / 1e9, 5 * array_bytes / both / 1e9
        share = "peak unknown" if peak is None else f"{forward_gbps / peak:.0%}, {both_gbps / peak:.0%}"
        lines.append(
            f"| {batch}x{size} | {dtype} | {name} | {forward_gbps:.0f} | {both_gbps:.0f} | {share} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
