"""The paper's experiments on the PyTorch adapter: estimators, data, training harness.

Run from the repository's root, e.g. ``python -m experiments.compare bitvector``.
"""
