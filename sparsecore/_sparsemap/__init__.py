"""SparseMAP: the projection onto the marginal polytope, by the active-set method.

- :mod:`._public`: :func:`sparsemap`, :func:`sparsemap_vjp`,
  :func:`sparsemap_jvp` and their argument checks (the only checks);
- :mod:`._step`: one active-set step on a batch of rows, and its state;
- :mod:`._kkt`: the bordered KKT system on a support;
- :mod:`._driver`: the loops around the step (static shapes under JAX,
  growing buffers eagerly), with the eager storage in :mod:`._buffers`.
"""

from ._public import sparsemap, sparsemap_jvp, sparsemap_vjp

__all__ = ["sparsemap", "sparsemap_jvp", "sparsemap_vjp"]
