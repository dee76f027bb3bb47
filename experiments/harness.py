"""The training harness shared by the experiments.

An experiment is a small class (see :class:`Experiment`) that builds its data,
model and optimizer from a dataclass config, takes one optimization step on a
batch, and evaluates a split.  :func:`train` does everything else, the same
way for every experiment:

* seeds for reproducibility, and a data order that depends only on
  ``(seed, epoch)``;
* tqdm progress bars;
* per-epoch metrics appended to ``metrics.jsonl`` and rewritten as
  ``metrics.csv``;
* a checkpoint written atomically after every epoch (model, optimizer,
  estimator state such as baselines and Gumbel temperatures, random number
  generator states, metrics so far), so that a killed run continued with
  ``--resume`` ends with the same result as an uninterrupted one;
* a clear error as soon as a loss is NaN or infinite;
* device selection (``--device auto`` picks CUDA when available);
* data-parallel training on several processes when started by ``torchrun``
  (see :mod:`experiments.distributed`); on one process nothing changes.

:func:`parse_config` turns any config dataclass into a command line.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import inspect
import json
import math
import os
import random
import re
import sys
import tempfile
import time
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from experiments import distributed

__all__ = [
    "Experiment",
    "RunConfig",
    "TrainingDiverged",
    "atomic_save",
    "calls_summary",
    "check_fields",
    "check_run_config",
    "field_docs",
    "parse_config",
    "resolve_device",
    "reuse_freed_memory",
    "seed_everything",
    "to_arguments",
    "train",
]

CHECKPOINT = "checkpoint.pt"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
RESULT_JSON = "result.json"


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: the run stops instead of training on garbage."""


@dataclasses.dataclass
class RunConfig:
    """Settings every experiment shares (an experiment's config subclasses this).

    Attributes
    ----------
    method : str
        The gradient estimator (see ``experiments.estimators``).
    seed : int
        Seeds the parameters, the data order and every sample drawn.
    epochs : int
        Passes over the training data.
    batch_size : int
        Examples per optimization step.
    lr : float or None
        Adam's learning rate; ``None`` takes the paper's setting for the method.
    max_train_examples, max_eval_examples : int or None
        Use only the first so many examples of the training and evaluation
        splits (small runs); ``None`` uses them all.
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    data_dir : str or None
        Where the data files are (see ``experiments.data``); searched first.
    out_dir : str
        Where metrics, checkpoints, plots and the result are written.
    resume : bool
        Continue from ``out_dir``'s checkpoint if there is one.
    progress : bool
        Show tqdm progress bars.
    """

    method: str = "sparsemax"
    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    device: str = "auto"
    data_dir: str | None = None
    out_dir: str = "runs/default"
    resume: bool = False
    progress: bool = True


class Experiment(Protocol):
    """What :func:`train` needs from an experiment.

    ``model`` and ``optimizer`` are checkpointed with ``state_dict``; put
    every piece of training state (estimator baselines, temperatures, NVIL
    networks) inside ``model`` so that it is saved and restored too.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def train_batches(self, generator: torch.Generator) -> Sequence[Any]:
        """This epoch's training batches, shuffled by ``generator``."""
        ...

    def train_step(self, batch: Any, epoch: int) -> Mapping[str, Any]:
        """One optimization step; returns at least ``loss`` (float), ``calls``
        (rows decoded) and ``support`` (a tensor of per-example support sizes)."""
        ...

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics on ``split`` (``"valid"`` or ``"test"``).

        On several processes only rank 0 calls it, unless the experiment
        has a true ``shares_evaluation`` attribute: then every process
        does, evaluates the examples ``experiments.distributed.sharing()``
        gives it, and joins per-example values with
        ``experiments.distributed.gather_rows``.
        """
        ...


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if name == "auto":
        return distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return distributed.local_device(device)


def reuse_freed_memory(threshold: int = 1 << 30) -> bool:
    """Have glibc's malloc keep freed blocks of up to ``threshold`` bytes for reuse.

    By default glibc maps every block above a few MB with ``mmap`` and
    unmaps it when freed, so a buffer allocated and freed at every step
    (the bit-vector VAE decoder's (rows, 784, 256) logits) costs page faults
    every step: half the run's time went to the kernel, measured.  This
    raises the mmap and trim thresholds (``mallopt``), as the environment
    variable ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...`` would, for
    this process.  Returns whether it applied (``False`` off glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, threshold)) and bool(mallopt(m_trim_threshold, threshold))


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (experiments draw every sample from torch's)."""
    random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    A reader sees the old file or the new one, never a partial one, even if
    the process is killed mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def calls_summary(support: torch.Tensor, prefix: str = "calls") -> dict[str, float]:
    """Mean, median and quartiles of per-example decoder calls (support sizes)."""
    values = support.detach().double().cpu()
    if values.numel() == 0:
        return {}
    q1, median, q3 = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_median": median,
        f"{prefix}_q1": q1,
        f"{prefix}_q3": q3,
    }


