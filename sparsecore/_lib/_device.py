"""Where an array lives: the predicate that picks the solvers' GPU loops."""

from __future__ import annotations

from typing import Any

from array_api_compat import device, is_cupy_namespace, is_torch_namespace

__all__ = ["on_gpu"]


def on_gpu(x: Any, *, xp: Any) -> bool:
    """Whether ``x`` is on a GPU (a CuPy array or a CUDA tensor).

    There a read of a device value by the host waits for every queued kernel,
    so the solvers run a fixed number of steps between such reads instead of
    reading a stopping flag at every step.
    """
    if is_cupy_namespace(xp):
        return True
    if is_torch_namespace(xp):
        return getattr(device(x), "type", None) == "cuda"
    return False
