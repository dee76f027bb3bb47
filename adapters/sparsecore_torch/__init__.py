"""PyTorch bindings of sparsecore: autograd Functions and nn.Modules.

Each function calls the core's forward and backward rules on the tensors
themselves (same device, no copies) and works under ``torch.func``.
"""

from ._functions import (
    SparsemaxFunction,
    TopKSparsemaxFunction,
    TopKSparsemaxStructuredFunction,
    sparsemax,
    topk_is_exact,
    topk_sparsemax,
    topk_sparsemax_structured,
)
from ._modules import Sparsemax, TopKSparsemax

__all__ = [
    "Sparsemax",
    "SparsemaxFunction",
    "TopKSparsemax",
    "TopKSparsemaxFunction",
    "TopKSparsemaxStructuredFunction",
    "sparsemax",
    "topk_is_exact",
    "topk_sparsemax",
    "topk_sparsemax_structured",
]
