"""Process-group setup and the few collectives the trainer needs (torchrun, Ray Train or a single process)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from core.device import resolve_device
from train.config import DistributedConfig


@dataclass
class DistInfo:
    rank: int  # global rank
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True when setup() created the process group (and cleanup() must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(cfg: DistributedConfig) -> DistInfo:
    """Join the process group: reuse one that exists (Ray Train creates it), else init from torchrun's env."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # auto and a bare "cuda" mean this process's GPU; an explicit one (e.g. "cuda:3" from Ray Train) is kept
    device = resolve_device(cfg.device, local_rank=local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return DistInfo(rank, world, local_rank, device, owns)


def cleanup(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if info.world_size > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce (mean) the gradients of ``params`` in one flat bucket per dtype.

    Models expose ``generator_step``/``discriminator_step`` rather than a single ``forward``, and both steps
    share sub-networks, so DDP's per-forward hooks do not fit; one explicit all-reduce per optimizer step after
    gradient accumulation is the same arithmetic with one collective.
    """
    if info.world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = torch._utils._flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat.div_(info.world_size)
        for g, synced in zip(group, torch._utils._unflatten_dense_tensors(flat, group)):
            g.copy_(synced)


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if info.world_size == 1:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_across_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average scalar logs over ranks (same keys on every rank)."""
    if info.world_size == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}
