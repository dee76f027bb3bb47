"""The PyTorch custom operators: opcheck, torch.compile(fullgraph=True) and torch.export."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from backends import require_backend
from reference import random_separated_scores, sparsemax_bisect

require_backend("torch", module_level=True)

import sparsecore_torch  # noqa: E402
import torch  # noqa: E402
from sparsecore_torch import _ops  # noqa: E402

from sparsecore import BitVector, Budget, Categorical, DependencyTree, Sequence  # noqa: E402


def scores(shape, seed=0, dtype=torch.float64, requires_grad=False):
    data = random_separated_scores(np.random.default_rng(seed), shape, scale=0.7)
    return torch.tensor(data, dtype=dtype, requires_grad=requires_grad)


# ---------------------------------------------------------------------------
# opcheck: schema, fake (meta) implementation, autograd registration, AOT dispatch


def _opcheck_cases():
    probs = sparsecore_torch.sparsemax(scores((4, 6), seed=1))
    t = torch.tensor(np.random.default_rng(2).standard_normal((3, 5)), requires_grad=True)
    map_probs, map_atoms = sparsecore_torch.sparsemap(t.detach(), Budget(5, 2))
    top_probs, top_atoms = sparsecore_torch.topk_sparsemax_structured(t.detach(), BitVector(5), 4)
    return [
        ("sparsemax-last", _ops.sparsemax_op, (scores((4, 6), requires_grad=True), 1, "propagate")),
        ("sparsemax-first", _ops.sparsemax_op, (scores((4, 6), requires_grad=True), 0, "propagate")),
        ("sparsemax-strided", _ops.sparsemax_op, (scores((6, 4)).t().requires_grad_(), 0, "propagate")),
        ("sparsemax-float32", _ops.sparsemax_op, (scores((2, 3, 5), dtype=torch.float32), 1, "propagate")),
        ("topk", _ops.topk_sparsemax_op, (scores((4, 6), requires_grad=True), 2, 1, "propagate")),
        ("sparsemax-vjp", _ops.sparsemax_vjp_op, (probs, torch.randn(4, 6, dtype=torch.float64), 1)),
        ("sparsemap", _ops.sparsemap_op, (t, _ops.structure_key(Budget(5, 2)), None, None, None)),
        ("sparsemap-slots", _ops.sparsemap_op, (t, _ops.structure_key(BitVector(5)), 50, 1e-9, 4)),
        ("sparsemap-vjp", _ops.sparsemap_vjp_op, (map_probs, map_atoms, torch.randn_like(map_probs))),
        ("structured", _ops.topk_sparsemax_structured_op, (t, _ops.structure_key(BitVector(5)), 4)),
        (
            "structured-vjp",
            _ops.topk_sparsemax_structured_vjp_op,
            (top_probs, top_atoms, torch.randn_like(top_probs)),
        ),
    ]


@pytest.mark.parametrize("index", range(11), ids=[case[0] for case in _opcheck_cases()])
def test_opcheck(index):
    _, op, args = _opcheck_cases()[index]
    torch.library.opcheck(op, args)


def test_every_operator_is_opchecked():
    registered = {case[1] for case in _opcheck_cases()}
    defined = {value for value in vars(_ops).values() if isinstance(value, torch.library.CustomOpDef)}
    assert defined == registered


# ---------------------------------------------------------------------------
# torch.compile(fullgraph=True) and torch.export on small models


class Model(torch.nn.Module):
    """A linear layer, then one of the mappings; returns a tensor."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 6, dtype=torch.float64)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.linear(x)
        if self.kind == "sparsemax":
            return sparsecore_torch.Sparsemax(dim=-1)(t)
        if self.kind == "sparsemax-dim0":
            return sparsecore_torch.sparsemax(t, dim=0)
        if self.kind == "topk":
            return sparsecore_torch.TopKSparsemax(k=3)(t)
        if self.kind == "structured":
            probs, atoms = sparsecore_torch.topk_sparsemax_structured(t, BitVector(6), 5)
        else:
            probs, atoms = sparsecore_torch.sparsemap(t, Budget(6, 3))
        return (probs[..., None] * atoms).sum(-2)


KINDS = ["sparsemax", "sparsemax-dim0", "topk", "structured", "sparsemap"]


def _values_and_grads(model, x):
    model.zero_grad()
    out = model(x)
    (out * torch.arange(out.shape[-1], dtype=out.dtype)).sum().backward()
    return out.detach(), model.linear.weight.grad.clone()


@pytest.mark.parametrize("kind", KINDS)
def test_compile_fullgraph_matches_eager(kind):
    torch._dynamo.reset()
    model = Model(kind)
    x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eager_out, eager_grad = _values_and_grads(model, x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, grad = _values_and_grads(compiled, x)
    torch.testing.assert_close(out, eager_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, eager_grad, rtol=0, atol=1e-12)


def test_compile_with_inductor():
    # The default backend, end to end: generated code around the operators.
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), sparsecore_torch.Sparsemax(-1))
    x = torch.randn(32, 8)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
    np.testing.assert_allclose(
        compiled(x).detach().numpy(), sparsemax_bisect(model[0](x).detach().double().numpy()), atol=1e-6
    )


@pytest.mark.parametrize("kind", KINDS)
def test_export_runs_and_matches_eager(kind):
    model = Model(kind)
    x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    program = torch.export.export(model, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any(target.startswith("sparsecore.") for target in targets), targets
    y = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(program.module()(y), model(y), rtol=0, atol=1e-12)


def test_exported_program_saves_and_loads_with_a_builtin_structure(monkeypatch):
    model = Model("sparsemap")
    x = torch.randn(4, 8, dtype=torch.float64)
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model, (x,)), buffer)
    # A process that has never seen the structure rebuilds it from its key.
    monkeypatch.setattr(_ops, "_structures", {})
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    torch.testing.assert_close(loaded.module()(x), model(x), rtol=0, atol=1e-12)


def test_structure_keys():
    assert _ops.structure_key(Budget(6, 3)) == "Budget(size=6, budget=3)"
    assert _ops.structure_of("Budget(size=6, budget=3)") == Budget(6, 3)
    assert _ops.structure_of(_ops.structure_key(Categorical(4))) == Categorical(4)
    for structure in (Sequence(3, 2), DependencyTree(4, projective=True)):
        assert _ops._rebuild(_ops.structure_key(structure)) == structure

    @dataclasses.dataclass(frozen=True, eq=False)
    class Odd:
        dim: int = 3

    first = Odd()
    assert _ops.structure_of(_ops.structure_key(first)) is first
    with pytest.raises(ValueError, match="repr of another, unequal structure"):
        _ops.structure_key(Odd())
    with pytest.raises(ValueError, match="unknown structure 'Missing"):
        _ops.structure_of("Missing(dim=3)")
    with pytest.raises(ValueError, match="unknown structure"):
        _ops.structure_of("__import__('os').system('true')")


def test_eager_calls_take_the_autograd_functions():
    # Outside tracing, the (cheaper) autograd Functions run, not the operators.
    s = scores((3, 4), requires_grad=True)
    assert type(sparsecore_torch.sparsemax(s).grad_fn).__name__ == "SparsemaxEagerBackward"
    assert "TopKSparsemax" in type(sparsecore_torch.topk_sparsemax(s, 2).grad_fn).__name__
