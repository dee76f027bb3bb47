"""Backend helpers for the test suite: build arrays, read them back, compare.

Every test that runs on several array libraries goes through these helpers,
so that "the same input" means the same numbers on every backend and every
comparison is made in NumPy float64 against an independent reference.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "FLOAT_DTYPES",
    "TOLERANCES",
    "asarray",
    "assert_close",
    "assert_like",
    "backend_available",
    "backend_context",
    "backend_params",
    "cast_down",
    "dtype_name",
    "has_dtype",
    "namespace",
    "requested_backends",
    "require_backend",
    "time_limit",
    "to_numpy",
]

#: Every backend the ``xp`` fixture is parametrized over.
BACKENDS = (
    "numpy",
    "numpy_readonly",
    "array_api_strict",
    "array_api_strict_no_dds",
    "torch",
    "jax",
    "cupy",
)

_LIBRARY = {
    "numpy": "numpy",
    "numpy_readonly": "numpy",
    "array_api_strict": "array_api_strict",
    "array_api_strict_no_dds": "array_api_strict",
    "torch": "torch",
    "jax": "jax",
    "cupy": "cupy",
}

FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")

#: ``torch.testing.assert_close`` defaults, per dtype: (rtol, atol).
TOLERANCES = {
    "float64": (1e-7, 1e-7),
    "float32": (1.3e-6, 1e-5),
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
}

ENV_VAR = "SPARSECORE_TEST_BACKENDS"
#: Where the ``torch`` backend's test tensors live ("cpu" unless set, e.g. "cuda").
TORCH_DEVICE_VAR = "SPARSECORE_TEST_TORCH_DEVICE"


def requested_backends() -> set[str]:
    """The backends named in ``SPARSECORE_TEST_BACKENDS`` (these must not skip)."""
    value = os.environ.get(ENV_VAR, "")
    return {name.strip() for name in value.split(",") if name.strip()}


def backend_available(name: str) -> tuple[bool, str]:
    """Whether backend ``name`` can run here, and why not if it cannot."""
    try:
        module = importlib.import_module(_LIBRARY[name])
    except ImportError as error:
        return False, f"{_LIBRARY[name]} is not installed ({error})"
    if name == "cupy":
        try:
            count = module.cuda.runtime.getDeviceCount()
        except Exception as error:  # no driver, no device
            return False, f"cupy has no usable GPU ({error})"
        if count == 0:
            return False, "cupy has no usable GPU"
    return True, ""


def require_backend(name: str, *, module_level: bool = False) -> None:
    """Skip when backend ``name`` is missing, or fail when it was requested.

    A backend named in ``SPARSECORE_TEST_BACKENDS`` must run: a missing one
    fails the test (or the collection of the module) instead of skipping.
    """
    import pytest

    available, reason = backend_available(name)
    if available:
        return
    message = f"backend {name!r} unavailable: {reason}"
    if name in requested_backends():
        pytest.fail(f"{message}, but it is requested by {ENV_VAR}", pytrace=False)
    pytest.skip(message, allow_module_level=module_level)


@contextlib.contextmanager
def backend_context(name: str) -> Iterator[str]:
    """Require backend ``name`` and set it up for the duration of a test.

    ``array_api_strict_no_dds`` switches off data-dependent shapes (boolean
    indexing, ``nonzero``, ``unique``), as a jit compiler does, and resets
    the flags afterwards.
    """
    require_backend(name)
    if name != "array_api_strict_no_dds":
        yield name
        return
    import array_api_strict

    array_api_strict.set_array_api_strict_flags(data_dependent_shapes=False)
    try:
        yield name
    finally:
        array_api_strict.reset_array_api_strict_flags()


@contextlib.contextmanager
def time_limit(name: str, seconds: float, what: str) -> Iterator[None]:
    """Turn an endless loop into a ``TimeoutError`` after ``seconds``.

    A ``SIGALRM`` handler can only interrupt Python code, so for JAX the
    block also runs under ``jax.disable_jit()``: ``lax.while_loop`` then
    loops in Python instead of inside a compiled XLA program.
    """

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{what} did not finish within {seconds} s (an endless loop?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        if name == "jax":
            import jax

            with jax.disable_jit():
                yield
        else:
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def backend_params(
    cases: list[tuple[Any, ...]],
    *,
    jax_cases: list[tuple[Any, ...]] | None = None,
    case_id: Any = None,
) -> list[Any]:
    """Parameters ``(xp_name, *case)`` for ``parametrize(..., indirect=["xp_name"])``.

    Every backend gets ``cases``, except JAX, which gets ``jax_cases`` when
    given: eager JAX compiles every operation anew for each new shape and
    dtype (about a second per call), so the heaviest matrices run on JAX for
    a representative subset (every JAX-specific code path is still taken).
    """
    import pytest

    params = []
    for name in BACKENDS:
        chosen = jax_cases if name == "jax" and jax_cases is not None else cases
        for case in chosen:
            label = case_id(case) if case_id is not None else "-".join(map(str, case))
            params.append(pytest.param(name, *case, id=f"{name}-{label}"))
    return params


def namespace(name: str) -> Any:
    """The array namespace module of backend ``name``."""
    if name == "jax":
        return importlib.import_module("jax.numpy")
    return importlib.import_module(_LIBRARY[name])


def has_dtype(name: str, dtype: str) -> bool:
    """Whether backend ``name`` has the dtype called ``dtype``."""
    return hasattr(namespace(name), dtype)


def _numpy_data(data: Any, dtype: str) -> np.ndarray:
    """``data`` as a NumPy array holding exactly the values of ``dtype``.

    Floating data are rounded to ``dtype`` once, here, so that every backend
    receives the same numbers (and references are computed on them).
    """
    array = np.array(data, copy=True)
    if dtype == "bfloat16":
        return round_bfloat16(array.astype(np.float64))
    return array.astype(dtype)


def asarray(name: str, data: Any, dtype: str = "float64", *, device: Any = None) -> Any:
    """An array of backend ``name`` with the values of ``data`` in ``dtype``.

    ``dtype`` is a name ("float64", "float32", "float16", "bfloat16",
    "int64", "bool", "complex128", ...).  ``numpy_readonly`` arrays are
    made read-only.  bfloat16 data are rounded to bfloat16 before transfer.
    """
    values = _numpy_data(data, dtype)
    xp = namespace(name)
    if name in ("numpy", "numpy_readonly"):
        if dtype == "bfloat16":
            raise ValueError("NumPy has no bfloat16")
        array = np.array(values, copy=True)
        if name == "numpy_readonly":
            array.flags.writeable = False
        return array
    if name in ("array_api_strict", "array_api_strict_no_dds"):
        if dtype == "bfloat16":
            raise ValueError("array_api_strict has no bfloat16")
        kwargs = {} if device is None else {"device": device}
        return xp.asarray(values, **kwargs)
    if name == "torch":
        import torch

        where = device if device is not None else os.environ.get(TORCH_DEVICE_VAR, "cpu")
        if dtype == "bfloat16":
            return torch.asarray(values.astype(np.float32)).to(device=where, dtype=torch.bfloat16)
        return torch.asarray(values.copy()).to(where)
    if name == "jax":
        if dtype == "bfloat16":
            return xp.asarray(values.astype(np.float32), dtype=xp.bfloat16)
        return xp.asarray(values)
    if name == "cupy":
        if dtype == "bfloat16":
            raise ValueError("CuPy has no bfloat16")
        return xp.asarray(values)
    raise ValueError(f"unknown backend {name!r}")


def to_numpy(x: Any) -> np.ndarray:
    """Any backend's array as a NumPy array (bfloat16 read as float32)."""
    module = type(x).__module__
    if module.startswith("torch"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    if module.startswith("array_api_strict"):
        import array_api_strict

        return np.asarray(x.to_device(array_api_strict.Device("CPU_DEVICE")))
    if module.startswith("cupy"):
        return x.get()
    array = np.asarray(x)
    if array.dtype.name == "bfloat16":  # jax / ml_dtypes
        array = array.astype(np.float32)
    return array


def dtype_name(x: Any) -> str:
    """The dtype of a backend array as a plain name ("float32", "bfloat16", ...)."""
    name = str(x.dtype)
    for prefix in ("torch.", "array_api_strict."):
        name = name.removeprefix(prefix)
    return name


def round_bfloat16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to bfloat16 (round to nearest even), returned as float32."""
    single = np.asarray(x, dtype=np.float32)
    bits = single.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(single), np.float32(np.nan), out)


def cast_down(x: np.ndarray, dtype: str) -> np.ndarray:
    """A float64 array rounded to ``dtype`` and read back as float64."""
    x = np.asarray(x, dtype=np.float64)
    if dtype == "bfloat16":
        return round_bfloat16(x).astype(np.float64)
    return x.astype(dtype).astype(np.float64)


def assert_close(actual: Any, expected: np.ndarray, dtype: str | None = None, *, err_msg: str = "") -> None:
    """``actual`` (any backend) equals the float64 reference ``expected``.

    The reference is rounded to ``dtype`` (by default the dtype of
    ``actual``) and compared with ``torch.testing.assert_close``'s default
    tolerances for that dtype; NaN must match NaN.
    """
    dtype = dtype_name(actual) if dtype is None else dtype
    rtol, atol = TOLERANCES[dtype]
    got = to_numpy(actual).astype(np.float64)
    want = cast_down(expected, dtype)
    assert got.shape == want.shape, f"shape {got.shape} != expected {want.shape}. {err_msg}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=err_msg)


def assert_like(out: Any, like: Any, *, shape: tuple[int, ...] | None = None, dtype: Any = None) -> None:
    """``out`` has the array type, namespace, device, dtype and shape of ``like``.

    ``shape`` and ``dtype`` override the expected shape and dtype.
    """
    from array_api_compat import array_namespace, device

    assert type(out) is type(like), f"type {type(out)} != {type(like)}"
    assert array_namespace(out) is array_namespace(like)
    expected_dtype = like.dtype if dtype is None else dtype
    assert out.dtype == expected_dtype, f"dtype {out.dtype} != {expected_dtype}"
    expected_shape = tuple(like.shape) if shape is None else tuple(shape)
    assert tuple(out.shape) == expected_shape, f"shape {tuple(out.shape)} != {expected_shape}"
    assert device(out) == device(like), f"device {device(out)} != {device(like)}"
