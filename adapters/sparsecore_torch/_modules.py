"""``torch.nn.Module`` wrappers of the mappings."""

from __future__ import annotations

import torch

from sparsecore.internal import check_k

from ._functions import sparsemax, topk_sparsemax

__all__ = ["Sparsemax", "TopKSparsemax"]


class Sparsemax(torch.nn.Module):
    """Applies :func:`sparsecore_torch.sparsemax` along ``dim``.

    Examples
    --------
    >>> import torch
    >>> from sparsecore_torch import Sparsemax
    >>> Sparsemax(dim=-1)(torch.tensor([[0.0, 0.5, 1.0]]))
    tensor([[0.0000, 0.2500, 0.7500]])
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return sparsemax(scores, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class TopKSparsemax(torch.nn.Module):
    """Applies :func:`sparsecore_torch.topk_sparsemax` with ``k`` along ``dim``."""

    def __init__(self, k: int, dim: int = -1) -> None:
        super().__init__()
        # The axis size is known only at call time; check what can be now.
        self.k = check_k(k, k) if isinstance(k, int) and not isinstance(k, bool) and k >= 1 else check_k(k, 1)
        self.dim = dim

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return topk_sparsemax(scores, self.k, dim=self.dim)

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}"
