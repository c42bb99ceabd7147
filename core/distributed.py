"""Data parallel training under torchrun: this process's place in the job and the few collectives the trainer uses.

A plain `python run.py --train` is rank 0 of 1, and every helper here is then a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run as a plain process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group when torchrun (or any launcher setting WORLD_SIZE > 1, RANK, MASTER_ADDR/PORT) started
    us: gloo on CPU, nccl on CUDA. A plain `python run.py --train` stays one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    here = False
    if not dist.is_initialized():
        # Rank 0 validates alone while the others wait in a collective: allow for a long validation.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
        here = True
    return Dist(rank, world, local_rank, here)


def process_device(d: Dist, device: torch.device) -> torch.device:
    """The device this process trains on: its own GPU (LOCAL_RANK) in a CUDA job, else `device`."""
    if d.enabled and device.type == "cuda":
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return device


def close_distributed(d: Dist) -> None:
    """Leave the process group if this process joined it."""
    if d.initialized_here:
        dist.destroy_process_group()


def wrap(d: Dist, net: nn.Module, device: torch.device) -> nn.Module:
    """What a training step calls: the DistributedDataParallel wrapper in a job, else the model itself."""
    if not d.enabled:
        return net
    return nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,  # the only buffers are frozen BatchNorm statistics and constants
    )


def all_reduce(d: Dist, values: list[float], device: torch.device, op: str) -> list[float]:
    """max or mean of a few numbers over all processes (one small collective)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return (t / (1 if op == "max" else d.world)).tolist()


def gather(d: Dist, obj: object) -> list:
    """Every process's `obj`, in rank order."""
    if not d.enabled:
        return [obj]
    out: list = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(d: Dist, obj: object) -> object:
    """Rank 0's `obj` on every process."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_weights(d: Dist, net: nn.Module) -> None:
    """Give every process rank 0's weights (after rank 0 alone loaded a file)."""
    if d.enabled:
        with torch.no_grad():
            for t in net.state_dict().values():
                dist.broadcast(t, src=0)
