"""README.md's Python examples run as shown, and its claims hold."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    source = BLOCKS[index]
    for module in re.findall(r"^import (\w+)", source, flags=re.MULTILINE):
        pytest.importorskip(module)
    namespace: dict[str, object] = {}
    exec(compile(source, f"README.md block {index}", "exec"), namespace)


def test_readme_numbers_in_comments_hold() -> None:
    import numpy as np

    from sparsecore import sparsemax, topk_is_exact, topk_sparsemax

    scores = np.array([[1.0, 0.8, 0.1, -1.0], [0.0, -np.inf, 0.0, 2.0]])
    np.testing.assert_allclose(sparsemax(scores), [[0.6, 0.4, 0, 0], [0, 0, 0, 1]], atol=1e-12)
    assert topk_is_exact(topk_sparsemax(scores, k=2), k=2).tolist() == [False, True]
