"""torch.distributed set-up for ``torchrun`` launches; every helper is a no-op in one process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) per rank -> (N * world, ...) in rank order, keeping gradients to every rank's rows."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))


class CrossRankBatchNorm1d(torch.nn.BatchNorm1d):
    """BatchNorm1d whose training statistics span the batches of all ranks (B, C) -> (B, C).

    SyncBatchNorm needs a GPU; here the (small) pooled features of every rank are gathered, so a
    distributed run normalises exactly like one process on the union batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        start = rank() * len(x)
        return super().forward(gather_rows(x))[start : start + len(x)]


def cross_rank_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every BatchNorm1d made a CrossRankBatchNorm1d in place.

    The counterpart of ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, which needs a GPU. The
    subclass adds no state, so parameters (and an optimizer holding them) stay the same objects.
    """
    for child in module.modules():
        if type(child) is torch.nn.BatchNorm1d:
            child.__class__ = CrossRankBatchNorm1d
    return module


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def broadcast(value):
    """Rank 0's value on every rank (any picklable object)."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
