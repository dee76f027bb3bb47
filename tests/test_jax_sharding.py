"""sparsecore_jax on arrays sharded over a device mesh (4 host CPU devices).

JAX fixes its device count when it is first imported, and the rest of the
suite has imported it already, so the check runs in a subprocess started
with ``--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from backends import require_backend

require_backend("jax", module_level=True)

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import sparsecore_jax
    from sparsecore import BitVector, Budget

    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    rows = NamedSharding(mesh, PartitionSpec("batch", None))
    data = np.random.default_rng(0).standard_normal((16, 12))
    x = jax.device_put(jnp.asarray(data), rows)
    tangent = jax.device_put(jnp.asarray(np.random.default_rng(1).standard_normal((16, 12))), rows)
    weights = jnp.arange(12.0)

    def marginals(probs_atoms):
        probs, atoms = probs_atoms
        return jnp.einsum("...m,...md->...d", probs, atoms)

    functions = {
        "sparsemax": lambda s: sparsecore_jax.sparsemax(s),
        "topk_sparsemax": lambda s: sparsecore_jax.topk_sparsemax(s, 3),
        "topk_sparsemax_structured": lambda t: marginals(
            sparsecore_jax.topk_sparsemax_structured(t, BitVector(12), 4)
        ),
        "sparsemap": lambda t: marginals(sparsecore_jax.sparsemap(t, Budget(12, 3))),
    }
    report = {}
    for name, function in functions.items():
        cases = {
            "value": (function, (x,)),
            "grad": (jax.grad(lambda s: jnp.sum(function(s) * weights)), (x,)),
            "jvp": (lambda s, v: jax.jvp(function, (s,), (v,))[1], (x, tangent)),
        }
        for case, (compute, args) in cases.items():
            jitted = jax.jit(compute)
            out = jitted(*args)
            unsharded = jax.jit(compute)(*(jnp.asarray(np.asarray(a)) for a in args))
            hlo = jitted.lower(*args).compile().as_text()
            report[f"{name}-{case}"] = {
                "sharded_like_input": out.sharding.is_equivalent_to(rows, out.ndim),
                "gathers": [op for op in ("all-gather", "all-to-all") if op in hlo],
                "error": float(np.max(np.abs(np.asarray(out) - np.asarray(unsharded)))),
            }
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


NAMES = ["sparsemax", "topk_sparsemax", "topk_sparsemax_structured", "sparsemap"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["value", "grad", "jvp"])
@pytest.mark.parametrize("name", NAMES)
def test_sharded_batch_stays_sharded(report, name, case):
    entry = report[f"{name}-{case}"]
    # Outputs keep the batch sharding, nothing is gathered onto one device
    # (the loops' stopping test is a scalar all-reduce), and the values are
    # those of the unsharded computation.
    assert entry["sharded_like_input"]
    assert entry["gathers"] == []
    assert entry["error"] < 1e-12
