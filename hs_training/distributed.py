"""Process group set-up for ``torchrun`` and the deterministic, resumable data order.

One process (``python -m hs_training …``) and many (``torchrun --nproc-per-node 8 -m
hs_training …``, any number of nodes) run the same code: torchrun sets ``RANK``, ``LOCAL_RANK``
and ``WORLD_SIZE``, and the process group uses NCCL on GPUs and Gloo on the CPU.

Data order (:class:`ResumableDistributedSampler`): each epoch is a seeded permutation of the dataset
(``torch.randperm`` with seed + epoch, as ``DistributedSampler``), cut to whole GLOBAL batches; process r of
W takes every W-th index starting at r, as ``DistributedSampler`` does. So global batch s of an epoch is the
same set of samples whatever W is, and a run resumed at step s of an epoch continues with batch s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistributedContext:
    """Join the torchrun process group when there is one; choose this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda, but PyTorch sees no CUDA GPU here; use --device cpu or auto")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank, local_rank, world_size, chosen)


def teardown(context: DistributedContext) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.distributed:
        dist.barrier()


def mean_over_processes(values: dict[str, float], context: DistributedContext) -> dict[str, float]:
    """The mean of each scalar over all processes (the values as they are with one process)."""
    if not context.distributed or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return {k: float(v) / context.world_size for k, v in zip(keys, tensor.tolist(), strict=True)}


def epoch_order(dataset_size: int, global_batch: int, seed: int, epoch: int) -> torch.Tensor:
    """The indices of one epoch in training order, cut to whole global batches."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(dataset_size, generator=generator)
    return order[: (dataset_size // global_batch) * global_batch]


class ResumableDistributedSampler(Sampler[int]):
    """This process's share of each epoch, starting at ``start_step`` (global batches already done)."""

    def __init__(self, dataset_size: int, global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise ValueError(
                f"batch_size {global_batch} is the global batch and must divide evenly over {world_size} processes"
            )
        if dataset_size < global_batch:
            raise ValueError(f"the dataset has {dataset_size} samples, fewer than one batch of {global_batch}")
        self.dataset_size, self.global_batch = dataset_size, global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.local_batch = global_batch // world_size
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset_size // self.global_batch

    def set_position(self, epoch: int, start_step: int) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.dataset_size, self.global_batch, self.seed, self.epoch)
        mine = order[self.rank :: self.world_size]
        return iter(mine[self.start_step * self.local_batch :].tolist())

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.local_batch
