"""The example scripts in docs/ run and do what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).parent.parent / "docs"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latent_tree_classifier_learns_with_few_decoder_calls(torch):
    example = load("latent_tree_classifier")
    metrics = example.main(steps=60, batch=16)
    # Chance is 0.5; the head word must be found through the latent tree.
    assert metrics["accuracy"] > 0.9
    # 143 projective trees per sentence; the decoder sees only the support.
    assert metrics["calls_per_sentence"] < 5
