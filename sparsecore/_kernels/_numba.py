"""numba kernels: sparsemax, its VJP and top-k sparsemax, one row at a time.

Each kernel takes C-contiguous 2-d arrays of rows (float32 or float64) and
writes its result into a caller-owned output of the same shape; it never
writes into its inputs.  Every row is computed by the same row function in
the serial and the parallel (``prange`` over rows) kernel, so the result does
not depend on the number of threads.

The arithmetic follows the array-API reference (``sparsecore._sparsemax``):
rows are shifted by their maximum, the threshold is found exactly by
Newton's method (Michelot's algorithm) from the lower bound ``max - 1``, and
the special rows (NaN, ``+inf``, only ``-inf``) get the reference's values.
Only reassociation is allowed to the compiler (``fastmath={"reassoc"}``), so
that the sums vectorize; NaN and infinities keep their IEEE meaning.

This module imports numba: it is imported lazily, by
``sparsecore._kernels._cpu``, on the first call that can take a kernel.
"""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["sparsemax_rows", "sparsemax_vjp_rows", "topk_sparsemax_rows"]

_FASTMATH = {"reassoc"}
_OPTIONS: dict[str, Any] = {"fastmath": _FASTMATH, "cache": True, "nogil": True}
# Row helpers are inlined into their callers (numba IR inlining).
_INLINE: dict[str, Any] = {**_OPTIONS, "inline": "always"}


@intrinsic
def _maxnum(typingctx: Any, a: Any, b: Any) -> Any:
    """LLVM's ``maxnum``: the larger of two floats, ignoring a NaN operand.

    Unlike a compare-and-select, it vectorizes as a reduction without
    assuming the absence of NaN (rows with NaN are detected apart).
    """
    signature = a(a, b)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        kind = args[0].type
        suffix = "f32" if kind == ir.FloatType() else "f64"
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(kind, [kind, kind]), f"llvm.maxnum.{suffix}"
        )
        return builder.call(function, args)

    return signature, codegen


@numba.njit(**_INLINE)
def _row_max(x: Any) -> Any:
    """The row's maximum, NaN ignored (NaN is counted by the first pass)."""
    top = x[0]
    for j in range(x.shape[0]):
        top = _maxnum(top, x[j])  # type: ignore[call-arg]
    return top


@numba.njit(**_INLINE)
def _special_row(x: Any, out: Any, top: Any, keep: int) -> None:
    """The output of a row whose maximum ``top`` (NaN ignored) is not finite.

    A row holding NaN gives NaN; the first ``keep`` of the ``+inf`` entries
    share the mass equally (``keep = K`` for sparsemax, ``k`` for top-k); a
    row of only ``-inf`` gives zeros.
    """
    zero = x.dtype.type(0.0)
    for j in range(x.shape[0]):
        if np.isnan(x[j]):
            out[:] = np.nan
            return
    if top == np.inf:
        count = 0
        for j in range(x.shape[0]):
            if x[j] == np.inf:
                count += 1
        share = x.dtype.type(1.0) / x.dtype.type(min(count, keep))
        seen = 0
        for j in range(x.shape[0]):
            if x[j] == np.inf and seen < keep:
                out[j] = share
                seen += 1
            else:
                out[j] = zero
        return
    out[:] = zero


@numba.njit(**_INLINE)
def _first_pass(x: Any, top: Any) -> tuple[Any, Any, Any]:
    """:func:`_newton_pass` at ``tau = -1`` that also counts the NaN entries."""
    zero = x.dtype.type(0.0)
    one = x.dtype.type(1.0)
    tau = -one
    total = zero
    count = zero
    nans = zero
    for j in range(x.shape[0]):
        shifted = x[j] - top
        above = shifted > tau
        total += shifted if above else zero
        count += one if above else zero
        nans += one if x[j] != x[j] else zero
    return total, count, nans


@numba.njit(**_INLINE)
def _newton_pass(x: Any, top: Any, tau: Any) -> tuple[Any, Any]:
    """One pass at threshold ``tau`` of the shifted row ``x - top``: the sum
    and the count of the shifted entries above ``tau``.  (No output is
    written: the stores would cost more than the one pass that writes it.)"""
    zero = x.dtype.type(0.0)
    one = x.dtype.type(1.0)
    total = zero
    count = zero
    for j in range(x.shape[0]):
        shifted = x[j] - top
        above = shifted > tau
        total += shifted if above else zero
        count += one if above else zero
    return total, count


@numba.njit(**_INLINE)
def _write_row(x: Any, out: Any, top: Any, tau: Any) -> None:
    """``out = max(x - top - tau, 0)``."""
    zero = x.dtype.type(0.0)
    for j in range(x.shape[0]):
        excess = (x[j] - top) - tau
        out[j] = excess if excess > zero else zero


