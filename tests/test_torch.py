"""The PyTorch adapter: autograd, torch.func transforms and nn.Modules."""

from __future__ import annotations

import numpy as np
import pytest
from backends import assert_close, require_backend, to_numpy
from reference import (
    along_axis,
    random_separated_scores,
    sparsemax_bisect,
    sparsemax_jacobian,
    sparsemax_vjp_reference,
    topk_sparsemax_bruteforce,
)

require_backend("torch", module_level=True)

import sparsecore_torch  # noqa: E402
import torch  # noqa: E402
from sparsecore_torch import Sparsemax, TopKSparsemax, topk_is_exact, topk_sparsemax  # noqa: E402
from sparsecore_torch import sparsemax as torch_sparsemax  # noqa: E402
from torch.func import grad, jacrev, vmap  # noqa: E402

import sparsecore  # noqa: E402

# Every test runs with the fused kernels allowed and with the reference path forced.
pytestmark = pytest.mark.usefixtures("kernel_path")

INF = float("inf")


def separated(shape: tuple[int, ...], dim: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """Float64 scores, rows along ``dim`` well separated from the threshold and from each other."""
    rng = np.random.default_rng(seed)
    moved = np.moveaxis(np.empty(shape), dim, -1).shape
    return np.moveaxis(random_separated_scores(rng, moved, scale=scale), -1, dim)


def vjp_reference_along(p: np.ndarray, g: np.ndarray, dim: int) -> np.ndarray:
    moved = sparsemax_vjp_reference(np.moveaxis(p, dim, -1), np.moveaxis(g, dim, -1))
    return np.moveaxis(moved, -1, dim)


def topk_along(s: np.ndarray, k: int, dim: int) -> np.ndarray:
    return along_axis(topk_sparsemax_bruteforce, s, dim, k)


def mapping(kind: str, k: int | None, dim: int):
    if kind == "sparsemax":
        return lambda s: torch_sparsemax(s, dim=dim)
    return lambda s: topk_sparsemax(s, k, dim=dim)


def reference(kind: str, k: int | None, s: np.ndarray, dim: int) -> np.ndarray:
    if kind == "sparsemax":
        return along_axis(sparsemax_bisect, s, dim)
    return topk_along(s, k, dim)


MAPPINGS = [("sparsemax", None), ("topk", 1), ("topk", 2), ("topk", 3)]
MAPPING_IDS = ["sparsemax", "topk1", "topk2", "topk3"]
SHAPES_DIMS = [((6,), 0), ((4, 6), 0), ((4, 6), 1), ((4, 6), -1), ((2, 3, 5), 1)]
SHAPE_IDS = ["6-dim0", "4x6-dim0", "4x6-dim1", "4x6-dim-1", "2x3x5-dim1"]


# ---------------------------------------------------------------------------
# Autograd


@pytest.mark.parametrize(("kind", "k"), MAPPINGS, ids=MAPPING_IDS)
@pytest.mark.parametrize(("shape", "dim"), SHAPES_DIMS, ids=SHAPE_IDS)
def test_gradcheck(kind, k, shape, dim):
    data = separated(shape, dim, seed=len(shape) * 10 + dim + 3, scale=0.6)
    scores = torch.tensor(data, requires_grad=True)
    function = mapping(kind, k, dim)
    assert torch.autograd.gradcheck(function, (scores,), eps=1e-6, atol=1e-7)
    # And against the closed form on the reference support.
    w = np.random.default_rng(7).standard_normal(shape)
    probs = function(scores)
    assert_close(probs, reference(kind, k, data, dim))
    (probs * torch.from_numpy(w)).sum().backward()
    assert_close(scores.grad, vjp_reference_along(reference(kind, k, data, dim), w, dim))


@pytest.mark.parametrize(("kind", "k"), MAPPINGS[:3], ids=MAPPING_IDS[:3])
@pytest.mark.parametrize(("shape", "dim"), SHAPES_DIMS, ids=SHAPE_IDS)
def test_func_grad_equals_eager_and_closed_form(kind, k, shape, dim):
    data = separated(shape, dim, seed=11 + dim)
    w = torch.from_numpy(np.random.default_rng(8).standard_normal(shape))
    function = mapping(kind, k, dim)

    def loss(s):
        return (function(s) * w).sum()

    functional = grad(loss)(torch.tensor(data))
    leaf = torch.tensor(data, requires_grad=True)
    loss(leaf).backward()
    expected = vjp_reference_along(reference(kind, k, data, dim), w.numpy(), dim)
    assert_close(functional, expected)
    assert_close(leaf.grad, expected)
    assert functional.dtype == torch.float64


# ---------------------------------------------------------------------------
# vmap


@pytest.mark.parametrize(("kind", "k"), MAPPINGS[:3], ids=MAPPING_IDS[:3])
@pytest.mark.parametrize("in_dims", [0, 1, 2, -1])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_vmap(kind, k, in_dims, dim):
    data = np.random.default_rng(9).standard_normal((3, 4, 5)) * 0.7
    function = mapping(kind, k, dim)
    out = vmap(function, in_dims=in_dims)(torch.tensor(data))
    slices = [np.take(data, b, axis=in_dims) for b in range(data.shape[in_dims])]
    expected = np.stack([reference(kind, k, piece, dim) for piece in slices])
    assert_close(out, expected)
    eager = torch.stack([function(torch.tensor(piece)) for piece in slices])
    assert_close(out, to_numpy(eager))


@pytest.mark.parametrize("dim", [0, -1])
def test_nested_vmap(dim):
    data = np.random.default_rng(10).standard_normal((2, 3, 4, 5)) * 0.7
    out = vmap(vmap(lambda s: torch_sparsemax(s, dim=dim), in_dims=1), in_dims=0)(torch.tensor(data))
    expected = np.stack(
        [np.stack([along_axis(sparsemax_bisect, data[a, :, b], dim) for b in range(4)]) for a in range(2)]
    )
    assert_close(out, expected)
    out = vmap(vmap(lambda s: topk_sparsemax(s, 2, dim=dim)))(torch.tensor(data))
    assert_close(out, along_axis(topk_sparsemax_bruteforce, data, dim if dim < 0 else dim + 2, 2))


@pytest.mark.parametrize(("kind", "k"), MAPPINGS[:3], ids=MAPPING_IDS[:3])
@pytest.mark.parametrize("in_dims", [0, 1])
@pytest.mark.parametrize("dim", [0, -1])
def test_vmap_of_grad(kind, k, in_dims, dim):
    batch = 3
    pieces = [separated((4, 5), dim, seed=20 + b) for b in range(batch)]
    data = np.stack(pieces, axis=in_dims)
    w = np.random.default_rng(12).standard_normal((4, 5))
    function = mapping(kind, k, dim)

    def loss(s):
        return (function(s) * torch.from_numpy(w)).sum()

    out = vmap(grad(loss), in_dims=in_dims)(torch.tensor(data))
    expected = np.stack([vjp_reference_along(reference(kind, k, piece, dim), w, dim) for piece in pieces])
    assert_close(out, expected)


def expected_jacobian(kind: str, k: int | None, data: np.ndarray, dim: int) -> np.ndarray:
    """Full Jacobian d out / d in of a 2-d input, shape (*data.shape, *data.shape)."""
    probs = reference(kind, k, data, dim)
    rows = np.moveaxis(probs, dim, -1)  # (B, K)
    blocks = sparsemax_jacobian(rows)  # (B, K, K)
    batch, size = rows.shape
    jacobian = np.zeros((batch, size, batch, size))
    for b in range(batch):
        jacobian[b, :, b, :] = blocks[b]
    if dim in (0, -2):
        jacobian = jacobian.transpose(1, 0, 3, 2)
    return jacobian


@pytest.mark.parametrize(("kind", "k"), MAPPINGS[:3], ids=MAPPING_IDS[:3])
def test_jacrev_one_row(kind, k):
    data = separated((6,), 0, seed=30, scale=0.6)
    function = mapping(kind, k, -1)
    jacobian = jacrev(function)(torch.tensor(data))
    assert_close(jacobian, sparsemax_jacobian(reference(kind, k, data, -1)))
    eager = torch.autograd.functional.jacobian(function, torch.tensor(data))
    assert_close(jacobian, to_numpy(eager))


@pytest.mark.parametrize(("kind", "k"), MAPPINGS[:3], ids=MAPPING_IDS[:3])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_jacrev_batch(kind, k, dim):
    data = separated((4, 5), dim, seed=31 + dim, scale=0.6)
    function = mapping(kind, k, dim)
    jacobian = jacrev(function)(torch.tensor(data))
    assert_close(jacobian, expected_jacobian(kind, k, data, dim))
    eager = torch.autograd.functional.jacobian(function, torch.tensor(data))
    assert_close(jacobian, to_numpy(eager))


# ---------------------------------------------------------------------------
# Modules


def test_modules_match_references():
    data = np.random.default_rng(40).standard_normal((3, 4, 5)) * 0.5
    scores = torch.tensor(data)
    assert_close(Sparsemax(dim=1)(scores), along_axis(sparsemax_bisect, data, 1))
    assert_close(Sparsemax()(scores), sparsemax_bisect(data))
    assert_close(TopKSparsemax(2, dim=0)(scores), along_axis(topk_sparsemax_bruteforce, data, 0, 2))
    assert_close(TopKSparsemax(k=3)(scores), topk_sparsemax_bruteforce(data, 3))
    for module in (Sparsemax(), TopKSparsemax(2)):
        assert list(module.parameters()) == []
        assert module.state_dict() == {}


def test_module_repr():
    assert repr(Sparsemax(dim=0)) == "Sparsemax(dim=0)"
    assert repr(Sparsemax()) == "Sparsemax(dim=-1)"
    assert repr(TopKSparsemax(2, dim=1)) == "TopKSparsemax(k=2, dim=1)"
    assert repr(torch.nn.Sequential(torch.nn.Linear(3, 3), TopKSparsemax(k=2))) == (
        "Sequential(\n  (0): Linear(in_features=3, out_features=3, bias=True)\n"
        "  (1): TopKSparsemax(k=2, dim=-1)\n)"
    )


def test_module_bad_k():
    for k in (0, -1):
        with pytest.raises(ValueError, match="k"):
            TopKSparsemax(k)
    for k in (2.0, True, "2", None):
        with pytest.raises(TypeError, match="k"):
            TopKSparsemax(k)
    with pytest.raises(ValueError, match="k"):
        TopKSparsemax(5)(torch.zeros(2, 4, dtype=torch.float64))


def test_module_in_a_model_backpropagates_to_parameters():
    """d/d bias of <w, sparsemax(x A^T + b)> is the sparsemax VJP of w."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5, dtype=torch.float64), Sparsemax(dim=-1))
    x = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(3, 5, dtype=torch.float64)
    (model(x) * w).sum().backward()
    hidden = (x @ model[0].weight.T + model[0].bias).detach().numpy()
    expected = vjp_reference_along(sparsemax_bisect(hidden), w.numpy(), -1).sum(axis=0)
    assert_close(model[0].bias.grad, expected)


# ---------------------------------------------------------------------------
# Masking, dtypes, devices, no host copies


def test_masked_entries_get_exactly_zero_gradient():
    logits = torch.tensor([[0.3, 1.2, -0.4, 0.9, 0.8], [0.1, 0.2, 0.3, 0.4, 0.5]], requires_grad=True)
    mask = torch.tensor([[True, False, True, True, False], [True, True, True, True, True]])
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5, 7.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    for function in (torch_sparsemax, lambda s: topk_sparsemax(s, 2)):
        logits.grad = None
        probs = function(logits.masked_fill(mask, -INF))
        (probs * w).sum().backward()
        assert not torch.isnan(logits.grad).any()
        assert torch.all(logits.grad[mask] == 0)
        np.testing.assert_array_equal(logits.grad[1].numpy(), 0.0)  # all masked row
        np.testing.assert_array_equal(probs[1].detach().numpy(), 0.0)
        functional = grad(lambda s, function=function: (function(s.masked_fill(mask, -INF)) * w).sum())(
            logits.detach()
        )
        assert torch.all(functional[mask] == 0)
        torch.testing.assert_close(functional, logits.grad, rtol=0, atol=0)
    expected = vjp_reference_along(
        sparsemax_bisect(np.where(mask.numpy(), -INF, logits.detach().numpy())), w.numpy(), -1
    )
    logits.grad = None
    (torch_sparsemax(logits.masked_fill(mask, -INF)) * w).sum().backward()
    assert_close(logits.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtype_and_device_are_kept(dtype):
    rng = np.random.default_rng(50)
    data = random_separated_scores(rng, (3, 6), scale=1.0, quantum=0.125)
    scores = torch.tensor(data, dtype=dtype, requires_grad=True)
    w = torch.tensor(np.round(rng.standard_normal((3, 6)) * 8) / 8, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    for function, expected in (
        (torch_sparsemax, sparsemax_bisect(data)),
        (lambda s: topk_sparsemax(s, 2), topk_sparsemax_bruteforce(data, 2)),
    ):
        scores.grad = None
        probs = function(scores)
        assert probs.dtype == dtype
        assert probs.device == scores.device
        assert probs.requires_grad
        assert_close(probs, expected, name)
        (probs * w).sum().backward()
        assert scores.grad.dtype == dtype
        assert scores.grad.device == scores.device
        assert_close(scores.grad, sparsemax_vjp_reference(expected, w.double().numpy()), name)
        functional = grad(lambda s, function=function: (function(s) * w).sum())(scores.detach())
        assert functional.dtype == dtype


def test_no_host_copies_in_forward_or_backward(monkeypatch):
    """Forward and backward run on tensors: no .numpy(), __array__, .tolist() or .item().

    On the reference path; the CPU kernels read and write tensors through
    ``Tensor.numpy()`` views, which copy nothing (``test_kernels.py`` checks
    that they share the tensors' memory).
    """

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was copied to the host")

    scores = torch.tensor([[0.2, -INF, 0.9, 0.4], [0.1, 0.5, 0.3, 0.2]], requires_grad=True)
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    expected = vjp_reference_along(sparsemax_bisect(scores.detach().numpy()), w.numpy(), -1)
    expected_topk = vjp_reference_along(topk_sparsemax_bruteforce(scores.detach().numpy(), 2), w.numpy(), -1)
    for attribute in ("numpy", "__array__", "tolist", "item"):
        monkeypatch.setattr(torch.Tensor, attribute, refuse)
    with sparsecore.use_kernels(False):
        (torch_sparsemax(scores) * w).sum().backward()
        sparsemax_grad = scores.grad.clone()
        scores.grad = None
        (topk_sparsemax(scores, 2, dim=1) * w).sum().backward()
        topk_grad = scores.grad.clone()
        functional = grad(lambda s: (torch_sparsemax(s, dim=0) * w).sum())(scores.detach())
    monkeypatch.undo()
    assert_close(sparsemax_grad, expected)
    assert_close(topk_grad, expected_topk)
    assert functional.dtype == torch.float32


def test_non_contiguous_autograd():
    data = np.random.default_rng(60).standard_normal((6, 8)) * 0.7
    w = np.random.default_rng(61).standard_normal((8, 6))
    base = torch.tensor(data, requires_grad=True)
    transposed = base.t()
    assert not transposed.is_contiguous()
    for dim in (0, 1):
        base.grad = None
        probs = torch_sparsemax(transposed, dim=dim)
        expected = along_axis(sparsemax_bisect, data.T, dim)
        assert_close(probs, expected)
        (probs * torch.from_numpy(w)).sum().backward()
        assert_close(base.grad, vjp_reference_along(expected, w, dim).T)


def test_outputs_and_grad_fn():
    scores = torch.tensor([[0.2, 0.5, 0.1]], requires_grad=True)
    probs = torch_sparsemax(scores)
    assert "Sparsemax" in type(probs.grad_fn).__name__
    assert "TopKSparsemaxFunction" in type(topk_sparsemax(scores, 2).grad_fn).__name__
    assert not torch_sparsemax(scores.detach()).requires_grad
    exact = topk_is_exact(probs, 2)
    assert exact.dtype == torch.bool
    assert not exact.requires_grad
    assert exact.tolist() == [False]
    assert sparsecore_torch.topk_is_exact(probs, 3).tolist() == [True]
