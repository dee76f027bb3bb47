"""The Examples sections of the public docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "sparsecore._sparsemax",
    "sparsecore._topk",
    "sparsecore._structured_topk",
    "sparsecore._sparsemap._public",
    "sparsecore._sequence",
    "sparsecore._dependency",
    "sparsecore_torch._functions",
    "sparsecore_torch._modules",
    "sparsecore_torch._marginalize",
    "sparsecore_jax._functions",
    "sparsecore_jax._marginalize",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    framework = name.split(".", maxsplit=1)[0].removeprefix("sparsecore_")
    if framework in ("torch", "jax"):
        pytest.importorskip(framework)
    if framework == "jax":
        import jax

        # The examples show float32, JAX's default; the suite turns on float64.
        previous = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", False)
    try:
        module = importlib.import_module(name)
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    finally:
        if framework == "jax":
            jax.config.update("jax_enable_x64", previous)
    assert result.attempted > 0
    assert result.failed == 0
