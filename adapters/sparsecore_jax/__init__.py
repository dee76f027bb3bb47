"""JAX bindings of sparsecore: ``jax.custom_jvp`` over the core's rules.

Every function works under ``jax.jit`` and ``jax.vmap`` and is
differentiable in both modes (``jax.jvp``, ``jacfwd``, ``grad``, ``jacrev``,
``hessian``): the forward-mode rule is linear in the tangent, and JAX
transposes it for the reverse mode.  The
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
