"""The test helpers themselves: a backend fixture that can fail, comparisons that can fail."""

from __future__ import annotations

import backends
import numpy as np
import pytest
from backends import (
    TOLERANCES,
    asarray,
    assert_close,
    assert_like,
    cast_down,
    dtype_name,
    has_dtype,
    require_backend,
    to_numpy,
)


def test_requested_missing_backend_fails_and_unrequested_skips(monkeypatch):
    monkeypatch.setattr(backends, "backend_available", lambda name: (False, "not here"))
    monkeypatch.setenv("SPARSECORE_TEST_BACKENDS", "numpy, cupy")
    with pytest.raises(pytest.fail.Exception, match="cupy"):
        require_backend("cupy")
    monkeypatch.setenv("SPARSECORE_TEST_BACKENDS", "numpy")
    with pytest.raises(pytest.skip.Exception, match="cupy"):
        require_backend("cupy")
    monkeypatch.delenv("SPARSECORE_TEST_BACKENDS")
    with pytest.raises(pytest.skip.Exception):
        require_backend("torch")


@pytest.mark.parametrize(
    "dtype", ["float64", "float32", "float16", "bfloat16", "int64", "bool", "complex128"]
)
def test_asarray_round_trips(xp_name, xp, dtype):
    if not has_dtype(xp_name, dtype):
        pytest.skip(f"{xp_name} has no {dtype}")
    data = np.array([[0.0, 1.0, -2.5], [3.0, 0.125, 1.0]])
    array = asarray(xp_name, data, dtype)
    assert dtype_name(array) == dtype
    assert array.shape == (2, 3)
    assert xp.isdtype(array.dtype, "bool") == (dtype == "bool")
    back = to_numpy(array)
    np.testing.assert_array_equal(
        back.astype(np.float64 if dtype != "complex128" else np.complex128),
        data.astype(dtype if dtype != "bfloat16" else "float32"),
    )
    if xp_name == "numpy_readonly":
        assert not array.flags.writeable
    if xp_name == "array_api_strict_no_dds":
        import array_api_strict

        assert array_api_strict.get_array_api_strict_flags()["data_dependent_shapes"] is False


def test_strict_flags_are_reset_after_the_no_dds_backend():
    require_backend("array_api_strict")
    import array_api_strict

    assert array_api_strict.get_array_api_strict_flags()["data_dependent_shapes"] is True


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_assert_close_rejects_an_error_above_the_dtype_tolerance(dtype):
    rtol, atol = TOLERANCES[dtype]
    expected = np.array([1.0, 0.5, 0.0])
    backend = "torch" if dtype == "bfloat16" else "numpy"
    require_backend(backend)
    assert_close(asarray(backend, expected, dtype), expected)
    wrong = expected + np.array([10 * (rtol + atol), 0.0, 0.0])
    with pytest.raises(AssertionError):
        assert_close(asarray(backend, wrong, dtype), expected)
    with pytest.raises(AssertionError):
        assert_close(asarray(backend, [np.nan, 0.5, 0.0], dtype), expected)


def test_cast_down_rounds_like_the_dtype():
    assert cast_down(np.array([1.0 + 2.0**-12]), "float16")[0] == 1.0
    assert cast_down(np.array([1.0 + 2.0**-9]), "bfloat16")[0] == 1.0
    assert cast_down(np.array([1.0 + 2.0**-7]), "bfloat16")[0] == 1.0 + 2.0**-7
    require_backend("torch")
    import torch

    values = np.random.default_rng(0).standard_normal(1000) * 100
    np.testing.assert_array_equal(
        cast_down(values, "bfloat16"),
        torch.tensor(values, dtype=torch.float32).to(torch.bfloat16).double().numpy(),
    )


def test_assert_like_checks_type_dtype_and_shape(xp_name, make):
    like = make([[1.0, 2.0]])
    assert_like(make([[0.0, 0.0]]), like)
    with pytest.raises(AssertionError):
        assert_like(make([[0.0, 0.0]], "float32"), like)
    with pytest.raises(AssertionError):
        assert_like(make([0.0, 0.0]), like)
    with pytest.raises(AssertionError):
        assert_like(np.zeros((1, 2)) if xp_name not in ("numpy", "numpy_readonly") else [[0.0, 0.0]], like)
