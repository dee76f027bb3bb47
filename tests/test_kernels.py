"""The numba CPU kernels: dispatch, zero-copy views, threads, and agreement
with the array-API reference path (forward and VJP) on NumPy and PyTorch.

The whole sparsemax/top-k test matrix (``test_sparsemax``, ``test_topk``,
``test_bad_input``, ``test_torch``, ``test_properties``) also runs with the
kernels on and off (the ``kernel_path`` fixture); the tests here check that
the kernels really run where they should, and nowhere else.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numba  # the test extra installs it: the kernel tests never skip for want of it
import numpy as np
import pytest
from backends import asarray, assert_close, require_backend, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference import sparsemax_bisect, sparsemax_vjp_reference, topk_sparsemax_bruteforce

import sparsecore
from sparsecore._kernels import _numba as kernels

ENTRY_POINTS = ("sparsemax_rows", "sparsemax_vjp_rows", "topk_sparsemax_rows")


@pytest.fixture
def calls(monkeypatch):
    """Count the calls of each kernel entry point (the kernels still run)."""
    counts = dict.fromkeys(ENTRY_POINTS, 0)
    for name in ENTRY_POINTS:
        original = getattr(kernels, name)

        def counted(*args, name=name, original=original):
            counts[name] += 1
            return original(*args)

        monkeypatch.setattr(kernels, name, counted)
    return counts


def run_core(library: str, data: np.ndarray, cotangent: np.ndarray, k: int, axis: int = -1):
    s, g = asarray(library, data), asarray(library, cotangent)
    probs = sparsecore.sparsemax(s, axis=axis)
    grad = sparsecore.sparsemax_vjp(probs, g, axis=axis)
    top = sparsecore.topk_sparsemax(s, k, axis=axis)
    top_grad = sparsecore.topk_sparsemax_vjp(top, g, axis=axis)
    return [to_numpy(x) for x in (probs, grad, top, top_grad)]


@pytest.mark.parametrize("library", ["numpy", "numpy_readonly", "torch"])
def test_kernels_run_on_cpu_arrays_and_match_the_references(library, calls):
    require_backend(library)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((5, 40))
    data[1, :7] = -np.inf
    cotangent = rng.standard_normal((5, 40))
    probs, grad, top, top_grad = run_core(library, data, cotangent, k=3, axis=-1)
    assert calls == {"sparsemax_rows": 1, "sparsemax_vjp_rows": 2, "topk_sparsemax_rows": 1}
    expected = sparsemax_bisect(data)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad, sparsemax_vjp_reference(expected, cotangent), rtol=0, atol=1e-12)
    expected_top = topk_sparsemax_bruteforce(data, 3)
    np.testing.assert_allclose(top, expected_top, rtol=0, atol=1e-12)
    np.testing.assert_allclose(top_grad, sparsemax_vjp_reference(expected_top, cotangent), rtol=0, atol=1e-12)


@pytest.mark.parametrize("switch", ["context", "environment"])
@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_switch_forces_the_reference_path(library, switch, calls, monkeypatch):
    require_backend(library)
    data = np.random.default_rng(1).standard_normal((3, 9))
    if switch == "environment":
        monkeypatch.setenv("SPARSECORE_KERNELS", "reference")
        outputs = run_core(library, data, data, k=2)
    else:
        with sparsecore.use_kernels(False):
            outputs = run_core(library, data, data, k=2)
    assert calls == dict.fromkeys(ENTRY_POINTS, 0)
    np.testing.assert_allclose(outputs[0], sparsemax_bisect(data), rtol=0, atol=1e-12)


@pytest.mark.parametrize("library", ["array_api_strict", "jax"])
def test_other_namespaces_take_the_reference_path(library, calls):
    require_backend(library)
    data = np.random.default_rng(2).standard_normal((3, 9))
    probs = run_core(library, data, data, k=2)[0]
    assert calls == dict.fromkeys(ENTRY_POINTS, 0)
    np.testing.assert_allclose(probs, sparsemax_bisect(data), rtol=0, atol=1e-12)


def test_the_adapter_takes_the_kernels_in_eager_and_torch_func_calls(torch, calls):
    import sparsecore_torch
    from torch.func import grad, vmap

    rng = np.random.default_rng(3)
    data = rng.standard_normal((4, 12))
    w = torch.from_numpy(rng.standard_normal((4, 12)))
    scores = torch.tensor(data, requires_grad=True)
    (sparsecore_torch.sparsemax(scores) * w).sum().backward()
    assert calls["sparsemax_rows"] == 1
    assert calls["sparsemax_vjp_rows"] == 1
    expected = sparsemax_bisect(data)
    assert_close(scores.grad, sparsemax_vjp_reference(expected, w.numpy()))
    # torch.func unwraps the scores before an autograd.Function's forward (its
    # backward may see wrapped cotangents, which take the reference path).
    functional = grad(lambda s: (sparsecore_torch.topk_sparsemax(s, 2) * w).sum())(scores.detach())
    assert calls["topk_sparsemax_rows"] == 1
    assert_close(functional, sparsemax_vjp_reference(topk_sparsemax_bruteforce(data, 2), w.numpy()))
    batched = vmap(sparsecore_torch.sparsemax)(scores.detach())
    assert calls["sparsemax_rows"] == 2
    assert_close(batched, expected)


def test_wrapped_and_subclassed_tensors_take_the_reference_path(torch, calls):
    """The core called on a functorch-wrapped tensor (inside ``torch.func.grad``)
    or on a tensor subclass does not take the kernel, and still computes right."""
    from torch.func import grad

    rng = np.random.default_rng(4)
    data = rng.standard_normal((3, 8))
    w = rng.standard_normal((3, 8))
    gradient = grad(lambda s: (sparsecore.sparsemax(s) * torch.from_numpy(w)).sum())(torch.from_numpy(data))
    assert calls["sparsemax_rows"] == 0
    assert_close(gradient, sparsemax_vjp_reference(sparsemax_bisect(data), w))

    class Tagged(torch.Tensor):
        pass

    tagged = torch.from_numpy(data).as_subclass(Tagged)
    probs = sparsecore.sparsemax(tagged)
    assert calls["sparsemax_rows"] == 0
    assert_close(probs.as_subclass(torch.Tensor), sparsemax_bisect(data))


def test_tensors_that_autograd_records_take_the_reference_path(torch, calls):
    """The core on a tensor that requires grad (outside the adapter), and a
    double backward through the adapter, stay differentiable."""
    import sparsecore_torch

    rng = np.random.default_rng(8)
    data = rng.standard_normal((3, 7))
    w = torch.from_numpy(rng.standard_normal((3, 7)))
    scores = torch.tensor(data, requires_grad=True)
    (sparsecore.sparsemax(scores) * w).sum().backward()
    assert calls["sparsemax_rows"] == 0
    expected = sparsemax_bisect(data)
    assert_close(scores.grad, sparsemax_vjp_reference(expected, w.numpy()))
    # Double backward: the gradient of <grad, v> w.r.t. the cotangent is the VJP of v.
    probs = sparsecore_torch.sparsemax(scores)
    assert calls["sparsemax_rows"] == 1
    cotangent = w.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(probs, scores, cotangent, create_graph=True)
    v = torch.from_numpy(rng.standard_normal((3, 7)))
    (second,) = torch.autograd.grad((gradient * v).sum(), cotangent)
    assert calls["sparsemax_vjp_rows"] == 0
    assert_close(gradient, sparsemax_vjp_reference(expected, w.numpy()))
    assert_close(second, sparsemax_vjp_reference(expected, v.numpy()))


def test_views_are_zero_copy(torch, monkeypatch):
    """Contiguous float32/float64 rows reach the kernel as views of the input
    tensor, and the kernel writes into the returned tensor's memory."""
    seen = {}
    original = kernels.sparsemax_rows

    def record(scores, out, threads):
        seen["scores"], seen["out"] = scores.ctypes.data, out.ctypes.data
        return original(scores, out, threads)

    monkeypatch.setattr(kernels, "sparsemax_rows", record)
    for dtype in (torch.float32, torch.float64):
        scores = torch.randn(6, 10, dtype=dtype, requires_grad=True)
        with torch.no_grad():  # as in the adapter's forward
            probs = sparsecore.sparsemax(scores)
        assert seen["scores"] == scores.data_ptr()
        assert seen["out"] == probs.data_ptr()
        # Along dim 0 of a transposed (contiguous after the move) tensor: still no copy.
        transposed = scores.detach().t()
        seen.clear()
        probs = sparsecore.sparsemax(transposed, axis=0)
        assert seen["scores"] == scores.data_ptr()
        assert probs.shape == transposed.shape
    array = np.random.default_rng(5).standard_normal((4, 7))
    array.flags.writeable = False
    probs = sparsecore.sparsemax(array)
    assert seen["scores"] == array.ctypes.data
    assert seen["out"] == probs.ctypes.data


