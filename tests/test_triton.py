"""The Triton kernels of ``sparsecore_torch`` against the reference path and
independent references.

Without CUDA they run in Triton's interpreter on CPU tensors (see
``triton_support.py``); with ``SPARSECORE_TEST_TRITON=cuda`` on CUDA tensors.
Shapes stay small (the interpreter runs each program in Python); the tiled
kernels for long rows run on short rows by making the on-chip limit and the
tile small.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from backends import to_numpy
from reference import sparsemax_bisect, sparsemax_jacobian, sparsemax_vjp_reference, topk_sparsemax_bruteforce
from triton_support import reference_path, require_triton, triton_context

import sparsecore

pytestmark = pytest.mark.triton

ROWS_SIZES = [1, 2, 7, 33, 100]


@pytest.fixture
def device():
    """The device the kernels run on, with every fallback to the reference an error."""
    with triton_context() as name:
        yield name


@pytest.fixture
def kernels(device):
    """The kernel module, its launchers counting their calls in ``calls``."""
    from sparsecore_torch import _gpu

    module = _gpu.triton_kernels()
    calls: dict[str, int] = {}
    originals = {}
    for name in ("sparsemax_forward_rows", "topk_sparsemax_forward_rows", "sparsemax_backward_rows"):
        originals[name] = getattr(module, name)

        def counted(*args, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            return originals[_name](*args, **kwargs)

        setattr(module, name, counted)
    module.calls = calls
    try:
        yield module
    finally:
        for name, original in originals.items():
            setattr(module, name, original)
        del module.calls


@pytest.fixture(params=["onchip", "tiled"])
def layout(request, kernels, monkeypatch):
    """Rows in registers, or (limit 16, tiles of 8) rows over tiles."""
    if request.param == "tiled":
        monkeypatch.setattr(kernels, "ONCHIP_MAX", 16)
        monkeypatch.setattr(kernels, "TILE", 8)
    return request.param


def scores_for(size: int, rows: int, seed: int, dtype, device):
    """Scores with ties (rounded to quarters), masked entries and a spread
    that gives supports of several entries."""
    import torch

    rng = np.random.default_rng(seed)
    data = np.round(rng.normal(scale=1.5, size=(rows, size)) * 4) / 4
    data[rng.random((rows, size)) < 0.1] = -np.inf
    data[:, 0] = np.maximum(data[:, 0], 0.0)  # at least one finite entry per row
    return torch.tensor(data, dtype=dtype, device=device)


def grad_of(function, scores, cotangent):
    import torch

    leaf = scores.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(function(leaf), leaf, grad_outputs=cotangent)
    return grad


@pytest.mark.parametrize("size", ROWS_SIZES)
def test_float64_matches_independent_references(kernels, layout, device, size):
    import sparsecore_torch
    import torch

    scores = scores_for(size, 4, size, torch.float64, device)
    data = to_numpy(scores)
    cotangent = torch.linspace(-1.0, 2.0, 4 * size, dtype=torch.float64, device=device).reshape(4, size)
    probs = sparsecore_torch.sparsemax(scores)
    np.testing.assert_allclose(to_numpy(probs), sparsemax_bisect(data), rtol=0, atol=1e-12)
    grad = grad_of(sparsecore_torch.sparsemax, scores, cotangent)
    expected_grad = sparsemax_vjp_reference(to_numpy(probs), to_numpy(cotangent))
    np.testing.assert_allclose(to_numpy(grad), expected_grad, rtol=0, atol=1e-12)
    for k in sorted({1, min(2, size), max(1, size // 2), size}):
        top = sparsecore_torch.topk_sparsemax(scores, k)
        np.testing.assert_allclose(to_numpy(top), topk_sparsemax_bruteforce(data, k), rtol=0, atol=1e-12)
    assert kernels.calls["sparsemax_forward_rows"] >= 1
    assert kernels.calls["sparsemax_backward_rows"] >= 1
    assert kernels.calls["topk_sparsemax_forward_rows"] >= 1


@pytest.mark.parametrize(
    ("dtype_name", "tolerance"),
    [("float32", {}), ("float16", {"rtol": 1e-3, "atol": 1e-3}), ("bfloat16", {"rtol": 1e-2, "atol": 1e-2})],
)
@pytest.mark.parametrize("size", [3, 33])
def test_low_precision_matches_reference_path(kernels, layout, device, dtype_name, tolerance, size):
    import sparsecore_torch
    import torch

    dtype = getattr(torch, dtype_name)
    scores = scores_for(size, 6, 10 + size, dtype, device)
    cotangent = torch.randn(6, size, generator=torch.Generator().manual_seed(size)).to(device, dtype)
    probs = sparsecore_torch.sparsemax(scores)
    expected = reference_path(sparsecore_torch.sparsemax, scores)
    assert probs.dtype == dtype and probs.device == scores.device
    torch.testing.assert_close(probs, expected, **tolerance)
    torch.testing.assert_close(
        grad_of(sparsecore_torch.sparsemax, scores, cotangent),
        reference_path(grad_of, sparsecore_torch.sparsemax, scores, cotangent),
        **tolerance,
    )
    for k in sorted({1, 2, size}):
        torch.testing.assert_close(
            sparsecore_torch.topk_sparsemax(scores, k),
            reference_path(sparsecore_torch.topk_sparsemax, scores, k),
            **tolerance,
        )
    assert kernels.calls["sparsemax_forward_rows"] == 2  # the call above and the one in grad_of


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_topk_ties_at_the_kth_value_keep_the_lower_index(kernels, layout, device, dtype_name):
    """Rows where many entries tie at the k-th largest value, zeros of both
    signs among them, and keys that share their high bytes (the radix select
    of the tiled kernel descends through every byte)."""
    import sparsecore_torch
    import torch

    dtype = getattr(torch, dtype_name)
    tiny = np.finfo(dtype_name).smallest_subnormal
    data = np.array(
        [
            [
                0.5,
                0.25,
                0.5,
                0.25,
                0.5,
                0.25,
                0.5,
                0.25,
                0.0,
                0.5,
                0.25,
                0.5,
                0.25,
                0.5,
                0.25,
                0.5,
                0.25,
                0.5,
            ],
            [
                0.0,
                -0.0,
                0.0,
                -0.0,
                -0.0,
                0.0,
                0.0,
                -0.0,
                -1.0,
                0.0,
                -0.0,
                0.0,
                -0.0,
                0.0,
                0.0,
                -0.0,
                0.0,
                -0.0,
            ],
            [1.0, np.nextafter(1.0, 2.0), 1.0, np.nextafter(1.0, 0.0)] * 4 + [tiny, -tiny],
            [-1.0, -2.0, -1.0, -2.0, -np.inf, -1.0, -2.0, -1.0] * 2 + [-np.inf, -2.0],
        ]
    )
    scores = torch.tensor(data, dtype=dtype, device=device)
    for k in (1, 2, 3, 5, 8, 9, 17, 18):
        probs = sparsecore_torch.topk_sparsemax(scores, k)
        expected = reference_path(sparsecore_torch.topk_sparsemax, scores, k)
        torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(to_numpy(probs), topk_sparsemax_bruteforce(to_numpy(scores), k), atol=1e-6)
    assert kernels.calls["topk_sparsemax_forward_rows"] == 8


def test_topk_tiled_kernel_at_full_size(kernels, device):
    """The tiled top-k kernel with the real limit and tile: rows longer than
    ``ONCHIP_MAX``, not a multiple of ``TILE``, with ties at the k-th value."""
    import sparsecore_torch
    import torch

    size = kernels.ONCHIP_MAX + kernels.TILE + 5
    rng = np.random.default_rng(12)
    data = np.round(rng.normal(scale=5e-4, size=(2, size)) * 4096) / 4096  # many ties near the top
    data[1, rng.random(size) < 0.5] = -np.inf
    scores = torch.tensor(data, dtype=torch.float32, device=device)
    for k in (16, 300):
        probs = sparsecore_torch.topk_sparsemax(scores, k)
        torch.testing.assert_close(probs, reference_path(sparsecore_torch.topk_sparsemax, scores, k))
        assert np.all(np.count_nonzero(to_numpy(probs), axis=-1) == k)  # the top k bind
    assert kernels.calls["topk_sparsemax_forward_rows"] == 2


def test_any_dim_and_non_contiguous_input_is_not_mutated(kernels, layout, device):
    import sparsecore_torch
    import torch

    base = scores_for(20, 12, 3, torch.float32, device).reshape(3, 4, 20)
    scores = base.transpose(1, 2)[:, ::2]  # (3, 10, 4), strided, dim 1 of size 10
    assert not scores.is_contiguous()
    before = scores.clone()
    for dim in (0, 1, 2, -1):
        probs = sparsecore_torch.sparsemax(scores, dim=dim)
        torch.testing.assert_close(probs, reference_path(sparsecore_torch.sparsemax, scores, dim=dim))
        top = sparsecore_torch.topk_sparsemax(scores, 2, dim=dim)
        torch.testing.assert_close(top, reference_path(sparsecore_torch.topk_sparsemax, scores, 2, dim=dim))
        cotangent = torch.ones_like(scores).cumsum(dim)
        torch.testing.assert_close(
            grad_of(lambda x, d=dim: sparsecore_torch.sparsemax(x, dim=d), scores, cotangent),
            reference_path(grad_of, lambda x, d=dim: sparsecore_torch.sparsemax(x, dim=d), scores, cotangent),
        )
    torch.testing.assert_close(scores, before, rtol=0, atol=0)


def test_expanded_cotangent(kernels, device):
    """``loss = probs.sum()`` backpropagates an expanded (stride 0) gradient."""
    import sparsecore_torch
    import torch

    scores = scores_for(9, 5, 4, torch.float32, device).requires_grad_(True)
    (sparsecore_torch.sparsemax(scores) * 3.0).sum().backward()
    torch.testing.assert_close(scores.grad, torch.zeros_like(scores), rtol=0, atol=1e-6)
    assert kernels.calls["sparsemax_backward_rows"] == 1


def test_switch_forces_the_reference_path(device, kernels, monkeypatch):
    import sparsecore_torch
    import torch
    from sparsecore_torch import _gpu

    scores = scores_for(9, 3, 5, torch.float32, device)
    # The fallbacks raise in this context: the switch must reach them.
    with sparsecore.use_kernels(False), pytest.raises(AssertionError, match="fell back"):
        sparsecore_torch.sparsemax(scores)
    monkeypatch.setenv("SPARSECORE_KERNELS", "reference")
    with pytest.raises(AssertionError, match="fell back"):
        sparsecore_torch.topk_sparsemax(scores, 2)
    assert kernels.calls == {}
    monkeypatch.delenv("SPARSECORE_KERNELS")
    sparsecore_torch.sparsemax(scores)
    assert kernels.calls == {"sparsemax_forward_rows": 1}
    # CPU tensors outside the interpreter context never take the kernels.
    with _gpu.interpret_on_cpu():
        pass
    assert _gpu._kernels_for(scores.cpu()) is None or device == "cpu"


def test_cpu_tensors_take_the_reference_outside_the_test_context():
    import sparsecore_torch
    import torch
    from sparsecore_torch import _gpu

    require_triton()
    scores = torch.tensor([[0.0, 0.5, 1.0]])
    assert _gpu._kernels_for(scores) is None
    np.testing.assert_array_equal(to_numpy(sparsecore_torch.sparsemax(scores)), [[0.0, 0.25, 0.75]])


def test_double_backward_takes_the_differentiable_reference():
    """``create_graph=True`` needs the backward's own graph: the kernel, which
    has none, must not run there (second derivatives would be silently 0)."""
    import sparsecore_torch
    import torch

    data = np.array([[0.1, 0.4, 0.3, -0.2]])
    g_data = np.array([[1.0, -2.0, 0.5, 3.0]])
    with triton_context(strict=False) as device:
        scores = torch.tensor(data, device=device, requires_grad=True)
        cotangent = torch.tensor(g_data, device=device, requires_grad=True)
        probs = sparsecore_torch.sparsemax(scores)
        (grad,) = torch.autograd.grad(probs, scores, cotangent, create_graph=True)
        (second,) = torch.autograd.grad(grad.square().sum(), cotangent)
    # d/dg ||J g||^2 = 2 J^T J g, with J the sparsemax Jacobian.
    jacobian = sparsemax_jacobian(sparsemax_bisect(data[0]))
    expected = 2.0 * jacobian.T @ jacobian @ g_data[0]
    np.testing.assert_allclose(to_numpy(second)[0], expected, atol=1e-12)
    assert np.abs(expected).max() > 0.1


def test_kernels_compile_for_a_gpu_target():
    """Every kernel compiles (Triton to PTX to cubin, for sm_90) in a process
    without the interpreter: the interpreter accepts code that the compiler
    may reject (loop-carried types, scalar shapes)."""
    require_triton()
    script = textwrap.dedent(
        """
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from sparsecore_torch import _triton as kernels

        assert not kernels.INTERPRETED
        pointer = {"float32": "*fp32", "float64": "*fp64", "float16": "*fp16", "bfloat16": "*bf16"}
        import triton.language as tl
        for storage in pointer:
            compute = tl.float64 if storage == "float64" else tl.float32
            p = pointer[storage]
            cases = [
                (kernels._sparsemax_onchip_kernel, ["scores_ptr", "probs_ptr"], {"BLOCK": 1024}),
                (kernels._sparsemax_tiled_kernel, ["scores_ptr", "probs_ptr"], {"TILE_SIZE": 4096}),
                (kernels._topk_sparsemax_onchip_kernel, ["scores_ptr", "probs_ptr"], {"BLOCK": 256}),
                (kernels._topk_sparsemax_tiled_kernel, ["scores_ptr", "probs_ptr"], {"TILE_SIZE": 4096}),
                (kernels._sparsemax_backward_onchip_kernel, ["probs_ptr", "cotangent_ptr", "grad_ptr"], {"BLOCK": 512}),
                (kernels._sparsemax_backward_tiled_kernel, ["probs_ptr", "cotangent_ptr", "grad_ptr"], {"TILE_SIZE": 4096}),
            ]
            for function, pointers, constants in cases:
                signature = {name: p for name in pointers}
                signature["size"] = "i32"
                if "k" in function.arg_names:
                    signature["k"] = "i32"
                constants = {**constants, "COMPUTE": compute}
                for name in constants:
                    signature[name] = "constexpr"
                source = ASTSource(fn=function, signature=signature, constexprs=constants)
                compiled = triton.compile(
                    source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "enable_fp_fusion": False}
                )
                assert compiled.asm["cubin"], function.__name__
        print("compiled")
        """
    )
    environment = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "0"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "compiled" in result.stdout


@pytest.mark.parametrize("case", ["sparsemax", "topk-tiled"])
def test_cuda_graph_capture(kernels, device, case):
    """Forward and backward replay from a CUDA graph: no host read and no
    launch count that depends on the data (CUDA only); top-k on rows longer
    than ``ONCHIP_MAX`` (the tiled kernels)."""
    import sparsecore_torch
    import torch

    if device != "cuda":
        pytest.skip("CUDA graphs need CUDA tensors")
    if case == "sparsemax":
        rows, size, function = 64, 300, sparsecore_torch.sparsemax
    else:
        rows, size = 8, kernels.ONCHIP_MAX + 100

        def function(x):
            return sparsecore_torch.topk_sparsemax(x, 16)

    scores = scores_for(size, rows, 9, torch.float32, device)
    cotangent = torch.randn(rows, size, device=device)
    scores.requires_grad_(True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compiles the kernels) off the capture
        function(scores).backward(cotangent)
    torch.cuda.current_stream().wait_stream(stream)
    scores.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        probs = function(scores)
        (grad,) = torch.autograd.grad(probs, scores, cotangent)
    new_scores = scores_for(size, rows, 10, torch.float32, device)
    with torch.no_grad():
        scores.copy_(new_scores)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(probs, reference_path(function, new_scores))
    torch.testing.assert_close(grad, reference_path(grad_of, function, new_scores, cotangent))


def test_torch_func_transforms_match_the_reference():
    """Under ``torch.func`` the wrapped tensors take the reference, the plain
    ones (vmap's inner call) the kernels; both give the reference's values."""
    import sparsecore_torch
    import torch

    with triton_context(strict=False) as device:
        scores = scores_for(12, 5, 11, torch.float64, device)
        cotangent = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64, device=device)

        def loss(x):
            return (sparsecore_torch.sparsemax(x) * cotangent).sum()

        batched = torch.func.vmap(sparsecore_torch.sparsemax)(scores)
        grads = torch.func.vmap(torch.func.grad(loss))(scores)
        jacobian = torch.func.jacrev(sparsecore_torch.sparsemax)(scores[1])
    expected = sparsemax_bisect(to_numpy(scores))
    np.testing.assert_allclose(to_numpy(batched), expected, rtol=0, atol=1e-12)
    expected_grads = sparsemax_vjp_reference(expected, np.broadcast_to(to_numpy(cotangent), expected.shape))
    np.testing.assert_allclose(to_numpy(grads), expected_grads, rtol=0, atol=1e-12)
    np.testing.assert_allclose(to_numpy(jacobian), sparsemax_jacobian(expected[1]), rtol=0, atol=1e-12)


def test_cpu_use_does_not_import_triton():
    """Triton (about a second to import) loads on the first call that could
    take a kernel, never for CPU tensors or at import."""
    require_triton()
    script = textwrap.dedent(
        """
        import sys
        import torch
        import sparsecore_torch

        s = torch.tensor([[0.0, 0.5, 1.0]], requires_grad=True)
        sparsecore_torch.sparsemax(s).sum().backward()
        sparsecore_torch.topk_sparsemax(s, 2)
        assert "triton" not in sys.modules, "triton imported"
        assert "sparsecore_torch._triton" not in sys.modules
        print("clean")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "clean" in result.stdout
