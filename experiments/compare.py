"""Run every method of an experiment with one budget and write one comparison table.

    python -m experiments.compare bitvector                 # the small default budget
    python -m experiments.compare all                       # every experiment, one after another
    python -m experiments.compare signaling --seeds 3       # seeds 0, 1, 2: mean and std in the table
    python -m experiments.compare bitvector --epochs 100 --max-train-examples none \\
        --max-eval-examples none --importance-samples 1024  # the paper's budget

Writes, under ``--out-dir`` (default ``runs/compare``), one folder per
experiment with a folder per method (metrics, checkpoint, plots), the
comparison table ``table.md`` (also printed) and the comparison plots
(learning curves, decoder calls per epoch, and for the bit-vector VAE the
rate-distortion plane) and ``results.csv``, one row per method and seed.
With ``--seeds N`` every method runs with seeds ``s, s + 1, ..., s + N - 1``
(``s`` is ``--seed``, default 0; runs in ``<method>/seed<k>``) and the
table shows the mean and the standard deviation over the seeds.  Methods
already finished in ``--out-dir`` are reused with ``--resume``, so an
interrupted comparison continues where it stopped.  ``--nproc N`` runs
each method under ``torchrun`` with N processes (data-parallel, see
``experiments.distributed``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import importlib
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EXPERIMENTS", "ExperimentSpec", "compare", "main", "markdown_table", "run_method", "seeds_csv"]

#: Results of one method: one run per seed.
Runs = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class ExperimentSpec:
    """How to run and tabulate one experiment.

    ``module`` is the experiment's module under ``experiments``: it defines
    the config class ``config``, ``run(config)``, ``SMALL_BUDGET`` (the
    default budget's config overrides) and ``TABLE_COLUMNS``.  ``extra_rows``
    adds rows to the table from the methods' runs (the semi-supervised
    VAE's warm-started classifier alone).
    """

    module: str
    config: str
    methods: Callable[[], Sequence[str]]
    paper: Callable[[Any], Mapping[str, str]] = field(default=lambda config: {})
    paper_header: str = "paper"
    rate_distortion: bool = False
    extra_rows: Callable[[Mapping[str, Runs]], dict[str, Runs]] = field(default=lambda runs: {})

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


#: The semi-supervised VAE's row of the warm-started classifier alone.
SUPERVISED_ONLY = "supervised only (warm start)"


def _ssvae_supervised_only(runs: Mapping[str, Runs]) -> dict[str, Runs]:
    """The warm start's test metrics (the classifier trained on the labeled images alone).

    Taken from dense's runs (or the first method's): every softmax method
    starts from the same warm start, since the warm start's loss and random
    draws do not depend on the estimator.
    """
    order = ["dense", *runs]
    for method in order:
        if method in runs and all("warmup" in result for result in runs[method]):
            return {SUPERVISED_ONLY: [result["warmup"] for result in runs[method]]}
    return {}


def _signaling_methods() -> Sequence[str]:
    from experiments.signaling import METHODS

    return METHODS


def _signaling_paper(config: Any) -> Mapping[str, str]:
    from experiments.signaling import PAPER_SUCCESS

    return {method: f"{success:.2f} ({calls:g})" for method, (success, calls) in PAPER_SUCCESS.items()}


#: The experiments ``compare`` knows, by command-line name.
EXPERIMENTS: dict[str, ExperimentSpec] = {
    "ssvae": ExperimentSpec(
        "ssvae",
        "SemiSupervisedConfig",
        _categorical_methods,
        _ssvae_paper,
        "paper: MNIST accuracy % (calls)",
        extra_rows=_ssvae_supervised_only,
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


def _calls(result: Mapping[str, Any]) -> tuple[float, float] | None:
    """Decoder calls per example over training: mean of the epochs' medians, and the overall mean."""
    history = result["history"]
    if not history:
        return None
    medians = [row["calls_median"] for row in history if "calls_median" in row]
    means = [row["rows_decoded_per_example"] for row in history]
    median = sum(medians) / len(medians) if medians else math.nan
    return median, sum(means) / len(means)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def _cell(values: Sequence[float], style: str) -> str:
    """One value, or ``mean ± std`` of several (one per seed)."""
    if len(values) == 1:
        return style.format(values[0])
    mean, std = _mean_std(values)
    return f"{style.format(mean)} ± {style.format(std)}"


