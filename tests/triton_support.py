"""Running the Triton kernels in the tests, with or without a GPU.

Without CUDA the kernels run in Triton's interpreter on CPU tensors:
``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before any test can import
``sparsecore_torch._triton`` (Triton reads the variable when a kernel is
defined, which happens on that module's first import).  With CUDA and
``SPARSECORE_TEST_TRITON=cuda`` (``benchmarks/gpu_check.sh`` sets it) the
compiled kernels run on CUDA tensors.

Inside :func:`triton_context` every fallback of ``sparsecore_torch._gpu`` to
the reference rules raises, so a test that passes there ran the kernels.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from unittest import mock

from backends import requested_backends, require_backend

DEVICE_ENV = "SPARSECORE_TEST_TRITON"

# Whether the fallbacks patched by triton_context raise (off in reference_path).
_strict = {"on": True}


def wants_interpreter() -> bool:
    """Whether this test process runs the kernels in Triton's interpreter."""
    return os.environ.get(DEVICE_ENV, "interpret") != "cuda"


def require_triton() -> None:
    """Skip when Triton is missing, or fail when ``triton`` is named in
    ``SPARSECORE_TEST_BACKENDS``."""
    import pytest

    require_backend("torch")
    if importlib.util.find_spec("triton") is not None:
        return
    if "triton" in requested_backends():
        pytest.fail("triton is not installed, but it is requested by SPARSECORE_TEST_BACKENDS", pytrace=False)
    pytest.skip("triton is not installed")


def _no_fallback(module, name: str):
    """The reference rule ``module.name``, made an error for the inputs that
    the kernels take (floating tensors); others (integer input, which the
    rule rejects) still reach it."""
    original = getattr(module, name)

    def fallback(*args, **kwargs):
        if _strict["on"] and args[0].dtype in module.KERNEL_DTYPES:
            raise AssertionError(f"the Triton path fell back to the reference ({name})")
        return original(*args, **kwargs)

    return fallback


@contextlib.contextmanager
def triton_context(*, strict: bool = True) -> Iterator[str]:
    """Run the torch adapter on the Triton kernels; yields the device name.

    With ``strict`` the reference fallbacks raise ``AssertionError`` on
    floating input.
    """
    require_triton()
    import pytest
    from sparsecore_torch import _gpu

    kernels = _gpu.triton_kernels()
    assert kernels is not None, "triton installed but sparsecore_torch._triton does not import"
    with contextlib.ExitStack() as stack:
        if kernels.INTERPRETED:
            stack.enter_context(_gpu.interpret_on_cpu())
            device = "cpu"
        else:
            import torch

            if not torch.cuda.is_available():
                pytest.skip("compiled Triton kernels need CUDA (set TRITON_INTERPRET=1 to interpret)")
            device = "cuda"
        if strict:
            for name in ("sparsemax_checked", "sparsemax_vjp_checked", "topk_sparsemax"):
                stack.enter_context(mock.patch.object(_gpu, name, _no_fallback(_gpu, name)))
        yield device


def reference_path(function, *args, **kwargs):
    """``function(*args, **kwargs)`` on the reference path (kernels off, the
    fallbacks allowed)."""
    import sparsecore

    previous = _strict["on"]
    _strict["on"] = False
    try:
        with sparsecore.use_kernels(False):
            return function(*args, **kwargs)
    finally:
        _strict["on"] = previous