@numba.njit(**_INLINE)
def _continue_row(x: Any, out: Any, top: Any, total: Any, count: Any) -> None:
    """Newton's steps after a first pass at ``tau = -1`` that gave ``total``
    and ``count``, then the output.

    The support only shrinks; once a pass finds it unchanged, its threshold
    is exact.
    """
    one = x.dtype.type(1.0)
    tau = -one
    previous = x.dtype.type(x.shape[0] + 1)
    while count < previous:
        previous = count
        tau = (total - one) / count
        total, count = _newton_pass(x, top, tau)
    _write_row(x, out, top, tau)


@numba.njit(**_INLINE)
def _sparsemax_row(x: Any, out: Any) -> None:
    """Newton's method from ``tau = -1`` (the threshold of the maximum alone,
    a lower bound) on the row shifted by its maximum."""
    top = _row_max(x)
    if not np.isfinite(top):
        _special_row(x, out, top, x.shape[0])
        return
    total, count, nans = _first_pass(x, top)
    if nans > 0:
        out[:] = np.nan
        return
    _continue_row(x, out, top, total, count)


@numba.njit(**_OPTIONS)
def _sparsemax_serial(scores: Any, out: Any) -> None:
    for row in range(scores.shape[0]):
        _sparsemax_row(scores[row], out[row])


@numba.njit(parallel=True, **_OPTIONS)
def _sparsemax_parallel(scores: Any, out: Any) -> None:
    for row in numba.prange(scores.shape[0]):
        _sparsemax_row(scores[row], out[row])


@numba.njit(**_INLINE)
def _sign(value: Any, one: Any) -> Any:
    """``np.sign`` as selects (which vectorize): NaN and signed zeros kept."""
    zero = one - one
    return one if value > zero else (-one if value < zero else value)


@numba.njit(**_INLINE)
def _vjp_row(probs: Any, cotangent: Any, out: Any) -> None:
    """``(g * sign(p) - mean) * sign(p) + 0``, the reference's arithmetic:
    a NaN in ``p`` (or a non-finite ``g`` anywhere) gives a NaN row."""
    zero = probs.dtype.type(0.0)
    one = probs.dtype.type(1.0)
    count = zero
    total = zero
    for j in range(probs.shape[0]):
        support = _sign(probs[j], one)
        count += support
        total += cotangent[j] * support
    # clip(count, min=1), NaN kept.
    mean = total / (one if count < one else count)
    for j in range(probs.shape[0]):
        support = _sign(probs[j], one)
        out[j] = (cotangent[j] * support - mean) * support + zero


@numba.njit(**_OPTIONS)
def _vjp_serial(probs: Any, cotangent: Any, out: Any) -> None:
    for row in range(probs.shape[0]):
        _vjp_row(probs[row], cotangent[row], out[row])


@numba.njit(parallel=True, **_OPTIONS)
def _vjp_parallel(probs: Any, cotangent: Any, out: Any) -> None:
    for row in numba.prange(probs.shape[0]):
        _vjp_row(probs[row], cotangent[row], out[row])


@numba.njit(**_INLINE)
def _topk_row(x: Any, out: Any, k: int) -> None:
    """Sparsemax over the ``k`` largest entries (ties: lower index first).

    The first Newton pass from ``tau = -1`` counts the entries within 1 of
    the maximum, which hold the whole support.  When there are at most
    ``k``, they all lie in the top k and the result is the row's sparsemax.
    Otherwise the k-th largest score is selected among them, and Newton's
    method runs on the top k.
    """
    top = _row_max(x)
    if not np.isfinite(top):
        _special_row(x, out, top, k)
        return
    first_total, candidates, nans = _first_pass(x, top)
    if nans > 0:
        out[:] = np.nan
        return
    if candidates <= k:
        _continue_row(x, out, top, first_total, candidates)
        return
    kth, room, values = _kth_largest(x, top, int(candidates), k)
    _solve_top(x, out, top, k, kth, room, values)


@numba.njit(**_INLINE)
def _kth_largest(x: Any, top: Any, candidates: int, k: int) -> tuple[Any, int, Any]:
    """The k-th largest score among the ``candidates`` entries within 1 of
    the maximum, ``room`` (how many entries equal to it the top k keep), and
    the candidates themselves (reordered).

    The original scores are compared (not the shifted ones), so that the
    order, and so the ties, are those of the input.
    """
    one = x.dtype.type(1.0)
    buffer = np.empty(candidates, dtype=x.dtype)
    filled = 0
    for j in range(x.shape[0]):
        if x[j] - top > -one:
            buffer[filled] = x[j]
            filled += 1
    kth = _select(buffer, filled, k)
    above = 0
    for j in range(filled):
        if buffer[j] > kth:
            above += 1
    return kth, k - above, buffer