def test_threads_do_not_change_the_result():
    """The parallel kernel (prange over rows) equals the serial one bit for bit."""
    rng = np.random.default_rng(6)
    for dtype in (np.float32, np.float64):
        scores = (rng.standard_normal((64, 2048)) * rng.uniform(0.05, 5.0, (64, 1))).astype(dtype)
        scores[3, ::3] = -np.inf
        cotangent = rng.standard_normal(scores.shape).astype(dtype)
        assert kernels._threaded(*scores.shape, threads=2)
        results = []
        for threads in (1, 2):
            probs, grad, top = (np.empty_like(scores) for _ in range(3))
            kernels.sparsemax_rows(scores, probs, threads)
            kernels.sparsemax_vjp_rows(probs, cotangent, grad, threads)
            kernels.topk_sparsemax_rows(scores, 16, top, threads)
            results.append((probs, grad, top))
        for serial, parallel in zip(*results, strict=True):
            np.testing.assert_array_equal(serial, parallel)


def test_inputs_are_never_written(torch):
    rng = np.random.default_rng(7)
    data = rng.standard_normal((3, 50)) * 0.1
    s, g = torch.from_numpy(data.copy()), torch.from_numpy(data.copy())
    probs = sparsecore.topk_sparsemax(s, 5)
    sparsecore.sparsemax_vjp(probs, g)
    sparsecore.sparsemax(s)
    np.testing.assert_array_equal(s.numpy(), data)
    np.testing.assert_array_equal(g.numpy(), data)


