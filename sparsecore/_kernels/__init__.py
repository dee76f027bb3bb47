"""Fused kernels beside the array-API reference (fast paths, chosen per call).

``_cpu`` decides whether a call can take the numba kernels of ``_numba``
(NumPy arrays and plain CPU torch tensors of float dtypes, numba installed,
kernels enabled) and converts in and out without copies; every other call
takes the reference path.
"""
