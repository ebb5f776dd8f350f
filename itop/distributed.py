"""Distributed consistency for topology decisions; a no-op without a process group.

Under data parallelism every rank must hold the same masks. Rank 0 makes each topology
decision and broadcasts it (initial masks once, then the dropped and grown indices at each
update), so ranks agree even if their local gradients, random streams or tie-breaking differ.
Gradient-based criteria see the all-reduced gradient when the model is wrapped in
``DistributedDataParallel``.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_sum_",
    "barrier",
    "broadcast_",
    "init_from_env",
    "is_distributed",
    "local_rank",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised with several ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _comm_device(t: torch.Tensor) -> torch.device:
    # NCCL needs CUDA tensors; gloo takes CPU tensors.
    backend = dist.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with rank ``src``'s copy (in place); identity when not distributed."""
    if not is_distributed():
        return tensor
    dev = _comm_device(tensor)
    buf = tensor if tensor.device == dev and tensor.dtype != torch.bool else None
    if buf is None:
        buf = tensor.to(device=dev, dtype=torch.uint8 if tensor.dtype == torch.bool else tensor.dtype)
    dist.broadcast(buf, src)
    if buf is not tensor:
        tensor.copy_(buf.to(device=tensor.device, dtype=tensor.dtype))
    return tensor


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place; identity when not distributed."""
    if not is_distributed():
        return tensor
    dev = _comm_device(tensor)
    buf = tensor if tensor.device == dev else tensor.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not tensor:
        tensor.copy_(buf.to(tensor.device))
    return tensor


def barrier() -> None:
    """Wait for every rank; no-op when not distributed."""
    if is_distributed():
        dist.barrier()


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK`` from torchrun; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(backend: str = "auto", timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment, if any.

    Does nothing when ``WORLD_SIZE`` is unset or 1, or a group already exists. ``auto`` picks
    NCCL when CUDA is available and gloo otherwise.

    Returns:
        True when this call created the process group.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True