@numba.njit(**_INLINE)
def _select(values: Any, size: int, k: int) -> Any:
    """The k-th largest of ``values[:size]`` (no NaN), by quickselect in
    place (Hoare's partition, median-of-three pivots)."""
    low = 0
    high = size - 1
    target = k - 1  # its position in descending order
    while low < high:
        middle = (low + high) // 2
        # Order values[low], values[middle], values[high] descending; the pivot is the middle one.
        if values[middle] > values[low]:
            values[middle], values[low] = values[low], values[middle]
        if values[high] > values[low]:
            values[high], values[low] = values[low], values[high]
        if values[high] > values[middle]:
            values[high], values[middle] = values[middle], values[high]
        pivot = values[middle]
        left = low
        right = high
        while left <= right:
            while values[left] > pivot:
                left += 1
            while values[right] < pivot:
                right -= 1
            if left <= right:
                values[left], values[right] = values[right], values[left]
                left += 1
                right -= 1
        if target <= right:
            high = right
        elif target >= left:
            low = left
        else:
            return values[target]
    return values[target]


@numba.njit(**_INLINE)
def _solve_top(x: Any, out: Any, top: Any, k: int, kth: Any, room: int, candidates: Any) -> None:
    """Newton's method on the top k, among the ``candidates``: the entries
    above ``kth`` and ``room`` entries equal to it (which share one value, so
    they enter the sums as ``room`` times it), then one pass that writes the
    output: the entries above ``kth``, and the first ``room`` equal to it.

    Every top-k entry lies above ``-1``: the first step is on all of them.
    """
    one = x.dtype.type(1.0)
    zero = x.dtype.type(0.0)
    ties = x.dtype.type(room)
    shifted_kth = kth - top
    total = ties * shifted_kth
    for j in range(candidates.shape[0]):
        if candidates[j] > kth:
            total += candidates[j] - top
    tau = (total - one) / x.dtype.type(k)
    previous = x.dtype.type(k)
    while True:
        total = zero
        count = zero
        for j in range(candidates.shape[0]):
            shifted = candidates[j] - top
            if candidates[j] > kth and shifted > tau:
                total += shifted
                count += one
        if shifted_kth > tau:
            total += ties * shifted_kth
            count += ties
        if count >= previous:
            break
        previous = count
        tau = (total - one) / count
    for j in range(x.shape[0]):
        excess = (x[j] - top) - tau
        out[j] = excess if (x[j] > kth) & (excess > zero) else zero
    excess = shifted_kth - tau
    if excess > zero:
        seen = 0
        for j in range(x.shape[0]):
            if x[j] == kth and seen < room:
                out[j] = excess
                seen += 1


@numba.njit(**_OPTIONS)
def _topk_serial(scores: Any, out: Any, k: int) -> None:
    for row in range(scores.shape[0]):
        _topk_row(scores[row], out[row], k)


@numba.njit(parallel=True, **_OPTIONS)
def _topk_parallel(scores: Any, out: Any, k: int) -> None:
    for row in numba.prange(scores.shape[0]):
        _topk_row(scores[row], out[row], k)


# Arrays smaller than this run on the calling thread: starting the thread
# pool costs more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 16


def _threaded(rows: int, size: int, threads: int) -> bool:
    return threads > 1 and rows > 1 and rows * size >= PARALLEL_MIN_ELEMENTS


# The size of numba's thread pool (NUMBA_NUM_THREADS, by default the cores).
_MAX_THREADS: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]

# numba's fallback threading layer (workqueue, where neither OpenMP nor TBB
# is found) aborts the process on concurrent launches: one at a time.
_parallel_lock = threading.Lock()


def _launch(serial: Any, parallel: Any, threads: int, *args: Any) -> None:
    rows, size = args[0].shape
    if not _threaded(rows, size, threads):
        serial(*args)
        return
    # numba's thread count is per calling thread: set and restore it here.
    with _parallel_lock:
        previous = numba.get_num_threads()
        numba.set_num_threads(min(threads, _MAX_THREADS))
        try:
            parallel(*args)
        finally:
            numba.set_num_threads(previous)


def sparsemax_rows(scores: np.ndarray, out: np.ndarray, threads: int) -> None:
    """Sparsemax of each row of ``scores`` into ``out`` (C-contiguous 2-d,
    float32 or float64, the same shape and dtype)."""
    _launch(_sparsemax_serial, _sparsemax_parallel, threads, scores, out)


def sparsemax_vjp_rows(probs: np.ndarray, cotangent: np.ndarray, out: np.ndarray, threads: int) -> None:
    """The sparsemax VJP of each row into ``out``."""
    _launch(_vjp_serial, _vjp_parallel, threads, probs, cotangent, out)


def topk_sparsemax_rows(scores: np.ndarray, k: int, out: np.ndarray, threads: int) -> None:
    """Top-k sparsemax of each row of ``scores`` into ``out`` (``1 <= k <= K``)."""
    _launch(_topk_serial, _topk_parallel, threads, scores, out, k)
