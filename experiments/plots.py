"""Plots of training runs, written as PNG files with matplotlib (no display needed).

* learning curves: the training loss and a validation metric per epoch;
* decoder calls per epoch: the median per-example calls with the
  interquartile range shaded (the paper's figure 3);
* the rate-distortion plane: one point per method (the paper's figure 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt

__all__ = ["compare_plots", "decoder_calls_plot", "learning_curves_plot", "rate_distortion_plot", "run_plots"]

Results = Mapping[str, Mapping[str, Any]]


def _column(history: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(row.get(key, float("nan"))) for row in history]


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _valid_metric(history: Sequence[Mapping[str, Any]]) -> str | None:
    """The validation metric to plot: the first ``valid_*`` column."""
    for row in history:
        for key in row:
            if key.startswith("valid_") and key != "valid_support_mean":
                return key
    return None


def learning_curves_plot(results: Results, path: str | Path, valid_key: str | None = None) -> Path:
    """Training loss and a validation metric against epochs, one line per run."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4))
    for name, result in results.items():
        history = result["history"]
        epochs = [row["epoch"] + 1 for row in history]
        left.plot(epochs, _column(history, "train_loss"), marker="o", markersize=3, label=name)
        key = valid_key or _valid_metric(history)
        if key is not None:
            right.plot(epochs, _column(history, key), marker="o", markersize=3, label=name)
            right.set_ylabel(key.replace("_", " "))
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    right.set_xlabel("epoch")
    right.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(figure, Path(path))


def decoder_calls_plot(results: Results, path: str | Path) -> Path:
    """Median decoder calls per example against epochs, interquartile range shaded, log scale."""
    figure, axis = plt.subplots(figsize=(7.5, 4))
    for name, result in results.items():
        history = result["history"]
        epochs = [row["epoch"] + 1 for row in history]
        (line,) = axis.plot(epochs, _column(history, "calls_median"), marker="o", markersize=3, label=name)
        axis.fill_between(
            epochs,
            _column(history, "calls_q1"),
            _column(history, "calls_q3"),
            color=line.get_color(),
            alpha=0.2,
        )
    axis.set_yscale("log")
    axis.set_xlabel("epoch")
    axis.set_ylabel("decoder calls per example (median, IQR)")
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(figure, Path(path))


def rate_distortion_plot(results: Results, path: str | Path) -> Path:
    """Test rate (nats) against test distortion (nats), one point per run."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, result in results.items():
        test = result.get("test", {})
        if "rate" in test and "distortion" in test:
            axis.scatter(test["distortion"], test["rate"], label=name)
            axis.annotate(name, (test["distortion"], test["rate"]), fontsize="small")
    axis.set_xlabel("distortion (nats)")
    axis.set_ylabel("rate (nats)")
    return _save(figure, Path(path))


def run_plots(result: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """The plots of one run, written into ``out_dir``."""
    out = Path(out_dir)
    name = str(result["config"].get("method", "run"))
    return [
        learning_curves_plot({name: result}, out / "learning_curves.png"),
        decoder_calls_plot({name: result}, out / "decoder_calls.png"),
    ]


def compare_plots(results: Results, out_dir: str | Path, *, rate_distortion: bool = False) -> list[Path]:
    """The comparison plots of several runs (one per method), written into ``out_dir``."""
    out = Path(out_dir)
    paths = [
        learning_curves_plot(results, out / "learning_curves.png"),
        decoder_calls_plot(results, out / "decoder_calls.png"),
    ]
    if rate_distortion:
        paths.append(rate_distortion_plot(results, out / "rate_distortion.png"))
    return paths
