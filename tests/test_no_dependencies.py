"""The core imports no framework: not at import, not when used on NumPy arrays."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

FRAMEWORKS = ("torch", "jax", "jaxlib", "cupy", "array_api_strict")


def run_isolated(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_core_imports_and_runs_without_frameworks():
    result = run_isolated(
        f"""
        import sys
        import numpy as np

        import sparsecore

        s = np.array([[0.0, 0.5, 1.0], [0.2, -np.inf, 0.1]])
        probs = sparsecore.sparsemax(s)
        assert np.allclose(probs[0], [0.0, 0.25, 0.75]), probs
        grad = sparsecore.sparsemax_vjp(probs, np.ones_like(s))
        assert np.allclose(grad, 0.0), grad
        top = sparsecore.topk_sparsemax(s, 1)
        assert np.array_equal(top, [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), top
        sparsecore.topk_sparsemax_vjp(top, np.ones_like(s))
        sparsecore.topk_is_exact(top, 1)
        sparsecore.sparsemax(s, axis=0, nan_policy="raise")
        loaded = sorted(name for name in {FRAMEWORKS!r} if name in sys.modules)
        assert not loaded, f"the core imported {{loaded}}"
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(("adapter", "other"), [("sparsecore_torch", "jax"), ("sparsecore_jax", "torch")])
def test_adapters_do_not_import_each_other(adapter, other):
    pytest.importorskip(adapter.removeprefix("sparsecore_"))
    result = run_isolated(
        f"""
        import sys
        import {adapter}
        assert {other!r} not in sys.modules, "{adapter} imported {other}"
        assert "cupy" not in sys.modules
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
