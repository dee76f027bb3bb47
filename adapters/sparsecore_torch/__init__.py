"""PyTorch bindings of sparsecore: autograd Functions and nn.Modules.

Each function calls the core's forward and backward rules on the tensors
themselves (same device, no copies) and works under ``torch.func``;
``marginalize`` takes exact expectations of a loss over a sparse support.
"""

from ._functions import (
    SparseMAPFunction,
    SparsemaxFunction,
    TopKSparsemaxFunction,
    TopKSparsemaxStructuredFunction,
    sparsemap,
    sparsemax,
    topk_is_exact,
    topk_sparsemax,
    topk_sparsemax_structured,
)
from ._marginalize import Marginal, marginalize
from ._modules import Sparsemax, TopKSparsemax

__all__ = [
    "Marginal",
    "SparseMAPFunction",
    "Sparsemax",
    "SparsemaxFunction",
    "TopKSparsemax",
    "TopKSparsemaxFunction",
    "TopKSparsemaxStructuredFunction",
    "marginalize",
    "sparsemap",
    "sparsemax",
    "topk_is_exact",
    "topk_sparsemax",
    "topk_sparsemax_structured",
]
