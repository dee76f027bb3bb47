"""Fixtures shared by the test suite: the ``xp`` backend fixture and helpers.

``xp`` runs a test once per array backend: NumPy, read-only NumPy,
array-api-strict (also with data-dependent shapes switched off, which is
what a jit compiler imposes), PyTorch, JAX and CuPy.  A backend that is not
installed is skipped, unless it is named in the environment variable
``SPARSECORE_TEST_BACKENDS`` (comma-separated), in which case the test fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The helper modules (backends.py, reference.py) sit next to this file; with
# --import-mode=importlib the tests directory is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))
# The experiments package is not installed: it is found in the repository's
# root, appended last so that the installed sparsecore still comes first.
sys.path.append(str(Path(__file__).parent.parent))

from backends import (
    BACKENDS,
    asarray,
    backend_context,
    require_backend,
)
from triton_support import wants_interpreter

# Triton's interpreter runs the kernels on CPU tensors (tests marked
# ``triton``); it must be on before the kernel module is first imported.
if wants_interpreter():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:  # JAX computes in float32 unless told otherwise; the tests need float64.
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:
    pass


@pytest.fixture(params=BACKENDS)
def xp_name(request: pytest.FixtureRequest):
    """The name of the backend under test (see ``backends.BACKENDS``)."""
    with backend_context(request.param) as name:
        yield name


@pytest.fixture
def xp(xp_name: str):
    """The array-API namespace of the backend under test (array-api-compat's for
    NumPy, PyTorch and CuPy, ``jax.numpy`` for JAX)."""
    from array_api_compat import array_namespace

    return array_namespace(asarray(xp_name, [0.0]))


@pytest.fixture
def make(xp_name: str):
    """``make(data, dtype="float64")``: an array of the backend under test."""

    def build(data, dtype: str = "float64", **kwargs):
        return asarray(xp_name, data, dtype, **kwargs)

    return build


@pytest.fixture
def torch():
    """The torch module (skipped, or failed if requested, when missing)."""
    require_backend("torch")
    import torch

    return torch


@pytest.fixture
def jax_module():
    """The jax module (skipped, or failed if requested, when missing)."""
    require_backend("jax")
    import jax

    return jax


#: The backends (and ``test_bad_input``'s APIs) whose calls can take the CPU kernels.
KERNEL_BACKENDS = frozenset(
    {"numpy", "numpy_readonly", "torch", "core-numpy", "core-numpy_readonly", "core-torch", "torch-adapter"}
)
#: The parameter names through which a test names its backend.
BACKEND_PARAMS = ("xp_name", "api", "library", "library_name")


@pytest.fixture(params=["kernels", "reference"])
def kernel_path(request: pytest.FixtureRequest):
    """Run a test with the fused kernels allowed, and again with the
    array-API reference path forced (``sparsecore.use_kernels``).

    A module opts in with ``pytestmark = pytest.mark.usefixtures("kernel_path")``.
    """
    import sparsecore

    with sparsecore.use_kernels(request.param == "kernels"):
        yield request.param


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``reference`` twin of a test on a backend without CPU
    kernels (array-api-strict, JAX, CuPy): its ``kernels`` run already takes
    the reference path, so the twin would repeat it."""
    kept, removed = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        backends = [params[name] for name in BACKEND_PARAMS if name in params]
        twin = params.get("kernel_path") == "reference"
        if twin and backends and not any(name in KERNEL_BACKENDS for name in backends):
            removed.append(item)
        else:
            kept.append(item)
    if removed:
        config.hook.pytest_deselected(items=removed)
        items[:] = kept
