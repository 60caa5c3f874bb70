"""Data-parallel helpers over ``torch.distributed``; every one is a no-op on a single process.

Each process settles a contiguous shard of every batch; the shards' batch-mean gradients,
weighted by shard size, sum to the gradient of the whole batch, so a local rule trains
as on one process with the summed batch. Launch with ``torchrun --nproc_per_node N``.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1,
    ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); return whether training is distributed.

    The backend is gloo for CPU tensors and, where CUDA is available, nccl for CUDA ones.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return True


def close() -> None:
    """Leave the process group, if any (torch warns when a process exits without it)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_and_size() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0)."""
    return rank_and_size()[0] == 0


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``n`` held by ``rank`` of ``size``: contiguous, in rank order,
    covering ``0..n`` once, sizes differing by at most one (empty when ``n < size``)."""
    return n * rank // size, n * (rank + 1) // size


def shard(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This process's rows of each tensor (all of them on a single process)."""
    lo, hi = shard_bounds(len(tensors[0]), *rank_and_size())
    return tuple(t[lo:hi] for t in tensors)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over processes (``t`` itself on a single process), in place."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def average_grads(model: torch.nn.Module, weight: float) -> None:
    """Replace every ``p.grad`` by Σ_r weight_r · p.grad_r over processes r.

    With ``weight`` = shard size / batch size and batch-mean shard gradients this is the
    batch-mean gradient of the whole batch. A parameter the rule did not train on any
    process keeps ``grad = None``; one trained on some processes only (an empty shard
    trains nothing) counts zero from the others. One all-reduce of all gradients together,
    after one of the flags saying which parameters have one.
    """
    if not dist.is_initialized():
        return
    params = list(model.parameters())
    trained = all_sum(torch.tensor([float(p.grad is not None) for p in params], device=params[0].device))
    params = [p for p, t in zip(params, trained.tolist()) if t > 0]
    if not params:
        return
    flat = all_sum(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                              for p in params]) * weight)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p)


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process, so that replicas start equal
    whatever each process's seed (the all-reduced steps then keep them equal)."""
    if dist.is_initialized():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def gather(t: torch.Tensor) -> list[torch.Tensor]:
    """``t`` of every process, in rank order (``[t]`` on a single process); same shape everywhere."""
    if not dist.is_initialized():
        return [t]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return out
