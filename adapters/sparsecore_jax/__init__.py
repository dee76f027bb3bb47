"""JAX bindings of sparsecore: ``jax.custom_vjp`` over the core's rules.

Every function works under ``jax.jit``, ``jax.vmap`` and ``jax.grad``; the
solvers' data-dependent stopping becomes a bounded ``lax.while_loop``, and
``marginalize`` packs a sparse support into a static maximal size.
"""

from ._functions import sparsemap, sparsemax, topk_is_exact, topk_sparsemax, topk_sparsemax_structured
from ._marginalize import Marginal, marginalize

__all__ = [
    "Marginal",
    "marginalize",
    "sparsemap",
    "sparsemax",
    "topk_is_exact",
    "topk_sparsemax",
    "topk_sparsemax_structured",
]
