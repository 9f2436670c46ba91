"""Multi-process training through ``accelerate launch`` (one process per GPU), without code changes.

Each process holds the frozen backbone and a replica of the editor network, draws its own slice
of the training stream, and gradients are averaged across processes after every backward pass.
Validation, checkpoints and state files are written by the main process only. On a single
process (CPU or one GPU) every method is a no-op.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size of this process (1 process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def create(cls) -> DistributedContext:
        """Join the process group that ``accelerate launch``/``torchrun`` set up, if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        log.info("distributed training: rank %d of %d", dist.get_rank(), dist.get_world_size())
        return cls(dist.get_rank(), dist.get_world_size())

    def average_gradients(self, network: nn.Module) -> None:
        """All-reduce (mean) every gradient of ``network`` across processes."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        for param in network.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
                param.grad /= self.world_size

    def device(self) -> str:
        """The device this process trains on ("auto" on a single process)."""
        if self.world_size > 1 and torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        return "auto"

    def broadcast_flag(self, flag: bool) -> bool:
        """The main process's ``flag``, on every process."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        tensor = torch.tensor([1 if flag else 0],
                              device="cuda" if torch.cuda.is_available() else "cpu")
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def wait(self) -> None:
        """Barrier: every process reaches this point before any goes on."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