def test_numba_is_imported_lazily_and_optional():
    """``import sparsecore`` imports neither numba nor torch; without numba
    every call takes the reference path."""
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import sparsecore
        assert sys.modules.get("numba") is None and "torch" not in sys.modules
        s = np.array([[0.0, 0.5, 1.0], [2.0, -np.inf, 2.0]])
        probs = sparsecore.sparsemax(s)
        print(sorted(name for name in ("numba", "torch", "jax") if sys.modules.get(name) is not None))
        assert np.allclose(probs, [[0.0, 0.25, 0.75], [0.5, 0.0, 0.5]]), probs
        assert np.allclose(sparsecore.topk_sparsemax(s, 1), [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
        """
    )
    blocked = "import sys; sys.modules['numba'] = None\n"
    runs = {
        name: subprocess.run(
            [sys.executable, "-c", prefix + code], check=False, capture_output=True, text=True, timeout=300
        )
        for name, prefix in (("with", ""), ("without", blocked))
    }
    for result in runs.values():
        assert result.returncode == 0, result.stderr
    assert runs["with"].stdout.strip() == "['numba']"
    assert runs["without"].stdout.strip() == "[]"


# Scores with ties (a coarse grid), masked entries and a wide range of scales.
grid = st.integers(-40, 40).map(lambda value: value / 8.0)
entries = st.one_of(grid, grid, st.floats(-30.0, 30.0), st.just(-np.inf))
score_rows = st.tuples(st.integers(1, 5), st.integers(1, 70)).flatmap(
    lambda shape: st.tuples(
        arrays(np.float64, shape, elements=entries),
        arrays(np.float64, shape, elements=st.floats(-2.0, 2.0)),
        st.integers(1, shape[1]),
        st.sampled_from([0.01, 0.3, 1.0, 50.0]),
    )
)
KERNEL_SETTINGS = settings(max_examples=60, deadline=None, database=None)


def both_paths(library: str, dtype: str, scores: np.ndarray, cotangent: np.ndarray, k: int):
    """Forward and VJP results of the kernels and of the reference, as NumPy float64."""
    results = []
    for enabled in (True, False):
        with sparsecore.use_kernels(enabled):
            s, g = asarray(library, scores, dtype), asarray(library, cotangent, dtype)
            probs = sparsecore.sparsemax(s)
            top = sparsecore.topk_sparsemax(s, k)
            results.append(
                [
                    to_numpy(x).astype(np.float64)
                    for x in (
                        probs,
                        sparsecore.sparsemax_vjp(probs, g),
                        top,
                        sparsecore.topk_sparsemax_vjp(top, g),
                    )
                ]
            )
    return results


@pytest.mark.parametrize(
    ("library", "dtype"),
    [("numpy", "float64"), ("numpy", "float32"), ("torch", "float64"), ("torch", "float32")],
)
@KERNEL_SETTINGS
@given(case=score_rows)
def test_kernels_match_the_reference_path(library, dtype, case):
    require_backend(library)
    data, cotangent, k, scale = case
    scores = data * scale
    fused, reference = both_paths(library, dtype, scores, cotangent, k)
    names = ("sparsemax", "sparsemax_vjp", "topk_sparsemax", "topk_sparsemax_vjp")
    for name, got, want in zip(names, fused, reference, strict=True):
        if dtype == "float64":
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=name)
        else:
            np.testing.assert_allclose(got, want, rtol=1.3e-6, atol=1e-5, err_msg=name)
    # The top-k tie rule and support size hold on the kernel path.
    assert np.all(np.count_nonzero(fused[2], axis=-1) <= k)
    exact_input = scores.astype(dtype).astype(np.float64)
    np.testing.assert_allclose(fused[2], topk_sparsemax_bruteforce(exact_input, k), rtol=0, atol=1e-5)


def test_special_rows_on_the_kernel_path():
    """NaN, +inf (ties among them, and more of them than k), all -inf, 1e30."""
    data = np.array(
        [
            [0.0, np.nan, 1.0, 2.0],
            [np.inf, 1.0, np.inf, np.inf],
            [-np.inf, -np.inf, -np.inf, -np.inf],
            [1e30, -1e30, 1e30 - 1e15, 0.0],
            [1.0, -np.inf, 1.0, np.inf],
        ]
    )
    probs = sparsecore.sparsemax(data)
    third = 1.0 / 3.0
    expected = [
        [np.nan] * 4,
        [third, 0.0, third, third],
        [0.0] * 4,
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-15)
    top = sparsecore.topk_sparsemax(data, 2)
    expected[1] = [0.5, 0.0, 0.5, 0.0]
    np.testing.assert_allclose(top, expected, rtol=0, atol=1e-15)
    grad = sparsecore.sparsemax_vjp(probs, np.ones_like(data))
    assert np.all(np.isnan(grad[0]))
    np.testing.assert_array_equal(grad[1:], 0.0)
    assert not np.any(np.signbit(grad[1:]))
    with pytest.raises(ValueError, match="NaN"):
        sparsecore.sparsemax(data, nan_policy="raise")
    with pytest.raises(ValueError, match="NaN"):
        sparsecore.topk_sparsemax(data, 2, nan_policy="raise")


def test_dispatch_finds_the_numba_kernels():
    """The dispatcher loads the kernels (a guard against a broken numba install,
    which would otherwise make every call fall back silently)."""
    from sparsecore._kernels import _cpu

    assert _cpu._kernels() is kernels
    assert kernels.numba is numba
