"""Data-parallel training under torchrun: the process group, each rank's share, the collectives.

``torchrun --nproc_per_node N -m purchasepred train ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`setup` joins them into one process group (NCCL on
CUDA, one GPU per local rank; gloo on CPU). Without torchrun (``WORLD_SIZE`` unset or 1) nothing
here talks to other processes and the trainer runs exactly as a single process.

How the trainer uses it: every rank draws the same seeded permutation of the epoch and trains on
its contiguous share of each global batch (``train.batch_size`` sequences in all); each rank's loss
is weighted by its share of the global batch's target rows (:func:`row_shares`), so that
DistributedDataParallel's gradient average is the gradient of the global batch's mean loss. Rank 0
alone writes checkpoints, metadata.json and progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from purchasepred.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join torchrun's process group when there is one; the rank's place and its device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"distributed training runs on CUDA (NCCL) or CPU (gloo), not on {device}; use --device cuda or cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(rank, world_size, local_rank), device


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.barrier()  # every rank returns once rank 0's files are written
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shard(rows: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's contiguous share of a global batch's rows (shares differ by at most one row)."""
    return rows.tensor_split(d.world_size)[d.rank] if d.enabled else rows


def sum_over_ranks(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t)
    return t


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. Ctrl-C reached one process first)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_main(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Rank 0's ``t`` on every rank (shared sampled negatives)."""
    if d.enabled:
        dist.broadcast(t, src=0)
    return t


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def row_shares(rows: torch.Tensor, total_rows: torch.Tensor, world_size: int) -> torch.Tensor:
    """Loss weights from this rank's target rows ``rows`` and the global batch's ``total_rows``
    (one count per loss part).

    Each part's loss is a mean over this rank's rows; weighted by ``rows * world_size / total_rows``
    and averaged over ranks (what DDP does to gradients) it is the mean over the global batch."""
    return torch.where(total_rows > 0, rows * world_size / total_rows.clamp(min=1), torch.zeros_like(rows))