def _as_runs(results: Mapping[str, Any]) -> dict[str, Runs]:
    return {
        method: [result] if isinstance(result, Mapping) else list(result)
        for method, result in results.items()
    }


def markdown_table(
    results: Mapping[str, Mapping[str, Any] | Runs],
    columns: Sequence[tuple[str, str, str]],
    paper: Mapping[str, str] | None = None,
    paper_header: str = "paper",
) -> str:
    """One row per method: the test metrics, decoder calls, training time and the paper's number.

    ``results`` maps a method to its result, or to its results of several
    seeds: a cell then reads ``mean ± std`` (sample standard deviation).
    """
    runs = _as_runs(results)
    seeds = max((len(method_runs) for method_runs in runs.values()), default=1)
    headers = ["method", *(header for header, _, _ in columns), "decoder calls (median / mean)", "train (s)"]
    if seeds > 1:
        headers.insert(1, "seeds")
    if paper:
        headers.append(paper_header)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" + "---:|" * (len(headers) - 1)]
    for method, method_runs in runs.items():
        cells = [method]
        if seeds > 1:
            cells.append(str(len(method_runs)))
        for _, key, style in columns:
            values = [result["test"][key] for result in method_runs if key in result["test"]]
            cells.append(_cell(values, style) if len(values) == len(method_runs) else "-")
        calls = [_calls(result) for result in method_runs]
        if any(call is None for call in calls):
            cells.append("-")
        else:
            medians = [call[0] for call in calls if call is not None]
            means = [call[1] for call in calls if call is not None]
            cells.append(f"{_mean_std(medians)[0]:.2f} / {_mean_std(means)[0]:.2f}")
        cells.append(f"{_mean_std([result['train_seconds'] for result in method_runs])[0]:.0f}")
        if paper:
            cells.append(paper.get(method, "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds_csv(runs: Mapping[str, Runs], columns: Sequence[tuple[str, str, str]]) -> str:
    """One CSV row per method and seed: the test metrics, decoder calls and training time."""
    keys = [key for _, key, _ in columns]
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["method", "seed", *keys, "calls_median", "calls_mean", "train_seconds"])
    for method, method_runs in runs.items():
        for result in method_runs:
            calls = _calls(result) or (math.nan, math.nan)
            seed = result.get("config", {}).get("seed", "")
            writer.writerow(
                [
                    method,
                    seed,
                    *(result["test"].get(key, "") for key in keys),
                    *calls,
                    result["train_seconds"],
                ]
            )
    return stream.getvalue()


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
    seeds: int = 1,
    nproc: int = 1,
) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """Run ``methods`` of experiment ``name`` with one budget and ``seeds`` seeds; write the table and plots.

    Returns the table and every method's results, one per seed (the
    plots show the first seed's).  ``nproc`` > 1 trains each run under
    ``torchrun`` with that many processes.
    """
    from experiments import plots

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"--nproc must be an integer >= 1, got {nproc!r}")
    spec = EXPERIMENTS[name]
    module = spec.load()
    config_class = spec.config_class()
    chosen = list(methods) if methods else list(spec.methods())
    unknown = [method for method in chosen if method not in spec.methods()]
    if unknown:
        raise ValueError(f"unknown methods for {name}: {unknown}; valid: {', '.join(spec.methods())}")
    experiment_dir = out_dir / name
    results: dict[str, list[dict[str, Any]]] = {}
    base_config: Any = None
    first_seed = int(overrides.get("seed", 0))
    # An experiment may print a notice (a data set fallback) once for all its runs.
    notices = getattr(module, "notices_once", contextlib.nullcontext)
    with notices():
        for method in chosen:
            results[method] = []
            for seed in range(first_seed, first_seed + seeds):
                settings = {**module.SMALL_BUDGET, **overrides, "method": method, "seed": seed}
                where = experiment_dir / method
                settings["out_dir"] = str(where if seeds == 1 else where / f"seed{seed}")
                config = config_class(**settings)
                base_config = base_config or config
                finished = Path(config.out_dir) / "result.json"
                if finished.exists():
                    saved = json.loads(finished.read_text())
                    if saved["config"] == dataclasses.asdict(dataclasses.replace(config, resume=True)):
                        results[method].append(saved)
                        continue
                results[method].append(run_method(spec, dataclasses.replace(config, resume=True), nproc))
    paper = spec.paper(base_config) if base_config is not None else {}
    rows: dict[str, Runs] = {**results, **spec.extra_rows(results)}
    table = markdown_table(rows, module.TABLE_COLUMNS, paper, spec.paper_header)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    (experiment_dir / "table.md").write_text(table)
    (experiment_dir / "results.csv").write_text(seeds_csv(rows, module.TABLE_COLUMNS))
    first = {method: runs[0] for method, runs in results.items()}
    plots.compare_plots(first, experiment_dir, rate_distortion=spec.rate_distortion)
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _check_settings(
    parser: argparse.ArgumentParser, name: str, methods: Sequence[str] | None, known: Mapping[str, Any]
) -> None:
    """A one-line usage error, before any run starts, for a method or setting the experiment refuses."""
    spec = EXPERIMENTS[name]
    module = spec.load()
    valid = spec.methods()
    unknown = [method for method in methods or () if method not in valid]
    if unknown:
        parser.error(f"{name}: unknown methods {', '.join(unknown)}; valid: {', '.join(valid)}")
    check = getattr(module, "check_config", None)
    for method in methods or valid:
        try:
            config = spec.config_class()(**{**module.SMALL_BUDGET, **known, "method": method})
            if check is not None:
                check(config)
        except (TypeError, ValueError) as error:
            parser.error(f"{name}: {error}")


