"""Triton kernels for sparsemax and top-k sparsemax on CUDA tensors.

Fused fast paths beside the core's array-API reference (see
:mod:`sparsecore_torch._gpu` for when they are taken).  Every kernel runs one
program per row of a contiguous ``(rows, K)`` array and computes in float32
whatever the storage dtype (float32, float16, bfloat16), or in float64 for
float64 rows, as the reference does; the result is stored in the dtype of
the output buffer.

Forward.  A row of at most :data:`ONCHIP_MAX` entries is loaded once and
stays in registers: its maximum (the shift), its special cases and the exact
threshold, found by Newton's method on the piecewise-linear mass equation
(Michelot's algorithm) from the lower bound ``max - 1``.  Each step from a
lower bound stays a lower bound and can only shrink the support; the loop
stops when the support stops shrinking, where the threshold is exact: at
most ``K`` steps, usually a handful.  The step count lives on the device, so
no launch depends on data and no value is read by the host (a call can be
captured in a CUDA graph).  Longer rows run the same steps as passes over
tiles of :data:`TILE` entries.

Special rows follow the core exactly (:func:`sparsecore._sparsemax.prepare_rows`):
a row holding NaN gives NaN, a row of only ``-inf`` gives zeros, the ``+inf``
entries of a row share its mass equally.

Backward.  One kernel: the support ``p > 0``, the masked mean of the
incoming gradient, and the output, with the reference's arithmetic (so that
NaN and ``inf`` in the gradient spread to the row as they do there).

Top-k.  The k-th largest score by a bitwise search over the order-preserving
integer keys of the values (32 or 64 counting reductions in registers), the top-k mask
with ties broken by position (a prefix sum), then the sparsemax of the
masked row.  Rows longer than :data:`ONCHIP_MAX` find the k-th largest score
by a radix select over tiles (one pass per byte of the keys, 4 for float32
and 8 for float64 rows, each a 256-bin histogram of that byte among the
entries that share the bytes chosen so far), count the entries above it
(one pass), and run the tiled sparsemax on the masked row, the mask rebuilt
in each pass from the k-th value and a running count of the ties before
the tile.  The pass count depends on the dtype alone, so these rows too
need no host read.

Importing this module imports Triton; with ``TRITON_INTERPRET=1`` set
before the import, the kernels are Triton's interpreter functions, which run
on CPU tensors (how the tests execute them without a GPU).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import triton
import triton.language as tl

__all__ = [
    "INTERPRETED",
    "ONCHIP_MAX",
    "TILE",
    "sparsemax_backward_rows",
    "sparsemax_forward_rows",
    "topk_sparsemax_forward_rows",
]

# Rows of at most this many entries stay in registers; longer ones loop over
# tiles of TILE entries.  (Module attributes: the tests make both small to run
# the tiled kernels in the interpreter.)
ONCHIP_MAX = 16384
TILE = 4096

# Whether the kernels were built for Triton's interpreter (CPU tensors).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

_INT32_MIN = tl.constexpr(-(2**31))
_INT64_MIN = tl.constexpr(-(2**63))


@triton.jit
def _tame(x, valid, row_max, nan_row, posinf_row, empty_row):
    """The shifted row, as the core's ``prepare_rows`` makes it.

    Ordinary rows: ``x - max`` (maximum 0, ``-inf`` stays).  ``+inf`` rows:
    0 at the ``+inf`` entries, ``-inf`` elsewhere (they share the mass).  NaN
    and all ``-inf`` rows: zeros, overwritten after.  Lanes past the row: ``-inf``.
    """
    blank = nan_row | empty_row
    safe_max = tl.where(blank | posinf_row, 0.0, row_max)
    top = tl.where(x == float("inf"), 0.0, float("-inf"))
    z = tl.where(posinf_row, top, tl.where(blank, 0.0, x - safe_max))
    return tl.where(valid, z, float("-inf"))


@triton.jit
def _row_stats(x, valid):
    """Maximum, NaN count and ``+inf`` count of a block (lanes past the row
    hold ``-inf``)."""
    is_nan = valid & (x != x)  # noqa: PLR0124 (NaN)
    row_max = tl.max(tl.where(is_nan, float("-inf"), x), axis=0)
    nans = tl.sum(is_nan.to(tl.int32), axis=0)
    posinfs = tl.sum((valid & (x == float("inf"))).to(tl.int32), axis=0)
    return row_max, nans, posinfs


@triton.jit
def _threshold_block(z):
    """The exact sparsemax threshold of a block whose maximum is 0.

    Newton's method from ``-1`` (the threshold of the maximum alone, a lower
    bound) until the support stops shrinking.
    """
    tau = tl.full((), -1.0, z.dtype)
    support = z > tau
    count = tl.sum(support.to(tl.int32), axis=0)
    total = tl.sum(tl.where(support, z, 0.0), axis=0)
    previous = count + 1
    while count < previous:
        previous = count
        tau = (total - 1.0) / count.to(z.dtype)
        support = z > tau
        count = tl.sum(support.to(tl.int32), axis=0)
        total = tl.sum(tl.where(support, z, 0.0), axis=0)
    return tau


@triton.jit
def _finish(z, tau, nan_row, empty_row):
    """``max(z - tau, 0)`` with NaN rows NaN and all ``-inf`` rows zero."""
    probs = tl.maximum(z - tau, 0.0)
    probs = tl.where(empty_row, 0.0, probs)
    return tl.where(nan_row, float("nan"), probs)


@triton.jit
def _sparsemax_block(x, valid):
    """Sparsemax of one row held in registers (a block of the compute dtype)."""
    row_max, nans, posinfs = _row_stats(x, valid)
    nan_row = nans > 0
    posinf_row = (posinfs > 0) & ~nan_row
    empty_row = (row_max == float("-inf")) & ~nan_row
    z = _tame(x, valid, row_max, nan_row, posinf_row, empty_row)
    tau = _threshold_block(z)
    return _finish(z, tau, nan_row, empty_row)


@triton.jit
def _sparsemax_onchip_kernel(scores_ptr, probs_ptr, size, BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK)
    valid = offsets < size
    x = tl.load(scores_ptr + row * size + offsets, mask=valid, other=float("-inf")).to(COMPUTE)
    probs = _sparsemax_block(x, valid)
    tl.store(probs_ptr + row * size + offsets, probs.to(probs_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _tile(row_scores, start, offsets, size, kth, room, seen, COMPUTE: tl.constexpr, TOPK: tl.constexpr):
    """The tile of a row at ``start``: ``(x, valid, seen)``, lanes past the
    row ``-inf``.  With ``TOPK`` the entries outside the top k are ``-inf``
    (the mask of :func:`_topk_mask`, with ``seen`` entries equal to ``kth``
    in the tiles before this one; ``seen`` comes back updated)."""
    index = start + offsets
    valid = index < size
    x = tl.load(row_scores + index, mask=valid, other=float("-inf")).to(COMPUTE)
    if TOPK:
        at = valid & (x == kth)
        kept = _topk_mask(x, valid, kth, room, seen + tl.cumsum(at.to(tl.int32), axis=0))
        x = tl.where(kept, x, float("-inf"))
        seen += tl.sum(at.to(tl.int32), axis=0)
    return x, valid, seen


@triton.jit
def _support_sums_tiled(
    row_scores,
    size,
    tau,
    row_max,
    nan_row,
    posinf_row,
    empty_row,
    kth,
    room,
    TILE_SIZE: tl.constexpr,
    COMPUTE: tl.constexpr,
    TOPK: tl.constexpr,
):
    """``|{z > tau}|`` and ``sum(z, z > tau)`` of the shifted row, one pass
    over its tiles (a Newton step of :func:`_threshold_block`)."""
    offsets = tl.arange(0, TILE_SIZE)
    count = tl.zeros((), tl.int32)
    total = tl.zeros((), COMPUTE)
    seen = tl.zeros((), tl.int32)
    for start in range(0, size, TILE_SIZE):
        x, valid, seen = _tile(row_scores, start, offsets, size, kth, room, seen, COMPUTE, TOPK)
        z = _tame(x, valid, row_max, nan_row, posinf_row, empty_row)
        support = z > tau
        count += tl.sum(support.to(tl.int32), axis=0)
        total += tl.sum(tl.where(support, z, 0.0), axis=0)
    return count, total


@triton.jit
def _sparsemax_tiled(
    row_scores,
    row_probs,
    size,
    kth,
    room,
    TILE_SIZE: tl.constexpr,
    COMPUTE: tl.constexpr,
    TOPK: tl.constexpr,
):
    """Sparsemax of one row over tiles (with ``TOPK``, of the row masked to
    its top k): :func:`_sparsemax_block`, one pass per step."""
    offsets = tl.arange(0, TILE_SIZE)
    # Pass 1: the maximum and the special cases.
    row_max = tl.full((), float("-inf"), COMPUTE)
    nans = tl.zeros((), tl.int32)
    posinfs = tl.zeros((), tl.int32)
    seen = tl.zeros((), tl.int32)
    for start in range(0, size, TILE_SIZE):
        x, valid, seen = _tile(row_scores, start, offsets, size, kth, room, seen, COMPUTE, TOPK)
        tile_max, tile_nans, tile_posinfs = _row_stats(x, valid)
        row_max = tl.maximum(row_max, tile_max)
        nans += tile_nans
        posinfs += tile_posinfs
    nan_row = nans > 0
    posinf_row = (posinfs > 0) & ~nan_row
    empty_row = (row_max == float("-inf")) & ~nan_row
    # Newton's method from -1, one pass over the tiles per step.
    tau = tl.full((), -1.0, COMPUTE)
    count, total = _support_sums_tiled(
        row_scores, size, tau, row_max, nan_row, posinf_row, empty_row, kth, room, TILE_SIZE, COMPUTE, TOPK
    )
    previous = count + 1
    while count < previous:
        previous = count
        tau = (total - 1.0) / count.to(COMPUTE)
        count, total = _support_sums_tiled(
            row_scores,
            size,
            tau,
            row_max,
            nan_row,
            posinf_row,
            empty_row,
            kth,
            room,
            TILE_SIZE,
            COMPUTE,
            TOPK,
        )
    # Last pass: the output.
    seen = tl.zeros((), tl.int32)
    for start in range(0, size, TILE_SIZE):
        x, valid, seen = _tile(row_scores, start, offsets, size, kth, room, seen, COMPUTE, TOPK)
        z = _tame(x, valid, row_max, nan_row, posinf_row, empty_row)
        probs = _finish(z, tau, nan_row, empty_row)
        tl.store(row_probs + start + offsets, probs.to(row_probs.dtype.element_ty), mask=valid)


@triton.jit
def _sparsemax_tiled_kernel(scores_ptr, probs_ptr, size, TILE_SIZE: tl.constexpr, COMPUTE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    kth = tl.zeros((), COMPUTE)  # unused without TOPK
    room = tl.zeros((), tl.int32)
    _sparsemax_tiled(
        scores_ptr + row * size, probs_ptr + row * size, size, kth, room, TILE_SIZE, COMPUTE, False
    )


@triton.jit
def _kth_largest_32(x, valid, k):
    """The k-th largest value of a float32 block: the largest integer key T
    with at least k keys >= T, built bit by bit from the sign down.  The keys
    (the bits, the magnitude bits flipped for negative values) are in the
    order of the values, ``-0.0`` just below ``0.0``."""
    bits = x.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    nonnegative = tl.sum((valid & (key >= 0)).to(tl.int32), axis=0)
    kth_key = tl.where(nonnegative >= k, 0, _INT32_MIN)
    for bit in tl.static_range(30, -1, -1):
        candidate = kth_key | (1 << bit)
        enough = tl.sum((valid & (key >= candidate)).to(tl.int32), axis=0) >= k
        kth_key = tl.where(enough, candidate, kth_key)
    return (kth_key ^ ((kth_key >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _kth_largest_64(x, valid, k):
    """:func:`_kth_largest_32` for a float64 block (64-bit keys)."""
    bits = x.to(tl.int64, bitcast=True)
    key = bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
    nonnegative = tl.sum((valid & (key >= 0)).to(tl.int32), axis=0)
    kth_key = tl.where(nonnegative >= k, tl.zeros((), tl.int64), _INT64_MIN)
    for bit in tl.static_range(62, -1, -1):
        candidate = kth_key | (1 << bit)
        enough = tl.sum((valid & (key >= candidate)).to(tl.int32), axis=0) >= k
        kth_key = tl.where(enough, candidate, kth_key)
    return (kth_key ^ ((kth_key >> 63) & 0x7FFFFFFFFFFFFFFF)).to(tl.float64, bitcast=True)


@triton.jit
def _topk_mask(x, valid, kth, room, rank_at):
    """The entries of the top k, as the core's ``topk_mask`` keeps them: above
    ``kth``, or equal to it and among the first ``room`` such entries
    (``rank_at``: their running count), compared as floats so that ``-0.0``
    ties with ``0.0``; NaN entries stay, so that their row is NaN."""
    above = valid & (x > kth)
    at = valid & (x == kth)
    return above | (at & (rank_at <= room)) | (x != x)  # noqa: PLR0124 (NaN entries stay)


@triton.jit
def _topk_sparsemax_onchip_kernel(scores_ptr, probs_ptr, size, k, BLOCK: tl.constexpr, COMPUTE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK)
    valid = offsets < size
    x = tl.load(scores_ptr + row * size + offsets, mask=valid, other=float("-inf")).to(COMPUTE)
    if COMPUTE == tl.float64:
        kth = _kth_largest_64(x, valid, k)
    else:
        kth = _kth_largest_32(x, valid, k)
    room = k - tl.sum((valid & (x > kth)).to(tl.int32), axis=0)
    rank_at = tl.cumsum((valid & (x == kth)).to(tl.int32), axis=0)
    masked = tl.where(_topk_mask(x, valid, kth, room, rank_at), x, float("-inf"))
    probs = _sparsemax_block(masked, valid)
    tl.store(probs_ptr + row * size + offsets, probs.to(probs_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _radix_keys(x, INT: tl.constexpr, WIDTH: tl.constexpr, LOWEST: tl.constexpr):
    """Keys of a block whose unsigned order is the order of the values: the
    bits with the sign bit set for nonnegative values, all bits flipped for
    negative ones (held in signed integers of ``WIDTH`` bits; ``-0.0`` comes
    just below ``0.0``)."""
    bits = x.to(INT, bitcast=True)
    return bits ^ ((bits >> (WIDTH - 1)) | LOWEST)


@triton.jit
def _kth_largest_tiled(
    row_scores,
    size,
    k,
    TILE_SIZE: tl.constexpr,
    COMPUTE: tl.constexpr,
    INT: tl.constexpr,
    WIDTH: tl.constexpr,
    LOWEST: tl.constexpr,
):
    """The k-th largest value of a row, by a radix select over tiles: one
    pass per byte of the keys (:func:`_radix_keys`), from the top, each a
    histogram of that byte over the entries that share the bytes chosen so
    far; the byte chosen is the largest with at least ``remaining`` entries
    at or above it, and ``remaining`` drops by those above it."""
    offsets = tl.arange(0, TILE_SIZE)
    bins = tl.arange(0, 256)
    prefix = tl.zeros((), INT)
    remaining = k + tl.zeros((), tl.int32)
    for byte in tl.static_range(WIDTH // 8):
        counts = tl.zeros((256,), tl.int32)
        for start in range(0, size, TILE_SIZE):
            index = start + offsets
            valid = index < size
            x = tl.load(row_scores + index, mask=valid, other=float("-inf")).to(COMPUTE)
            keys = _radix_keys(x, INT, WIDTH, LOWEST)
            if byte == 0:
                sharing = valid
            else:
                # -(2 ** n): the bits from n up.
                sharing = valid & ((keys & -(2 ** (WIDTH - 8 * byte))) == prefix)
            digits = ((keys >> (WIDTH - 8 * byte - 8)) & 255).to(tl.int32)
            counts += tl.histogram(digits, 256, mask=sharing)
        at_least = tl.cumsum(counts, axis=0, reverse=True)
        chosen = tl.max(tl.where(at_least >= remaining, bins, 0), axis=0)
        remaining -= tl.sum(tl.where(bins > chosen, counts, 0), axis=0)
        prefix = prefix | (chosen.to(INT) << (WIDTH - 8 * byte - 8))
    # Back from the key to the value.
    bits = tl.where(prefix < 0, prefix ^ LOWEST, ~prefix)
    return bits.to(COMPUTE, bitcast=True)


@triton.jit
def _topk_sparsemax_tiled_kernel(
    scores_ptr, probs_ptr, size, k, TILE_SIZE: tl.constexpr, COMPUTE: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    row_scores = scores_ptr + row * size
    # The k-th largest value: 4 (float32) or 8 (float64) passes.
    if COMPUTE == tl.float64:
        kth = _kth_largest_tiled(row_scores, size, k, TILE_SIZE, COMPUTE, tl.int64, 64, _INT64_MIN)
    else:
        kth = _kth_largest_tiled(row_scores, size, k, TILE_SIZE, COMPUTE, tl.int32, 32, _INT32_MIN)
    # How many of the top k are strictly above it (as floats), one pass.
    offsets = tl.arange(0, TILE_SIZE)
    above = tl.zeros((), tl.int32)
    for start in range(0, size, TILE_SIZE):
        index = start + offsets
        valid = index < size
        x = tl.load(row_scores + index, mask=valid, other=float("-inf")).to(COMPUTE)
        above += tl.sum((valid & (x > kth)).to(tl.int32), axis=0)
    _sparsemax_tiled(row_scores, probs_ptr + row * size, size, kth, k - above, TILE_SIZE, COMPUTE, True)


@triton.jit
def _backward_sums(probs, cotangent):
    """``(cotangent * support, |support|, sum(probs))`` of a block."""
    support = tl.where(probs > 0.0, 1.0, 0.0)
    return cotangent * support, tl.sum(support, axis=0), tl.sum(probs, axis=0)


@triton.jit
def _backward_finish(masked, support_mean, probs):
    """``(masked - mean) * support + 0.0``, the reference's arithmetic."""
    support = tl.where(probs > 0.0, 1.0, 0.0)
    return (masked - support_mean) * support + 0.0


