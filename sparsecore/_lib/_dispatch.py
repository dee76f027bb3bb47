"""The switch between fused kernels and the reference (array-API) path.

The array-API code in ``sparsecore`` is the reference implementation of every
function and the fallback for every namespace.  Fused kernels (numba on CPU,
Triton on CUDA tensors) are fast paths beside it; they are taken only when
:func:`kernels_enabled` says so.  Two ways force the reference path:

- the environment variable ``SPARSECORE_KERNELS=reference`` (read at every
  call, so that a test or a user can set it at any time);
- the context manager :func:`use_kernels` with ``False``.

The context manager wins over the environment variable while it is active.
Its state is process-wide (not per thread or per context), so that the
backward pass of a framework, which may run on another thread, takes the same
path as the forward pass that the ``with`` block encloses.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

__all__ = ["KERNELS_ENV", "kernels_enabled", "use_kernels"]

KERNELS_ENV = "SPARSECORE_KERNELS"
_ON = frozenset({"", "auto", "kernels", "on", "1", "true", "yes"})
_OFF = frozenset({"reference", "off", "0", "false", "no"})

_lock = threading.Lock()
_overrides: list[bool] = []


def kernels_enabled() -> bool:
    """Whether fused kernels may be taken (where one exists for the input).

    Raises
    ------
    ValueError
        If ``SPARSECORE_KERNELS`` holds a value other than ``auto`` (the
        default: kernels where available) or ``reference``.
    """
    if _overrides:
        return _overrides[-1]
    value = os.environ.get(KERNELS_ENV, "auto").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(
        f"{KERNELS_ENV} must be 'auto' (fused kernels where available) or 'reference' "
        f"(the array-API reference path everywhere), got {os.environ[KERNELS_ENV]!r}"
    )


@contextlib.contextmanager
def use_kernels(enabled: bool = True) -> Iterator[None]:
    """Enable or disable the fused kernels inside a ``with`` block.

    Parameters
    ----------
    enabled : bool, default True
        ``False`` forces the array-API reference path for every call made
        inside the block (forward and backward passes alike); ``True`` allows
        the kernels again, even where ``SPARSECORE_KERNELS=reference``.

    Examples
    --------
    >>> import numpy as np
    >>> import sparsecore
    >>> with sparsecore.use_kernels(False):
    ...     probs = sparsecore.sparsemax(np.array([0.0, 0.5, 1.0]))
    >>> probs
    array([0.  , 0.25, 0.75])
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    with _lock:
        _overrides.append(enabled)
    try:
        yield
    finally:
        with _lock:
            _overrides.pop()
