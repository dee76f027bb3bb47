"""README.md's Python examples run as shown, the values in their comments hold, and its links resolve."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.DOTALL)


def run_block(source: str, name: str) -> dict[str, object]:
    for module in re.findall(r"^import (\w+)", source, flags=re.MULTILINE):
        pytest.importorskip(module)
    namespace: dict[str, object] = {}
    exec(compile(source, name, "exec"), namespace)
    return namespace


def block_using(module: str) -> str:
    """The one example that imports ``module`` (one per adapter)."""
    matches = [block for block in BLOCKS if re.search(rf"^import {module}$", block, flags=re.MULTILINE)]
    assert len(matches) == 1, f"README.md should have one example importing {module}, found {len(matches)}"
    return matches[0]


def test_readme_has_one_example_per_adapter() -> None:
    core = [block for block in BLOCKS if "from sparsecore import" in block and "import torch" not in block]
    assert len(core) == 1
    block_using("sparsecore_torch")
    block_using("sparsecore_jax")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    run_block(BLOCKS[index], f"README.md block {index}")


def test_readme_numbers_in_comments_hold() -> None:
    import numpy as np

    core = next(
        block for block in BLOCKS if "from sparsecore import" in block and "import torch" not in block
    )
    namespace = run_block(core, "README.md NumPy example")
    np.testing.assert_allclose(namespace["probs"], [[0.6, 0.4, 0, 0], [0, 0, 0, 1]], atol=1e-12)
    from sparsecore import topk_is_exact

    assert topk_is_exact(namespace["top"], k=2).tolist() == [False, True]
    # Budget(4, 2): the projection of t onto {mu in [0, 1]^4, sum(mu) <= 2} is clip(t - 0.2, 0, 1).
    np.testing.assert_allclose(namespace["marginals"], [[0.7, 0.0, 0.3, 1.0]], atol=1e-9)
    assert (namespace["atoms"].sum(-1) <= 2).all()


def test_readme_torch_numbers_in_comments_hold() -> None:
    torch = pytest.importorskip("torch")
    namespace = run_block(block_using("sparsecore_torch"), "README.md PyTorch example")
    torch.testing.assert_close(namespace["probs"].detach(), torch.tensor([[0.75, 0.25, 0.0, 0.0]]))
    torch.testing.assert_close(namespace["logits"].grad, torch.tensor([[-0.5, 0.5, 0.0, 0.0]]))
    result = namespace["result"]
    # BitVector's SparseMAP support: one structure per fractional marginal, plus one.
    assert int(result.calls) == 5
    assert result.support.tolist() == [3, 2]
    assert namespace["t"].grad is not None and namespace["decoder"].weight.grad is not None


def test_readme_jax_numbers_in_comments_hold() -> None:
    pytest.importorskip("jax")
    import numpy as np

    namespace = run_block(block_using("sparsecore_jax"), "README.md JAX example")
    np.testing.assert_allclose(namespace["gradient"], [-0.5, 0.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(namespace["tangent"], [-0.5, 0.5, 0.0, 0.0], atol=1e-6)


def test_readme_is_short() -> None:
    # The rest belongs on the documentation site (docs/, mkdocs.yml).
    assert len(TEXT.splitlines()) <= 200


def slug(heading: str) -> str:
    """The anchor of a Markdown heading, as MkDocs' toc extension and GitHub write it (for plain headings)."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", text).strip("-")


@pytest.mark.parametrize(
    "target", sorted(set(re.findall(r"\]\(([^)#\s][^)\s]*)\)", TEXT)) - {""}), ids=lambda target: target
)
def test_readme_links_resolve(target: str) -> None:
    if re.match(r"[a-z]+://", target):
        pytest.skip("external link")
    path, _, anchor = target.partition("#")
    assert (ROOT / path).exists(), f"README.md links to {path}, which does not exist"
    if anchor:
        headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(encoding="utf-8"), flags=re.MULTILINE)
        assert anchor in {slug(heading) for heading in headings}, f"{path} has no heading #{anchor}"


def test_ci_runs_the_test_command_readme_gives() -> None:
    assert "The test command is `make test`" in TEXT
    commands = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "make test" in commands
    assert "make docs" in commands
