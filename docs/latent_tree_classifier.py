r"""Sparse marginalization over dependency trees: a latent-tree sentence classifier.

A toy task generated on the fly: a "sentence" is ``N_WORDS`` random tokens,
and its label is the parity of the token of the sentence's *head word*,
which is the word with the largest token.  The model is never told which
word is the head: it scores every arc (root arcs from a per-token score,
word-to-word arcs from a bilinear form of token embeddings), takes the
SparseMAP distribution over projective dependency trees, and its decoder
classifies a sentence *given a tree* from the embedding of the word the
tree attaches to the root.  The loss is the exact expectation of the
decoder's loss over the trees in the support,

.. math::

    \mathbb{E}_{\pi}[\ell(x, y, z)] = \sum_{z:\ \pi(z) > 0} \pi(z)\, \ell(x, y, z),

computed by ``sparsecore_torch.marginalize``, which calls the decoder once,
on the (sentence, tree) pairs with nonzero probability only.  Gradients
reach the arc scorer through the probabilities (SparseMAP's backward pass)
and the decoder through its own parameters.  With 5 words there are 143
projective trees per sentence; the support holds a handful, and shrinks to
one tree as the model becomes confident.

    python docs/latent_tree_classifier.py            # under a minute on one CPU
    python docs/latent_tree_classifier.py --steps 50
"""

from __future__ import annotations

import argparse

import sparsecore_torch
import torch
from torch import nn

from sparsecore import DependencyTree

N_WORDS = 5
VOCABULARY = 8


def make_batch(size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences (size, N_WORDS) of distinct tokens and their labels (size,)."""
    tokens = torch.stack([torch.randperm(VOCABULARY, generator=generator)[:N_WORDS] for _ in range(size)])
    labels = tokens.max(dim=-1).values % 2
    return tokens, labels


class LatentTreeClassifier(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.structure = DependencyTree(N_WORDS, projective=True)
        self.embed = nn.Embedding(VOCABULARY, hidden)
        self.root_score = nn.Embedding(VOCABULARY, 1)
        self.arc = nn.Bilinear(hidden, hidden, 1)
        self.classify = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def arc_scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """Scores (batch, (N_WORDS + 1) * N_WORDS) laid out ``[head, modifier - 1]``."""
        words = self.embed(tokens)  # (batch, n, hidden)
        batch, n, hidden = words.shape
        heads = words[:, :, None, :].expand(batch, n, n, hidden).reshape(-1, hidden)
        modifiers = words[:, None, :, :].expand(batch, n, n, hidden).reshape(-1, hidden)
        between = self.arc(heads, modifiers).reshape(batch, n, n)
        root = self.root_score(tokens)[..., 0][:, None, :]  # (batch, 1, n)
        return torch.cat([root, between], dim=1).reshape(batch, -1)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> sparsecore_torch.Marginal:
        probs, atoms = sparsecore_torch.sparsemap(self.arc_scores(tokens), self.structure)

        def decoder_loss(example: torch.Tensor, tree: torch.Tensor) -> torch.Tensor:
            # The word attached to the root: row 0 of the arc matrix.
            root_word = tree.reshape(-1, N_WORDS + 1, N_WORDS)[:, 0, :]  # (P, n) one-hot
            head = (root_word[:, :, None] * self.embed(tokens[example])).sum(dim=1)
            return nn.functional.cross_entropy(self.classify(head), labels[example], reduction="none")

        return sparsecore_torch.marginalize((probs, atoms), decoder_loss)

    @torch.no_grad()
    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """Labels from the single best tree (SparseMAP's argmax oracle)."""
        tree = self.structure.argmax(self.arc_scores(tokens))
        root_word = tree.reshape(-1, N_WORDS + 1, N_WORDS)[:, 0, :]
        head = (root_word[:, :, None] * self.embed(tokens)).sum(dim=1)
        return self.classify(head).argmax(dim=-1)


def main(steps: int = 150, batch: int = 32, seed: int = 0) -> dict[str, float]:
    """Train, print progress, and return the final metrics."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = LatentTreeClassifier().double()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    test_tokens, test_labels = make_batch(512, generator)
    calls = 0.0
    for step in range(1, steps + 1):
        tokens, labels = make_batch(batch, generator)
        result = model.loss(tokens, labels)
        optimizer.zero_grad()
        result.expectation.mean().backward()
        optimizer.step()
        calls = result.calls / batch
        if step % 50 == 0 or step == steps:
            accuracy = (model.predict(test_tokens) == test_labels).double().mean().item()
            print(
                f"step {step:4d}  loss {result.expectation.mean().item():.3f}  "
                f"test accuracy {accuracy:.3f}  decoder calls per sentence {calls:.2f} (of 143 trees)"
            )
    accuracy = (model.predict(test_tokens) == test_labels).double().mean().item()
    return {"accuracy": accuracy, "calls_per_sentence": calls}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    arguments = parser.parse_args()
    main(arguments.steps, arguments.batch)
