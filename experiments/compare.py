"""Run every method of an experiment with one budget and write one comparison table.

    python -m experiments.compare bitvector                 # the small default budget
    python -m experiments.compare all                       # every experiment, one after another
    python -m experiments.compare bitvector --epochs 100 --max-train-examples none \\
        --max-eval-examples none --importance-samples 1024  # the paper's budget

Writes, under ``--out-dir`` (default ``runs/compare``), one folder per
experiment with a folder per method (metrics, checkpoint, plots), the
comparison table ``table.md`` (also printed) and the comparison plots
(learning curves, decoder calls per epoch, and for the bit-vector VAE the
rate-distortion plane).  Methods already finished in ``--out-dir`` are
reused with ``--resume``, so an interrupted comparison continues where it
stopped.  ``--nproc N`` runs each method under ``torchrun`` with N processes
(data-parallel, see ``experiments.distributed``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EXPERIMENTS", "ExperimentSpec", "compare", "main", "markdown_table"]


@dataclass(frozen=True)
class ExperimentSpec:
    """How to run and tabulate one experiment.

    ``module`` is the experiment's module under ``experiments``: it defines
    the config class ``config``, ``run(config)``, ``SMALL_BUDGET`` (the
    default budget's config overrides) and ``TABLE_COLUMNS``.
    """

    module: str
    config: str
    methods: Callable[[], Sequence[str]]
    paper: Callable[[Any], Mapping[str, str]] = field(default=lambda config: {})
    paper_header: str = "paper"
    rate_distortion: bool = False

    def load(self) -> Any:
        return importlib.import_module(f"experiments.{self.module}")

    def config_class(self) -> type:
        return getattr(self.load(), self.config)  # type: ignore[no-any-return]


def _categorical_methods() -> Sequence[str]:
    from experiments.estimators import CATEGORICAL_ESTIMATORS

    return CATEGORICAL_ESTIMATORS


def _bitvector_methods() -> Sequence[str]:
    from experiments.estimators import BITVECTOR_ESTIMATORS

    return BITVECTOR_ESTIMATORS


def _bitvector_paper(config: Any) -> Mapping[str, str]:
    from experiments.bitvector_vae import PAPER_BITS_PER_DIM

    column = {32: 0, 128: 1}.get(config.bits)
    if column is None:
        return {}
    return {method: f"{values[column]:.2f}" for method, values in PAPER_BITS_PER_DIM.items()}


def _ssvae_paper(config: Any) -> Mapping[str, str]:
    from experiments.ssvae import PAPER_ACCURACY

    return {method: f"{accuracy:.2f} ({calls:g})" for method, (accuracy, calls) in PAPER_ACCURACY.items()}


def _signaling_methods() -> Sequence[str]:
    from experiments.signaling import METHODS

    return METHODS


def _signaling_paper(config: Any) -> Mapping[str, str]:
    from experiments.signaling import PAPER_SUCCESS

    return {method: f"{success:.2f} ({calls:g})" for method, (success, calls) in PAPER_SUCCESS.items()}


#: The experiments ``compare`` knows, by command-line name.
EXPERIMENTS: dict[str, ExperimentSpec] = {
    "ssvae": ExperimentSpec(
        "ssvae", "SemiSupervisedConfig", _categorical_methods, _ssvae_paper, "paper: MNIST accuracy % (calls)"
    ),
    "signaling": ExperimentSpec(
        "signaling",
        "SignalingConfig",
        _signaling_methods,
        _signaling_paper,
        "paper: ImageNet success % (calls)",
    ),
    "bitvector": ExperimentSpec(
        "bitvector_vae", "BitVectorConfig", _bitvector_methods, _bitvector_paper, "paper (bits/dim)", True
    ),
}


def _calls(result: Mapping[str, Any]) -> str:
    """Decoder calls per example over training: mean of the epochs' medians, and the overall mean."""
    history = result["history"]
    if not history:
        return "-"
    medians = [row["calls_median"] for row in history if "calls_median" in row]
    means = [row["rows_decoded_per_example"] for row in history]
    return f"{sum(medians) / len(medians):.2f} / {sum(means) / len(means):.2f}"


def markdown_table(
    results: Mapping[str, Mapping[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    paper: Mapping[str, str] | None = None,
    paper_header: str = "paper",
) -> str:
    """One row per method: the test metrics, decoder calls, training time and the paper's number."""
    headers = ["method", *(header for header, _, _ in columns), "decoder calls (median / mean)", "train (s)"]
    if paper:
        headers.append(paper_header)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" + "---:|" * (len(headers) - 1)]
    for method, result in results.items():
        test = result["test"]
        cells = [method]
        for _, key, style in columns:
            cells.append(style.format(test[key]) if key in test else "-")
        cells.append(_calls(result))
        cells.append(f"{result['train_seconds']:.0f}")
        if paper:
            cells.append(paper.get(method, "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_method(spec: ExperimentSpec, config: Any, nproc: int = 1) -> dict[str, Any]:
    """Train one method: in this process, or under ``torchrun`` with ``nproc`` processes.

    With several processes the experiment's command line runs as
    ``python -m torch.distributed.run --standalone --nproc_per_node=N -m
    experiments.<module> <config as options>``; its ``result.json`` is the result.
    """
    from experiments import harness

    if nproc == 1:
        return spec.load().run(config)  # type: ignore[no-any-return]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        f"experiments.{spec.module}",
        *harness.to_arguments(config),
    ]
    completed = subprocess.run(command, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{config.method}: torchrun with {nproc} processes failed (exit code {completed.returncode}); "
            f"its output is above, the command was: {' '.join(command)}"
        )
    return json.loads((Path(config.out_dir) / "result.json").read_text())  # type: ignore[no-any-return]


def compare(
    name: str,
    methods: Sequence[str] | None,
    overrides: Mapping[str, Any],
    out_dir: Path,
    nproc: int = 1,
) -> tuple[str, dict[str, Any]]:
    """Run ``methods`` of experiment ``name`` with one budget; write the table and plots.

    ``nproc`` > 1 trains each method under ``torchrun`` with that many processes.
    """
    from experiments import plots

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    spec = EXPERIMENTS[name]
    module = spec.load()
    config_class = spec.config_class()
    chosen = list(methods) if methods else list(spec.methods())
    unknown = [method for method in chosen if method not in spec.methods()]
    if unknown:
        raise ValueError(f"unknown methods for {name}: {unknown}; valid: {', '.join(spec.methods())}")
    experiment_dir = out_dir / name
    results: dict[str, Any] = {}
    base_config: Any = None
    for method in chosen:
        settings = {**module.SMALL_BUDGET, **overrides, "method": method}
        settings["out_dir"] = str(experiment_dir / method)
        config = config_class(**settings)
        base_config = base_config or config
        finished = Path(config.out_dir) / "result.json"
        if finished.exists():
            saved = json.loads(finished.read_text())
            if saved["config"] == dataclasses.asdict(config):
                results[method] = saved
                continue
        results[method] = run_method(spec, dataclasses.replace(config, resume=True), nproc)
    paper = spec.paper(base_config) if base_config is not None else {}
    table = markdown_table(results, module.TABLE_COLUMNS, paper, spec.paper_header)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    (experiment_dir / "table.md").write_text(table)
    plots.compare_plots(results, experiment_dir, rate_distortion=spec.rate_distortion)
    return table, results


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered == "none":
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--methods", nargs="+", help="a subset of the methods (default: all)")
    parser.add_argument("--out-dir", default="runs/compare", help="where results go (default: %(default)s)")
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes per method: N > 1 runs each method under torchrun, data-parallel (default: 1)",
    )
    args, rest = parser.parse_known_args(argv)
    if args.nproc < 1:
        parser.error(f"--nproc must be >= 1, got {args.nproc}")
    # Every other --option is a field of the experiment's config (--epochs 5, --bits 128, ...).
    overrides: dict[str, Any] = {}
    index = 0
    while index < len(rest):
        option = rest[index]
        if not option.startswith("--"):
            parser.error(f"unexpected argument {option!r}")
        key = option[2:].replace("-", "_")
        if key.startswith("no_"):
            overrides[key[3:]] = False
            index += 1
        elif index + 1 < len(rest) and not rest[index + 1].startswith("--"):
            overrides[key] = _parse_value(rest[index + 1])
            index += 2
        else:
            overrides[key] = True
            index += 1
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    fields = {name: {f.name for f in dataclasses.fields(EXPERIMENTS[name].config_class())} for name in names}
    unknown = sorted(set(overrides) - set().union(*fields.values()))
    if unknown:
        parser.error(f"unknown options {', '.join('--' + u.replace('_', '-') for u in unknown)}")
    for name in names:
        # With "all", an option applies to the experiments that have it (--bits to the VAE).
        known = {key: value for key, value in overrides.items() if key in fields[name]}
        methods = args.methods
        if args.experiment == "all" and methods:
            methods = [method for method in methods if method in EXPERIMENTS[name].methods()]
        table, _ = compare(name, methods, known, Path(args.out_dir), args.nproc)
        print(f"\n## {name}\n\n{table}")
        print(f"table and plots in {Path(args.out_dir) / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