def _write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` and ``metrics.csv`` from the whole history (rewritten atomically)."""
    _atomic_write_text(out_dir / METRICS_JSONL, "".join(json.dumps(row) + "\n" for row in history))
    columns: list[str] = []
    for row in history:
        columns.extend(key for key in row if key not in columns)
    lines: list[str] = []

    class _Sink:
        def write(self, text: str) -> None:
            lines.append(text)

    writer = csv.DictWriter(_Sink(), fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    _atomic_write_text(out_dir / METRICS_CSV, "".join(lines))


def _progress(iterable: Iterable[Any], enabled: bool, **kwargs: Any) -> Iterator[Any]:
    if not enabled:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, leave=False, dynamic_ncols=True, file=sys.stderr, **kwargs)


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _epoch_summary(
    losses: list[tuple[float, int]], supports: list[torch.Tensor], rows: int, examples: int, parallel: bool
) -> dict[str, Any]:
    """Training metrics of one epoch; on several processes, combined over all of them exactly.

    ``losses`` holds each step's mean loss and its example count: the
    epoch's loss is the mean over steps of each global batch's mean (one
    process's per-step means weighted by their examples); decoder calls and
    examples are summed, support sizes gathered, never averages of averages.
    """
    if parallel:
        mine = (losses, torch.cat(supports) if supports else torch.zeros(0), rows, examples)
        gathered = distributed.all_gather(mine)
        steps = len(losses)
        losses = []
        for step in range(steps):
            total = sum(part[0][step][0] * part[0][step][1] for part in gathered)
            count = sum(part[0][step][1] for part in gathered)
            losses.append((total / max(count, 1), count))
        supports = [part[1] for part in gathered]
        rows = sum(part[2] for part in gathered)
        examples = sum(part[3] for part in gathered)
    support = torch.cat(supports) if supports else torch.zeros(0)
    return {
        "train_loss": float(np.mean([loss for loss, _ in losses])) if losses else float("nan"),
        **calls_summary(support),
        "rows_decoded_per_example": rows / max(examples, 1),
    }


def _resume(
    experiment: Experiment, config: RunConfig, processes: int
) -> tuple[list[dict[str, Any]], int, float]:
    """Load ``out_dir``'s checkpoint into ``experiment``: ``(history, next epoch, seconds so far)``."""
    out_dir = Path(config.out_dir)
    checkpoint = torch.load(out_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    if checkpoint["config"] != dataclasses.asdict(config) | {"resume": checkpoint["config"]["resume"]}:
        raise ValueError(
            f"--resume: the checkpoint in {out_dir} was written by a run with another config; "
            "use the same arguments, or another --out-dir"
        )
    written_by = checkpoint.get("world_size", 1)
    if written_by != processes:
        raise ValueError(
            f"--resume: the checkpoint in {out_dir} was written by {written_by} process(es), this run "
            f"has {processes}; resume with the same number of processes"
        )
    experiment.model.load_state_dict(checkpoint["model"])
    experiment.optimizer.load_state_dict(checkpoint["optimizer"])
    _set_rng_state(checkpoint["rng"])
    return checkpoint["history"], checkpoint["epoch"] + 1, checkpoint["elapsed"]


def _evaluate(experiment: Experiment, split: str, parallel: bool) -> dict[str, float]:
    """``split``'s metrics; on several processes, rank 0's, broadcast.

    Rank 0 evaluates alone, unless the experiment's ``shares_evaluation``
    is true: then every process evaluates its part of the examples (see
    :func:`experiments.distributed.sharing`).
    """
    experiment.model.eval()
    metrics: dict[str, float] = {}
    if distributed.is_main_process() or getattr(experiment, "shares_evaluation", False):
        with torch.no_grad():
            metrics = experiment.evaluate(split)
    return distributed.broadcast(metrics) if parallel else metrics


def _train_epoch(experiment: Experiment, config: RunConfig, epoch: int, parallel: bool) -> dict[str, Any]:
    """One pass over the training batches (this process's shard of each); the epoch's training metrics."""
    processes, process = distributed.world_size(), distributed.rank()
    experiment.model.train()
    if parallel:
        seed_everything(distributed.epoch_seed(config.seed, epoch, process))
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    batches = experiment.train_batches(generator)
    shown = config.progress and distributed.is_main_process()
    losses: list[tuple[float, int]] = []
    supports: list[torch.Tensor] = []
    rows, examples = 0, 0
    for step, batch in enumerate(_progress(batches, shown, desc=f"epoch {epoch}", unit="batch")):
        out = experiment.train_step(distributed.shard(batch, process, processes), epoch)
        loss = float(out["loss"])
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"{config.method}: the training loss is {loss} at epoch {epoch}, step {step}; "
                f"try a smaller --lr (now {config.lr}) or another --seed"
            )
        losses.append((loss, int(out["support"].shape[0])))
        supports.append(out["support"].detach().cpu())
        rows += int(out["calls"])
        examples += int(out["support"].shape[0])
    return _epoch_summary(losses, supports, rows, examples, parallel)


def train(experiment: Experiment, config: RunConfig) -> dict[str, Any]:
    """Train ``experiment`` for ``config.epochs``, checkpointing every epoch; evaluate on test.

    Returns the result (also written to ``out_dir/result.json``): the config,
    the per-epoch history, the test metrics, the training time and the
    number of processes (``world_size``).  Started by ``torchrun`` with
    several processes, it trains data-parallel (see
    :mod:`experiments.distributed`); every process returns the same result
    and only rank 0 writes files.

    Raises
    ------
    TrainingDiverged
        As soon as a training loss is NaN or infinite.
    """
    device = _model_device(experiment.model)
    parallel = distributed.init_from_environment(device)
    processes = distributed.world_size()
    writer = distributed.is_main_process()
    out_dir = Path(config.out_dir)
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / CHECKPOINT
    history: list[dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    if config.resume and checkpoint_path.exists():
        history, start_epoch, elapsed = _resume(experiment, config, processes)
    elif writer and checkpoint_path.exists():
        checkpoint_path.unlink()
    if parallel:
        # Every process has read the checkpoint before rank 0 may overwrite it.
        distributed.barrier()
        distributed.replicate(experiment.model, device)
    try:
        for epoch in _progress(
            range(start_epoch, config.epochs), config.progress and writer, desc=config.method, unit="epoch"
        ):
            began = time.perf_counter()
            summary = _train_epoch(experiment, config, epoch, parallel)
            train_time = time.perf_counter() - began
            valid = _evaluate(experiment, "valid", parallel)
            elapsed += time.perf_counter() - began
            history.append(
                {
                    "epoch": epoch,
                    **summary,
                    **{f"valid_{key}": value for key, value in valid.items()},
                    "epoch_seconds": train_time,
                }
            )
            if writer:
                _write_metrics(out_dir, history)
                checkpoint = {
                    "config": dataclasses.asdict(config),
                    "epoch": epoch,
                    "model": experiment.model.state_dict(),
                    "optimizer": experiment.optimizer.state_dict(),
                    "rng": _rng_state(),
                    "history": history,
                    "elapsed": elapsed,
                    "world_size": processes,
                }
                atomic_save(checkpoint, checkpoint_path)
    finally:
        distributed.unreplicate(experiment.model)

    if parallel:
        # As at an epoch's start: a run resumed after its last epoch evaluates with the same draws.
        seed_everything(distributed.epoch_seed(config.seed, config.epochs, distributed.rank()))
    result = {
        "config": dataclasses.asdict(config),
        "history": history,
        "test": _evaluate(experiment, "test", parallel),
        "train_seconds": elapsed,
        "world_size": processes,
    }
    if writer:
        _atomic_write_text(out_dir / RESULT_JSON, json.dumps(result, indent=2) + "\n")
    return result


ConfigT = TypeVar("ConfigT", bound=RunConfig)


def _field_parser(annotation: Any) -> tuple[Any, bool]:
    """The scalar type of a config field and whether it is optional."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        return arguments[0], True
    return annotation, False


def field_docs(cls: type) -> dict[str, str]:
    """Each field's description in the ``Attributes`` sections of ``cls``'s and its bases' docstrings.

    A numpydoc entry ``name : type`` (or ``a, b : type``) followed by its
    indented description; the text is joined into one line.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        inside, names, text = False, [], []  # type: ignore[var-annotated]
        for line in [*inspect.cleandoc(klass.__doc__ or "").splitlines(), "END"]:
            stripped = line.strip()
            if stripped == "Attributes":
                inside = True
                continue
            if not inside or not stripped or set(stripped) == {"-"}:
                continue
            if line.startswith(" "):
                text.append(re.sub(r":\w+:`~?([^`]*)`", r"\1", stripped).replace("``", ""))
                continue
            # A new entry, a new section, or the end.
            for name in names:
                docs[name] = " ".join(text)
            names, text = [], []
            if " : " in stripped and line != "END":
                names = [name.strip() for name in stripped.split(" : ")[0].split(",")]
            else:
                inside = False
    return docs


def check_run_config(config: RunConfig) -> None:
    """The settings every run shares: counts at least 1, rates not negative.

    Raises
    ------
    ValueError
        Naming the option, e.g. ``--batch-size must be >= 1, got 0``.
    """
    limits = {"epochs": 0, "batch_size": 1, "max_train_examples": 1, "max_eval_examples": 1, "lr": 0}
    check_fields(config, at_least=limits)


def check_fields(
    config: Any,
    *,
    choices: Mapping[str, Sequence[Any]] | None = None,
    at_least: Mapping[str, float] | None = None,
    positive: Sequence[str] = (),
) -> None:
    """Check config fields: ``choices`` (allowed values), ``at_least`` (minimums), ``positive`` (> 0).

    A field that is ``None`` passes the numeric checks (it is optional).

    Raises
    ------
    ValueError
        Naming the option, e.g. ``--bits must be >= 1, got 0``.
    """
    for name, allowed in (choices or {}).items():
        value = getattr(config, name)
        if value not in allowed:
            raise ValueError(
                f"--{name.replace('_', '-')} must be one of {', '.join(map(str, allowed))}, got {value!r}"
            )
    for name, minimum in (at_least or {}).items():
        value = getattr(config, name)
        if value is not None and not value >= minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum:g}, got {value}")
    for name in positive:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")


def parse_config(
    cls: type[ConfigT],
    argv: Sequence[str] | None = None,
    *,
    description: str | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
    check: Callable[[ConfigT], None] | None = None,
) -> ConfigT:
    """A config of dataclass ``cls`` from command-line arguments.

    Every field becomes an option (``batch_size`` is ``--batch-size``); a
    boolean gets ``--name`` and ``--no-name``; an optional field accepts
    ``none``.  Each option's help is the field's description in the class
    docstring (:func:`field_docs`), with its choices and default.  A bad
    value (a number that does not parse, a choice not offered, or one that
    ``check(config)`` or :func:`check_run_config` refuses with a
    ``ValueError``) ends the program with a one-line usage error.
    """
    parser = argparse.ArgumentParser(
        description=description or cls.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind, optional = _field_parser(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        help_text = docs.get(field.name, field.name.replace("_", " ")).replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue

        def convert(text: str, kind: Any = kind, optional: bool = optional) -> Any:
            if optional and text.lower() == "none":
                return None
            return kind(text)

        convert.__name__ = getattr(kind, "__name__", "value")
        extra: dict[str, Any] = {}
        if choices and field.name in choices:
            extra["choices"] = list(choices[field.name])
            help_text += " (one of %(choices)s)"
        elif optional:
            help_text += " ('none' allowed)"
        parser.add_argument(flag, type=convert, default=default, help=help_text, **extra)
    namespace = parser.parse_args(argv)
    config = cls(**vars(namespace))
    try:
        check_run_config(config)
        if check is not None:
            check(config)
    except ValueError as error:
        parser.error(str(error))
    return config


def to_arguments(config: RunConfig) -> list[str]:
    """The command-line options that :func:`parse_config` turns back into ``config``."""
    arguments: list[str] = []
    for field in dataclasses.fields(config):
        flag = "--" + field.name.replace("_", "-")
        value = getattr(config, field.name)
        if isinstance(value, bool):
            arguments.append(flag if value else "--no-" + flag[2:])
        else:
            arguments += [flag, "none" if value is None else str(value)]
    return arguments
