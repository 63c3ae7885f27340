"""One process's place in a ``torchrun`` job, and the collectives the offline tools use.

Training (``cosme train-teacher`` / ``train-student``), the memory build (``cosme build-memory``)
and :class:`~cosme_ros.anomaly.memory.MulMemBuilder` all run under the same context: gloo on the
CPU, NCCL on CUDA (one GPU per local rank), world size 1 without ``torchrun``. Every collective
here is a no-op in a single process, so the callers are written once for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "Distributed",
    "active",
    "world",
    "barrier",
    "local_slice",
    "all_reduce_sum",
    "all_reduce_sum_",
    "all_gather_rows",
    "all_gather_ints",
]


def active() -> bool:
    """Whether a process group is initialised (a ``torchrun`` job, or a test's)."""
    return dist.is_available() and dist.is_initialized()


def world() -> Tuple[int, int]:
    """(rank, world size) of the current group; (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def barrier() -> None:
    if active():
        dist.barrier()


def local_slice(global_batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank r's part of a global batch: the r-th contiguous chunk (rank order), maybe empty."""
    return np.array_split(global_batch, world_size)[rank]


def _comm_device() -> torch.device:
    """NCCL only moves CUDA tensors; gloo (and the rest) CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over all processes (differentiable); ``x`` itself when not distributed."""
    if not active() or dist.get_world_size() == 1:
        return x
    return _AllReduceSum.apply(x)


def all_reduce_sum_(t: Tensor) -> Tensor:
    """Sum ``t`` over all processes in place (through the backend's device); ``t`` unchanged
    when not distributed."""
    if not active():
        return t
    buf = t.to(_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not t:
        t.copy_(buf)
    return t


def all_gather_rows(rows: Tensor) -> Tensor:
    """Concatenate (n_r, C) tensors of every rank in rank order; n_r may differ between ranks."""
    if not active():
        return rows
    size = dist.get_world_size()
    dev = _comm_device()
    local = rows.to(dev)
    n = torch.tensor([local.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s.item()) for s in sizes]
    n_max = max(sizes_i)
    if n_max == 0:
        return rows[:0]
    padded = torch.zeros((n_max,) + tuple(local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: local.shape[0]] = local
    bufs = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(bufs, padded)
    return torch.cat([buf[:s] for buf, s in zip(bufs, sizes_i)]).to(rows.device)


def all_gather_ints(values: Sequence[int]) -> List[List[int]]:
    """Every rank's ``values`` (same length on all ranks), in rank order."""
    if not active():
        return [list(values)]
    dev = _comm_device()
    local = torch.tensor(list(values), dtype=torch.int64, device=dev)
    bufs = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(bufs, local)
    return [b.tolist() for b in bufs]


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (world size 1 without one)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: str = "auto") -> "Distributed":
        """Join the process group that ``torchrun`` describes in the environment (gloo on the
        CPU, NCCL on CUDA, one GPU per local rank) and pick this process's device. A group that
        is already initialised is used as it is (and left to whoever made it)."""
        from cosme_ros.runtime.networks import resolve_device

        dev = resolve_device(device)
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1 and not active():
            return cls(0, 1, dev)
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        here = not active()
        if here:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), dev, initialized_here=here)

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This process's contiguous part of a global batch."""
        return local_slice(indices, self.rank, self.world_size)

    def sum(self, x: Tensor) -> Tensor:
        """Sum over processes (differentiable)."""
        return all_reduce_sum(x) if self.enabled else x

    def share(self, local_mean: Tensor, local_count: int, global_count: int) -> Tensor:
        """This process's part of a global-batch mean, scaled for DDP's gradient average:
        ``local_mean · local_count · world / global_count`` (the plain mean in one process)."""
        if not self.enabled and local_count == global_count:
            return local_mean
        return local_mean * (local_count * self.world_size / global_count)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the group this context joined (one it found initialised stays)."""
        if self.initialized_here and active():
            dist.destroy_process_group()
