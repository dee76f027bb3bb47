"""SparseMAP with a float32 working dtype: marginals close to the float64 solution.

The solver works in float64 wherever the namespace and device have it; JAX
without ``jax_enable_x64`` (and PyTorch on Apple GPUs) do not, and there the
active set runs in float32.  The suite enables x64 for JAX globally, so the
real no-x64 case runs in a subprocess; the other namespaces are made to take
the float32 path by patching the working dtype.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from backends import require_backend, to_numpy
from reference import all_sequences, sparsemap_enumerated
from test_sparsemap import budget_projection

from sparsecore import Budget, Sequence, sparsemap

# Issue 17 asked for 1e-5.  The re-solve on the support alone left errors of
# up to 1.36e-5 in test_jax_without_x64, where a row stopped one tiny-weight
# atom short; adding the atoms that the re-solved marginals' duality gap
# asks for brings the largest error to about 2.6e-6.  Before either, JAX
# without x64 was off by 1.5e-4 here.
TOLERANCE = 1e-5


def marginals(probs, atoms) -> np.ndarray:
    return np.einsum(
        "...m,...md->...d", to_numpy(probs).astype(np.float64), to_numpy(atoms).astype(np.float64)
    )


def scores(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """N(0, 1) scores exactly representable in float32, as float64."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(np.float64)


def test_jax_without_x64(tmp_path):
    require_backend("jax")
    budget_scores = scores((256, 32), 0)
    sequence_scores = scores((64, Sequence(3, 3).dim), 1)
    np.save(tmp_path / "budget.npy", budget_scores)
    np.save(tmp_path / "sequence.npy", sequence_scores)
    script = textwrap.dedent(
        f"""
        import jax, jax.numpy as jnp, numpy as np
        import sparsecore_jax
        from sparsecore import Budget, Sequence
        assert not jax.config.jax_enable_x64
        for name, structure in (("budget", Budget(32, 8)), ("sequence", Sequence(3, 3))):
            t = jnp.asarray(np.load({str(tmp_path)!r} + f"/{{name}}.npy"), dtype=jnp.float32)
            probs, atoms = jax.jit(lambda v: sparsecore_jax.sparsemap(v, structure))(t)
            assert probs.dtype == jnp.float32, probs.dtype
            np.save({str(tmp_path)!r} + f"/{{name}}_mu.npy", np.einsum("bm,bmd->bd", probs, atoms))
        """
    )
    env_script = "import os; os.environ.pop('JAX_ENABLE_X64', None)\n" + script
    subprocess.run([sys.executable, "-c", env_script], check=True, timeout=600)
    budget = np.load(tmp_path / "budget_mu.npy").astype(np.float64)
    expected = budget_projection(budget_scores, 8)
    np.testing.assert_allclose(budget, expected, rtol=0, atol=TOLERANCE)
    assert np.mean(np.abs(budget - expected) > 1e-5) < 1e-3  # all but a few entries within 1e-5
    sequence = np.load(tmp_path / "sequence_mu.npy").astype(np.float64)
    expected = sparsemap_enumerated(sequence_scores, all_sequences(3, 3))
    np.testing.assert_allclose(sequence, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("structure", [Budget(32, 8), Sequence(3, 3)], ids=repr)
def test_float32_working_dtype_on_every_namespace(xp, make, monkeypatch, structure):
    # Budget(32, 8) is where JAX without x64 was off by 1.5e-4 before the
    # re-solve on the support; larger budgets can still be off by about 5e-5
    # (nearly dependent supports; see the sparsemap docstring).
    from sparsecore._sparsemap import _public

    monkeypatch.setattr(_public, "solver_dtype", lambda dtype, dev, *, xp: dtype)
    t = scores((64, structure.dim), structure.dim)
    probs, atoms = sparsemap(make(t, "float32"), structure)
    assert to_numpy(probs).dtype == np.float32
    if isinstance(structure, Budget):
        expected = budget_projection(t, structure.budget)
    else:
        expected = sparsemap_enumerated(t, all_sequences(3, 3))
    np.testing.assert_allclose(marginals(probs, atoms), expected, rtol=0, atol=TOLERANCE)
