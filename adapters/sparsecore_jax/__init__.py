"""JAX bindings of sparsecore: ``jax.custom_vjp`` over the core's rules.

Every function works under ``jax.jit``, ``jax.vmap`` and ``jax.grad``; the
solvers' data-dependent stopping becomes a bounded ``lax.while_loop``.
"""

from ._functions import sparsemap, sparsemax, topk_is_exact, topk_sparsemax, topk_sparsemax_structured

__all__ = ["sparsemap", "sparsemax", "topk_is_exact", "topk_sparsemax", "topk_sparsemax_structured"]
