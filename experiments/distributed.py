"""Data-parallel training under ``torchrun``: what the harness does differently on several processes.

Run any experiment unchanged under ``torchrun``::

    torchrun --nproc_per_node=2 -m experiments.bitvector_vae --method sparsemap --epochs 1

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``)
nothing here is used and the harness behaves exactly as on one process.

With N processes:

* the process group is initialized from the environment (NCCL for CUDA
  devices, gloo for CPU), and each process uses ``cuda:LOCAL_RANK`` when
  ``--device`` is ``auto`` or ``cuda`` and CUDA is available;
* ``--batch-size`` stays the *global* batch: every step's batch (the same
  seeded order on every process) is split across the processes the way
  ``torch.utils.data.DistributedSampler`` splits a data set (``rank::N``, a
  short batch padded by repeating its first examples), so N processes take
  the same optimization steps as one process would, N times faster at best;
* the model is wrapped in ``DistributedDataParallel``: gradients are
  averaged by the backward pass itself, the only collective in a step.
  Sparse marginalization decodes a different number of rows on each
  process; nothing waits on that number;
* epoch metrics are combined exactly (losses weighted by examples, decoder
  calls summed, support sizes gathered); validation and test metrics are
  computed on rank 0 (the others wait, up to :data:`TIMEOUT`), or split
  across the processes by experiments that say they can (the bit-vector
  VAE, whose test likelihood is the costly part), and broadcast from rank
  0, so every process returns the same result;
* checkpoints, metrics, plots and ``result.json`` (which records
  ``world_size``) are written by rank 0 only, atomically; a killed run
  continues with ``--resume`` (every process reads rank 0's checkpoint);
* sampling estimators draw independent samples on each process: the random
  generators are seeded per (seed, epoch, rank) at the start of each epoch,
  so a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

import atexit
import datetime
import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

__all__ = [
    "TIMEOUT",
    "Replicated",
    "all_gather",
    "barrier",
    "broadcast",
    "epoch_seed",
    "forward",
    "gather_rows",
    "init_from_environment",
    "is_main_process",
    "local_device",
    "rank",
    "replicate",
    "shard",
    "sharing",
    "unreplicate",
    "world_size",
]

T = TypeVar("T")

#: How long a process waits in a collective.  Rank 0 evaluates alone while the
#: others wait for its metrics, and a test evaluation at the paper's budget
#: (10,000 images, 1,024 importance samples each) takes far longer on a CPU
#: than torch's default of 30 minutes.
TIMEOUT = datetime.timedelta(hours=12)

_REPLICAS: weakref.WeakKeyDictionary[torch.nn.Module, DistributedDataParallel] = weakref.WeakKeyDictionary()


def _environment_world_size() -> int:
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(text)
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {text!r}") from None
    if size < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {text!r}")
    return size


def world_size() -> int:
    """Processes training together: the process group's size, or ``WORLD_SIZE`` before it exists."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _environment_world_size()


def rank() -> int:
    """This process's rank (0 without ``torchrun``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes files and prints (rank 0)."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index becomes ``cuda:LOCAL_RANK`` when several processes share a machine."""
    if device.type == "cuda" and device.index is None and _environment_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_from_environment(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes in the environment; whether there is one.

    Does nothing (and returns ``False``) on a single process.  The backend
    is NCCL for CUDA devices and gloo otherwise.
    """
    if _environment_world_size() == 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this build of PyTorch has no torch.distributed")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        atexit.register(_destroy)
    return True


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Replicated(torch.nn.Module):
    """Wraps a model so that ``DistributedDataParallel``'s forward runs a whole step's computation.

    The experiments compute their loss through several of the model's
    methods (encoder, estimator, decoder), not one ``forward``; this
    module's ``forward(fn, *args)`` calls ``fn(*args)``, so the computation
    whose result is backpropagated runs inside DDP's forward, as DDP needs.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


def replicate(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """Wrap ``model`` in ``DistributedDataParallel`` (parameters and buffers broadcast from rank 0).

    ``find_unused_parameters`` is on: which parameters a step uses can
    differ between estimators and between processes (a baseline network
    used only by some), and DDP must not wait for their gradients.
    """
    replica = DistributedDataParallel(
        Replicated(model),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )
    _REPLICAS[model] = replica
    return replica


def unreplicate(model: torch.nn.Module) -> None:
    """Forget ``model``'s wrapper: later :func:`forward` calls run it directly."""
    _REPLICAS.pop(model, None)


def forward(model: torch.nn.Module, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, through ``model``'s DistributedDataParallel wrapper when it has one.

    An experiment's training step calls this around the computation whose
    result it backpropagates (everything up to the surrogate loss); on one
    process it is a plain call.
    """
    replica = _REPLICAS.get(model)
    if replica is None:
        return fn(*args, **kwargs)
    return replica(fn, *args, **kwargs)  # type: ignore[no-any-return]


def _positions(count: int, process: int, processes: int) -> list[int]:
    rows = cast("Dataset[int]", range(count))
    sampler: DistributedSampler[int] = DistributedSampler(
        rows, num_replicas=processes, rank=process, shuffle=False
    )
    return list(sampler)


def shard(batch: Any, process: int, processes: int) -> Any:
    """This process's part of a global batch: rows ``process::processes``, padded like DistributedSampler.

    ``batch`` is a tensor (rows along the first axis), a tuple of batches
    (each split on its own), or an object with ``len`` and indexing by a
    tensor of rows (such as the signaling game's ``Games``).
    """
    if processes == 1:
        return batch
    if isinstance(batch, tuple):
        parts = [shard(part, process, processes) for part in batch]
        return type(batch)(*parts) if hasattr(batch, "_fields") else tuple(parts)
    count = batch.shape[0] if isinstance(batch, torch.Tensor) else len(batch)
    if count == 0:
        return batch
    rows = torch.tensor(_positions(count, process, processes), dtype=torch.int64)
    if isinstance(batch, torch.Tensor):
        return batch[rows.to(batch.device)]
    return batch[rows]


def epoch_seed(seed: int, epoch: int, process: int) -> int:
    """The seed of ``process``'s random generators during ``epoch`` (distinct per process and epoch)."""
    return (seed * 1_000_003 + epoch) * 10_007 + process


def sharing() -> tuple[int, int]:
    """``(rank, processes)`` while several processes train together, else ``(0, 1)``.

    An experiment whose evaluation is split across the processes (see
    ``Experiment.shares_evaluation`` in :mod:`experiments.harness`) takes
    its part of the examples by this and joins the parts with
    :func:`gather_rows`.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(parts: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """This process's per-example values (``parts``, concatenated) followed by the others', in rank order.

    Every process must call it (a process with no examples passes no
    parts).  On one process it is ``torch.cat(parts)``.  The result is on
    the CPU when several processes take part.
    """
    dtype = dtype or torch.get_default_dtype()
    mine = torch.cat(list(parts)) if parts else torch.zeros(0, dtype=dtype)
    if sharing()[1] == 1:
        return mine
    return torch.cat([part.to(mine.dtype) for part in all_gather(mine.cpu())])


def barrier() -> None:
    """Wait until every process gets here (nothing on one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every process (a picklable object)."""
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]  # type: ignore[no-any-return]


def all_gather(obj: T) -> Sequence[T]:
    """Every process's ``obj``, in rank order (picklable objects)."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