def main(argv: Sequence[str] | None = None) -> int:
    from experiments import harness

    # The bit-vector VAE's decoder allocates and frees large buffers at every step.
    harness.reuse_freed_memory()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "experiment", choices=[*EXPERIMENTS, "all"], help="the experiment to run: %(choices)s"
    )
    parser.add_argument("--methods", nargs="+", help="a subset of the methods (default: all)")
    parser.add_argument(
        "--out-dir", default="runs/compare", help="where runs, tables and plots go (default: %(default)s)"
    )
    parser.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="runs per method, seeds --seed, --seed + 1, ...; the table shows mean and std (default: 1)",
    )
    parser.add_argument(
        "--nproc",
        type=_positive_int,
        default=1,
        help="processes per run: N > 1 runs each method under torchrun, data-parallel (default: 1)",
    )
    args, rest = parser.parse_known_args(argv)
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
    plan: list[tuple[str, Sequence[str] | None, dict[str, Any]]] = []
    for name in names:
        # With "all", an option applies to the experiments that have it (--bits to the VAE),
        # and the methods to the experiments that have them.
        known = {key: value for key, value in overrides.items() if key in fields[name]}
        methods = args.methods
        if args.experiment == "all" and methods:
            methods = [method for method in methods if method in EXPERIMENTS[name].methods()]
            if not methods:
                continue
        _check_settings(parser, name, methods, known)
        plan.append((name, methods, known))
    if not plan:
        parser.error(f"no experiment has the methods {', '.join(args.methods or ())}")
    for name, methods, known in plan:
        table, _ = compare(name, methods, known, Path(args.out_dir), seeds=args.seeds, nproc=args.nproc)
        print(f"\n## {name}\n\n{table}")
        print(f"table and plots in {Path(args.out_dir) / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