@triton.jit
def _sparsemax_backward_onchip_kernel(
    probs_ptr, cotangent_ptr, grad_ptr, size, BLOCK: tl.constexpr, COMPUTE: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK)
    valid = offsets < size
    probs = tl.load(probs_ptr + row * size + offsets, mask=valid, other=0.0).to(COMPUTE)
    cotangent = tl.load(cotangent_ptr + row * size + offsets, mask=valid, other=0.0).to(COMPUTE)
    masked, count, probs_total = _backward_sums(probs, cotangent)
    # 0 * sum(probs) keeps a NaN row NaN (its support is empty).
    mean = tl.sum(masked, axis=0) / tl.maximum(count, 1.0) + 0.0 * probs_total
    grad = _backward_finish(masked, mean, probs)
    tl.store(grad_ptr + row * size + offsets, grad.to(grad_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _sparsemax_backward_tiled_kernel(
    probs_ptr, cotangent_ptr, grad_ptr, size, TILE_SIZE: tl.constexpr, COMPUTE: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, TILE_SIZE)
    masked_total = tl.zeros((), COMPUTE)
    count = tl.zeros((), COMPUTE)
    probs_total = tl.zeros((), COMPUTE)
    for start in range(0, size, TILE_SIZE):
        index = start + offsets
        valid = index < size
        probs = tl.load(probs_ptr + row * size + index, mask=valid, other=0.0).to(COMPUTE)
        cotangent = tl.load(cotangent_ptr + row * size + index, mask=valid, other=0.0).to(COMPUTE)
        masked, tile_count, tile_probs = _backward_sums(probs, cotangent)
        masked_total += tl.sum(masked, axis=0)
        count += tile_count
        probs_total += tile_probs
    mean = masked_total / tl.maximum(count, 1.0) + 0.0 * probs_total
    for start in range(0, size, TILE_SIZE):
        index = start + offsets
        valid = index < size
        probs = tl.load(probs_ptr + row * size + index, mask=valid, other=0.0).to(COMPUTE)
        cotangent = tl.load(cotangent_ptr + row * size + index, mask=valid, other=0.0).to(COMPUTE)
        masked = cotangent * tl.where(probs > 0.0, 1.0, 0.0)
        grad = _backward_finish(masked, mean, probs)
        tl.store(grad_ptr + row * size + index, grad.to(grad_ptr.dtype.element_ty), mask=valid)


def _options(dtype: torch.dtype, block: int) -> dict[str, Any]:
    """Launch options: the compute dtype (float64 rows in float64, the others
    in float32), about 8 entries per thread on 1 to 16 warps, and no
    contraction into fused multiply-adds (the reference's rounding)."""
    return {
        "COMPUTE": tl.float64 if dtype == torch.float64 else tl.float32,
        "num_warps": max(1, min(16, block // 256)),
        "enable_fp_fusion": False,
    }


def _quiet() -> contextlib.AbstractContextManager[Any]:
    """Silence NumPy's floating-point warnings in the interpreter (which runs
    on NumPy): the kernels rely on IEEE ``inf`` and NaN arithmetic, as a GPU does."""
    if INTERPRETED:
        import numpy as np

        return np.errstate(all="ignore")
    return contextlib.nullcontext()


def sparsemax_forward_rows(scores: torch.Tensor) -> torch.Tensor:
    """Sparsemax of each row of a contiguous ``(rows, K)`` tensor (``rows >= 1``)."""
    rows, size = scores.shape
    probs = torch.empty_like(scores)
    with _quiet():
        if size <= ONCHIP_MAX:
            block = triton.next_power_of_2(size)
            _sparsemax_onchip_kernel[(rows,)](
                scores, probs, size, BLOCK=block, **_options(scores.dtype, block)
            )
        else:
            _sparsemax_tiled_kernel[(rows,)](
                scores, probs, size, TILE_SIZE=TILE, **_options(scores.dtype, TILE)
            )
    return probs


def topk_sparsemax_forward_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k sparsemax of each row of a contiguous ``(rows, K)`` tensor
    (``rows >= 1``, ``1 <= k <= K``)."""
    rows, size = scores.shape
    probs = torch.empty_like(scores)
    with _quiet():
        if size <= ONCHIP_MAX:
            block = triton.next_power_of_2(size)
            _topk_sparsemax_onchip_kernel[(rows,)](
                scores, probs, size, k, BLOCK=block, **_options(scores.dtype, block)
            )
        else:
            _topk_sparsemax_tiled_kernel[(rows,)](
                scores, probs, size, k, TILE_SIZE=TILE, **_options(scores.dtype, TILE)
            )
    return probs


def sparsemax_backward_rows(probs: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
    """Sparsemax VJP of each row of contiguous ``(rows, K)`` tensors, in the
    dtype of ``cotangent`` (computed in float64 when either is float64)."""
    rows, size = probs.shape
    grad = torch.empty_like(cotangent)
    wide = torch.float64 if torch.float64 in (probs.dtype, cotangent.dtype) else torch.float32
    with _quiet():
        if size <= ONCHIP_MAX:
            block = triton.next_power_of_2(size)
            options = _options(wide, block)
            _sparsemax_backward_onchip_kernel[(rows,)](probs, cotangent, grad, size, BLOCK=block, **options)
        else:
            options = _options(wide, TILE)
            _sparsemax_backward_tiled_kernel[(rows,)](probs, cotangent, grad, size, TILE_SIZE=TILE, **options)
    return grad
