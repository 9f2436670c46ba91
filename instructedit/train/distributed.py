"""Multi-process training (one process per GPU) through accelerate, without code changes.

accelerate's :class:`~accelerate.PartialState` joins the process group that ``accelerate launch``
or ``torchrun`` set up (nccl on GPUs, gloo on CPUs), and gives this process's rank, the number of
processes, its device and the main-process test; its collectives (``reduce``, ``broadcast``,
``broadcast_object_list``, ``wait_for_everyone``, ``split_between_processes``) do the rest.

Each process holds the frozen backbone (never wrapped, never copied) and a replica of the editor
network, renders its own slice of every step's examples, and the network's gradients are averaged
across processes after every backward pass (one all-reduce of the flattened gradients). The
replicas start from the main process's weights, and after every step take its running statistics
(the editor's input normalisation is updated by each forward pass, as DistributedDataParallel's
``broadcast_buffers`` does for batch norm), so every process holds the same network. Validation,
checkpoints and state files are the main process's; the logged training metrics are the means
over every process's examples. On a single process every collective is skipped.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast, broadcast_object_list, parse_flag_from_env, reduce
from torch import nn

log = logging.getLogger(__name__)

T = TypeVar("T")


class DistributedContext:
    """This process among the training processes (a single process: rank 0 of 1)."""

    def __init__(self, state: PartialState) -> None:
        self.state = state
        self.rank: int = state.process_index
        self.world_size: int = state.num_processes
        self.is_main: bool = state.is_main_process

    @classmethod
    def create(cls) -> DistributedContext:
        """Join the process group that ``accelerate launch``/``torchrun`` set up, if any.

        Without CUDA (or under ``accelerate launch --cpu``) the processes run on the CPU (gloo).
        """
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        state = PartialState(cpu=cpu)
        if state.num_processes > 1:
            log.info("distributed training: rank %d of %d on %s (%s)", state.process_index,
                     state.num_processes, state.device, state.backend)
        return cls(state)

    def device(self) -> str:
        """The device this process's backbone and network live on."""
        return "cpu" if self.state.device.type == "cpu" else str(self.state.device)

    def own_slice(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous share of ``items`` (all of them on a single process)."""
        with self.state.split_between_processes(list(items)) as mine:
            return list(mine)

    def average_gradients(self, network: nn.Module) -> None:
        """Replace every gradient of ``network`` by its mean across processes."""
        if self.world_size == 1:
            return
        grads = [p.grad for p in network.parameters() if p.grad is not None]
        mean = reduce(torch.cat([g.reshape(-1) for g in grads]), "mean")
        offset = 0
        for grad in grads:
            grad.copy_(mean[offset: offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    @torch.no_grad()
    def sync_from_main(self, network: nn.Module, parameters: bool = True) -> None:
        """Give every process the main process's buffers (and ``parameters``) of ``network``."""
        if self.world_size == 1:
            return
        tensors = list(network.buffers())
        if parameters:
            tensors += [p.data for p in network.parameters()]
        broadcast(tensors, from_process=0)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each of ``values`` averaged across processes."""
        if self.world_size == 1:
            return values
        stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=self.state.device)
        means = reduce(stacked, "mean")
        return dict(zip(values, means.tolist(), strict=True))

    def from_main(self, value: T) -> T:
        """The main process's ``value`` (picklable), on every process."""
        if self.world_size == 1:
            return value
        return broadcast_object_list([value], from_process=0)[0]

    def wait(self) -> None:
        """Barrier: every process reaches this point before any goes on."""
        if self.world_size > 1:
            self.state.wait_for_everyone()
