"""The surface the framework adapters build on.

``sparsecore_torch`` and ``sparsecore_jax`` import the core through this
module only, never its private modules, so that the core's files can move
without breaking them.  It is stable within a release series but is not the
user API (that is :mod:`sparsecore`): its functions assume their caller has
already checked the arguments (``*_checked``) or are those checks.

- Argument checks, raising ``TypeError``/``ValueError`` that name the
  argument: :func:`check_floating`, :func:`check_k`,
  :func:`check_nan_policy`, :func:`normalize_axis`, :func:`raise_on_nan`.
- The kernel switch: :func:`kernels_enabled`.
- The reference computations behind checked arguments:
  :func:`sparsemax_checked`, :func:`sparsemax_vjp_checked`.
"""

from __future__ import annotations

from ._lib._arrays import raise_on_nan
from ._lib._dispatch import kernels_enabled
from ._lib._validation import check_floating, check_k, check_nan_policy, normalize_axis
from ._sparsemax import sparsemax_checked, sparsemax_vjp_checked

__all__ = [
    "check_floating",
    "check_k",
    "check_nan_policy",
    "kernels_enabled",
    "normalize_axis",
    "raise_on_nan",
    "sparsemax_checked",
    "sparsemax_vjp_checked",
]
