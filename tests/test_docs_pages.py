"""The documentation pages' Python examples run as shown, and the commands they give name real files.

Every ```python block of every page under docs/ runs on its own (an
example imports what it uses); a block whose framework is not installed is
skipped.  The shell commands the pages and README.md quote (``python
benchmarks/structured.py --floor``, ``python -m experiments.compare``) must
name scripts and modules that exist, so a renamed file cannot leave a
table's command behind.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
BLOCKS = [
    (page.relative_to(DOCS).as_posix(), index, source)
    for page in PAGES
    for index, source in enumerate(
        re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    )
]


def run_block(source: str, name: str) -> dict[str, object]:
    for module in re.findall(r"^(?:import|from) (\w+)", source, flags=re.MULTILINE):
        pytest.importorskip(module)
    namespace: dict[str, object] = {}
    exec(compile(source, name, "exec"), namespace)
    return namespace


def test_docs_have_examples() -> None:
    pages = {page for page, _, _ in BLOCKS}
    assert {"usage.md", "structures.md", "marginalization.md"} <= pages


@pytest.mark.parametrize(
    ("page", "index", "source"), BLOCKS, ids=[f"{page}:{index}" for page, index, _ in BLOCKS]
)
def test_docs_example_runs(page: str, index: int, source: str) -> None:
    run_block(source, f"docs/{page} block {index}")


def test_usage_numbers_in_comments_hold() -> None:
    import numpy as np

    (source,) = [source for page, _, source in BLOCKS if page == "usage.md" and "import numpy" in source]
    namespace = run_block(source, "docs/usage.md NumPy example")
    np.testing.assert_allclose(namespace["probs"], [[0.6, 0.4, 0, 0], [0, 0, 0, 1]], atol=1e-12)
    from sparsecore import topk_is_exact

    assert topk_is_exact(namespace["top"], k=2).tolist() == [False, True]
    # The VJP of a one-hot cotangent on the support {0, 1}: (1 - 1/2, 0 - 1/2) there, 0 elsewhere.
    np.testing.assert_allclose(namespace["grad"], [[0.5, -0.5, 0, 0], [0, 0, 0, 0]], atol=1e-12)


def test_structures_numbers_in_comments_hold() -> None:
    import numpy as np

    (source,) = [source for page, _, source in BLOCKS if page == "structures.md" and "Budget(4, 2)" in source]
    namespace = run_block(source, "docs/structures.md bit-vector example")
    np.testing.assert_allclose(namespace["marginals"], [[0.7, 0, 0.3, 1]], atol=1e-9)
    np.testing.assert_allclose(namespace["grad_t"], [[0.5, 0, -0.5, 0]], atol=1e-9)


COMMAND = re.compile(
    r"(?:python3? (?P<script>(?:benchmarks|docs|experiments)/[\w/]+\.py)"
    r"|python3? -m (?P<module>experiments(?:\.\w+)?)"
    r"|bash (?P<shell>[\w/]+\.sh)"
    r"|(?P<test>tests/[\w/]+\.py))"
)
QUOTED = sorted(
    {
        (source.relative_to(ROOT).as_posix(), match.group(0))
        for source in [ROOT / "README.md", *PAGES]
        for match in COMMAND.finditer(source.read_text(encoding="utf-8"))
    }
)


def test_docs_quote_commands() -> None:
    assert len(QUOTED) > 10


@pytest.mark.parametrize(
    ("source", "command"), QUOTED, ids=[f"{source}: {command}" for source, command in QUOTED]
)
def test_quoted_command_names_a_real_file(source: str, command: str) -> None:
    match = COMMAND.fullmatch(command)
    assert match is not None
    if match.group("module"):
        module = match.group("module").replace(".", "/")
        assert (ROOT / f"{module}.py").exists() or (ROOT / module / "__init__.py").exists(), (
            f"{source} quotes {command!r}, but {module} is not a module"
        )
    else:
        path = match.group("script") or match.group("shell") or match.group("test")
        assert (ROOT / path).exists(), f"{source} quotes {command!r}, but {path} does not exist"
