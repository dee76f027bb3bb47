"""sparsecore: exact marginalization of discrete latent variables over sparse supports.

The numerical core, written once against the Python array API: every
function takes and returns arrays of the caller's namespace (NumPy, CuPy,
PyTorch, JAX, array-api-strict), on the caller's device, in the caller's
floating dtype.  Framework bindings live in ``sparsecore_torch`` and
``sparsecore_jax``.
"""

from ._dependency import DependencyTree
from ._lib._dispatch import use_kernels
from ._sequence import Sequence
from ._sparsemap import sparsemap, sparsemap_jvp, sparsemap_vjp
from ._sparsemax import sparsemax, sparsemax_jvp, sparsemax_vjp
from ._structured_topk import (
    topk_sparsemax_structured,
    topk_sparsemax_structured_is_exact,
    topk_sparsemax_structured_jvp,
    topk_sparsemax_structured_vjp,
)
from ._structures import BitVector, Budget, Categorical, Structure
from ._topk import topk_is_exact, topk_sparsemax, topk_sparsemax_jvp, topk_sparsemax_vjp

__all__ = [
    "BitVector",
    "Budget",
    "Categorical",
    "DependencyTree",
    "Sequence",
    "Structure",
    "sparsemap",
    "sparsemap_jvp",
    "sparsemap_vjp",
    "sparsemax",
    "sparsemax_jvp",
    "sparsemax_vjp",
    "topk_is_exact",
    "topk_sparsemax",
    "topk_sparsemax_jvp",
    "topk_sparsemax_structured",
    "topk_sparsemax_structured_is_exact",
    "topk_sparsemax_structured_jvp",
    "topk_sparsemax_structured_vjp",
    "topk_sparsemax_vjp",
    "use_kernels",
]

__version__ = "0.1.0"
