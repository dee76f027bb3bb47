"""Griffe extension for the API reference: the reStructuredText of the numpydoc docstrings, in Markdown.

The docstrings follow numpydoc, whose prose is reStructuredText, and
mkdocstrings renders prose as Markdown.  This extension rewrites the few
constructs they use before rendering: ``.. math::`` blocks and ``:math:``
roles become MathJax (``pymdownx.arithmatex``), cross-reference roles
(``:func:`sparsemax```) and double-backquoted literals become code, and
citations (``.. [1] ...``) become list items.  The docstrings themselves stay
numpydoc for ``help()`` and IDEs.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|meth|data|mod|attr|obj):`~?([^`]+)`")
LITERAL = re.compile(r"``([^`]+)``")
MATH_ROLE = re.compile(r":math:`([^`]+)`")
CITATION = re.compile(r"^(\s*)\.\. \[(\d+)\] ")


def indentation(line: str) -> int:
    return len(line) - len(line.lstrip())


def math_blocks(lines: list[str]) -> list[str]:
    """``.. math::`` and its indented body as a ``\\[ ... \\]`` display."""
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() != ".. math::":
            out.append(line)
            index += 1
            continue
        margin = " " * indentation(line)
        index += 1
        body: list[str] = []
        while index < len(lines) and (not lines[index].strip() or indentation(lines[index]) > len(margin)):
            body.append(lines[index].strip())
            index += 1
        while body and not body[-1]:
            body.pop()
        out.extend([margin + r"\[", *(margin + text for text in body if text), margin + r"\]", ""])
    return out


def to_markdown(text: str) -> str:
    lines = math_blocks(text.splitlines())
    lines = [CITATION.sub(lambda match: f"{match.group(1)}- [{match.group(2)}] ", line) for line in lines]
    text = "\n".join(lines)
    text = MATH_ROLE.sub(lambda match: r"\(" + match.group(1) + r"\)", text)
    text = ROLE.sub(lambda match: f"`{match.group(1)}`", text)
    return LITERAL.sub(lambda match: f"`{match.group(1)}`", text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring's reStructuredText constructs once, when griffe loads the object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
