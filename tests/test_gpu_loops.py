"""The solvers' GPU loops (no host read per step), run on CPU arrays.

On CuPy arrays and CUDA tensors, sparsemax runs a fixed number of Newton
steps before one host read, and SparseMAP's eager active set reads its
leaving rows every few steps only.  Forcing the predicate ``on_gpu`` runs
those loops here, on NumPy arrays and CPU tensors, against the default loops
and independent references, and counts the host reads.
"""

from __future__ import annotations

import numpy as np
import pytest
from backends import asarray, require_backend, to_numpy
from reference import long_rows, sparsemax_bisect

import sparsecore
import sparsecore._sparsemap._driver as sparsemap_module
import sparsecore._sparsemax as sparsemax_module

INF, NAN = np.inf, np.nan


@pytest.fixture(autouse=True)
def reference_path():
    """These loops belong to the array-API reference path: the fused CPU
    kernels, which NumPy arrays and CPU tensors take by default, are off."""
    with sparsecore.use_kernels(False):
        yield


@pytest.fixture(params=["numpy", "torch"])
def backend(request):
    require_backend(request.param)
    return request.param


def always_on_gpu(x, *, xp):
    return True


def scores_data(rows: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(scale=2.0, size=(rows, size))
    data[0, :3] = [INF, 1.0, INF]
    data[1, :] = -INF
    data[2, 5] = NAN
    data[3, ::2] = -INF
    return data


@pytest.mark.parametrize("steps", [0, 1, 4])
@pytest.mark.parametrize(("rows", "size"), [(40, 500), (4, 40), (200, 400)])
def test_sparsemax_gpu_loop_matches_default_and_bisection(backend, monkeypatch, steps, rows, size):
    data = scores_data(rows, size, rows + size)
    scores = asarray(backend, data)
    default = to_numpy(sparsecore.sparsemax(scores))
    monkeypatch.setattr(sparsemax_module, "on_gpu", always_on_gpu)
    monkeypatch.setattr(sparsemax_module, "GPU_FIXED_STEPS", steps)
    probs = to_numpy(sparsecore.sparsemax(scores))
    np.testing.assert_allclose(probs, default, rtol=0, atol=1e-12)
    finite = ~np.isnan(data).any(axis=-1)
    np.testing.assert_allclose(probs[finite], sparsemax_bisect(data[finite]), rtol=0, atol=1e-9)
    assert np.all(np.isnan(probs[~finite]))


def test_sparsemax_gpu_loop_reads_the_host_a_fixed_number_of_times(backend, monkeypatch):
    """Rows that need several Newton steps: the default loop reads a flag per
    step, the GPU loop a number of times set by the shape alone."""
    data = long_rows(2000, seed=3)
    scores = asarray(backend, data)
    reads = {"concrete_any": 0, "cond": 0}
    concrete_any = sparsemax_module.concrete_any
    while_loop = sparsemax_module.while_loop

    def counting_any(x, *, xp):
        reads["concrete_any"] += 1
        return concrete_any(x, xp=xp)

    def counting_loop(cond, body, state, *, xp):
        def counted(state):
            reads["cond"] += 1
            return cond(state)

        return while_loop(counted, body, state, xp=xp)

    monkeypatch.setattr(sparsemax_module, "concrete_any", counting_any)
    monkeypatch.setattr(sparsemax_module, "while_loop", counting_loop)
    default = to_numpy(sparsecore.sparsemax(scores))
    assert reads["cond"] >= 2, reads  # the default loop: one read per step
    monkeypatch.setattr(sparsemax_module, "on_gpu", always_on_gpu)
    counts = []
    for scale in (1.0, 0.01, 100.0, 1e-9):  # from one step to several
        reads.update(concrete_any=0, cond=0)
        sparsecore.sparsemax(asarray(backend, data * scale))
        counts.append(dict(reads))
    # One read for the special rows, one per solve (the start's threshold
    # solves the group maxima, recursively): set by the shape, not the data.
    assert counts == [{"concrete_any": 4, "cond": 0}] * 4, counts
    probs = to_numpy(sparsecore.sparsemax(scores))
    np.testing.assert_allclose(probs, default, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probs, sparsemax_bisect(data), rtol=0, atol=1e-9)


def test_on_gpu_is_false_on_cpu_arrays(backend):
    from array_api_compat import array_namespace

    from sparsecore._lib._device import on_gpu

    x = asarray(backend, [0.0, 1.0])
    assert on_gpu(x, xp=array_namespace(x)) is False


@pytest.mark.parametrize(
    "structure", [sparsecore.BitVector(24), sparsecore.Budget(24, 6)], ids=["bitvector", "budget"]
)
def test_sparsemap_gpu_loop_matches_default_and_skips_reads(backend, monkeypatch, structure):
    rng = np.random.default_rng(7)
    t = asarray(backend, rng.normal(size=(64, 24)))
    expected_probs, expected_atoms = sparsecore.sparsemap(t, structure, method="active_set")
    checks: list[bool] = []
    check_step = sparsemap_module._gpu_check_step

    def recording(width, capacity):
        checks.append(check_step(width, capacity))
        return checks[-1]

    monkeypatch.setattr(sparsemap_module, "on_gpu", always_on_gpu)
    monkeypatch.setattr(sparsemap_module, "_gpu_check_step", recording)
    probs, atoms = sparsecore.sparsemap(t, structure, method="active_set")
    # The same distribution (slots may come in another order).
    expected_marginals = np.einsum("nm,nmd->nd", to_numpy(expected_probs), to_numpy(expected_atoms))
    marginals = np.einsum("nm,nmd->nd", to_numpy(probs), to_numpy(atoms))
    np.testing.assert_allclose(marginals, expected_marginals, rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        np.sort(to_numpy(probs), axis=-1), np.sort(to_numpy(expected_probs), axis=-1), rtol=0, atol=1e-9
    )
    assert len(checks) >= 4
    assert sum(checks) < len(checks)  # some steps did not read the host


def test_gpu_loops_on_cuda_tensors():
    """The reference path on CUDA tensors (kernels off) against the CPU (CUDA only)."""
    require_backend("torch")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    scores = torch.tensor(scores_data(64, 700, 5))
    t = torch.tensor(np.random.default_rng(5).normal(size=(64, 24)))
    structure = sparsecore.BitVector(24)
    with sparsecore.use_kernels(False):
        probs = sparsecore.sparsemax(scores.cuda())
        weights, atoms = sparsecore.sparsemap(t.cuda(), structure, method="active_set")
    np.testing.assert_allclose(to_numpy(probs), to_numpy(sparsecore.sparsemax(scores)), rtol=0, atol=1e-12)
    expected_weights, expected_atoms = sparsecore.sparsemap(t, structure, method="active_set")
    marginals = np.einsum("nm,nmd->nd", to_numpy(weights), to_numpy(atoms))
    expected = np.einsum("nm,nmd->nd", to_numpy(expected_weights), to_numpy(expected_atoms))
    np.testing.assert_allclose(marginals, expected, rtol=0, atol=1e-9)


def test_sparsemax_gpu_loop_goes_on_with_the_unfinished_rows_only(backend, monkeypatch):
    """With no fixed steps every row is unfinished after the first pass: a
    large array gathers them (solve_compacted) and still gets the exact result."""
    data = scores_data(200, 400, 8)
    calls = []
    compacted = sparsemax_module.solve_compacted

    def spy(base, offset, tau, probs, mass, active, slack, *, xp):
        calls.append(int(np.sum(to_numpy(active))))
        return compacted(base, offset, tau, probs, mass, active, slack, xp=xp)

    monkeypatch.setattr(sparsemax_module, "on_gpu", always_on_gpu)
    monkeypatch.setattr(sparsemax_module, "GPU_FIXED_STEPS", 0)
    monkeypatch.setattr(sparsemax_module, "solve_compacted", spy)
    probs = to_numpy(sparsecore.sparsemax(asarray(backend, data)))
    assert len(calls) == 1 and 0 < calls[0] < 200, calls
    finite = ~np.isnan(data).any(axis=-1)
    np.testing.assert_allclose(probs[finite], sparsemax_bisect(data[finite]), rtol=0, atol=1e-9)
