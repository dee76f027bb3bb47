"""Validation at the public boundary: one place for axis, dtype and k."""

from __future__ import annotations

import numbers
import operator
from typing import Any

__all__ = ["check_floating", "check_k", "check_nan_policy", "check_tangent", "normalize_axis"]

NAN_POLICIES = ("propagate", "raise")


def check_floating(x: Any, name: str, *, xp: Any) -> None:
    """Raise ``TypeError`` unless ``x`` has a real floating dtype."""
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{name} must have a real floating dtype (float16, bfloat16, float32 "
            f"or float64), got dtype {x.dtype}"
        )


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """Return ``axis`` as a non-negative int, or raise naming the argument."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {axis!r}")
    axis = operator.index(axis)
    if ndim == 0:
        raise ValueError(f"the input must have at least one dimension to take {name}={axis}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an input with {ndim} dimensions")
    return axis % ndim


def check_k(k: Any, size: int) -> int:
    """Return ``k`` as an int in ``1..size``, or raise naming ``k``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {k!r} of type {type(k).__name__}")
    k = operator.index(k)
    if not 1 <= k <= size:
        raise ValueError(f"k must satisfy 1 <= k <= {size} (the size of the axis), got k={k}")
    return k


def check_nan_policy(nan_policy: Any) -> str:
    """Return ``nan_policy`` if it is one of the accepted values."""
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    return str(nan_policy)


def check_tangent(probs: Any, atoms: Any, tangent_t: Any, *, xp: Any) -> None:
    """Raise unless ``tangent_t`` is a floating array of shape (..., D) matching
    a ``(probs, atoms)`` distribution of shapes (..., M) and (..., M, D)."""
    check_floating(tangent_t, "tangent_t", xp=xp)
    expected = (*probs.shape[:-1], atoms.shape[-1])
    if tuple(atoms.shape[:-1]) != tuple(probs.shape) or tuple(tangent_t.shape) != expected:
        raise ValueError(
            f"tangent_t must have shape {expected} for probs of shape {probs.shape} and atoms of "
            f"shape {atoms.shape}, got shape {tangent_t.shape}"
        )
