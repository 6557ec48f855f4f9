"""Data-parallel training with Hugging Face Accelerate: the same loop on one process or many.

Launched as ``accelerate launch --multi_gpu --num_processes N -m sdlearn train NAME ...`` (or ``torchrun
--nproc_per_node N -m sdlearn ...``), every process runs the whole loop. On a machine without a GPU the same command
starts N CPU processes that talk over gloo (Accelerate 1.x's ``--cpu`` flag alone starts one process: leave it out).
``Distributed`` is the little each process must know about the others:

- the global batch of ``batch_size`` images is cut into N equal slices, one per process (``shard``): every
  process draws the same seeded permutation, so within an epoch no image is seen twice;
- the random draws of a step (t, eps, condition dropout) are made for the whole global batch on every process,
  each taking its slice, so N processes compute what one process would (up to float summation order);
- DistributedDataParallel (Li et al. 2020), set up by ``Accelerator.prepare``, averages the gradients: with equal
  slices the mean of the slices' mean-losses is the global mean loss, so the update equals one process's;
- the main process alone writes checkpoints, keeps the EMA and draws the progress bar; the wall clock and the
  stop signal are the main process's, shared every step, so all processes stop at the same step.

One process (no launcher, ``WORLD_SIZE`` unset or 1) needs no Accelerate at all: every method is then a no-op.
"""

from __future__ import annotations

import os

import torch


def launched_processes() -> int:
    """How many processes a launcher (accelerate launch, torchrun) started: its WORLD_SIZE, 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class Distributed:
    """Rank, world size and the few collective operations the training loop needs."""

    def __init__(self, mixed_precision: str | None = None):
        self.accelerator = None
        self.rank, self.world_size = 0, 1
        if launched_processes() > 1:
            from accelerate import Accelerator

            # mixed precision comes from Accelerate's config (or --mixed_precision), as the launcher exports it.
            # Without a GPU the processes talk over gloo on the CPU: Accelerate has to be told (cpu=True).
            self.accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
            self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        return self.accelerator.device if self.accelerator is not None else None

    @property
    def autocast_bf16(self) -> bool:
        """Accelerate's config asks for bf16 mixed precision."""
        return self.accelerator is not None and self.accelerator.mixed_precision == "bf16"

    def prepare(self, model: torch.nn.Module, optimizer):
        """(the model to call, the optimizer): wrapped in DistributedDataParallel when there are several processes."""
        if self.accelerator is None:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The plain model inside a DDP wrapper (its state_dict keys have no ``module.`` prefix)."""
        return model if self.accelerator is None else self.accelerator.unwrap_model(model)

    def local_batch_size(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} is the global batch and must divide evenly among "
                             f"{self.world_size} processes; pick a multiple of {self.world_size}.")
        return batch_size // self.world_size

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This process's slice of the global batch: items [rank * B/N, (rank + 1) * B/N)."""
        n = len(index) // self.world_size
        return index[self.rank * n : (self.rank + 1) * n]

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over processes (the logged loss: the global batch's mean loss)."""
        if self.accelerator is None:
            return value
        return self.accelerator.reduce(value.detach().clone(), reduction="mean")

    def main_clock(self, seconds: float, time_up: bool, signalled: bool) -> tuple[float, bool, bool]:
        """(the main process's training seconds, time up on it, a signal on any process): the same on every process."""
        if self.accelerator is None:
            return seconds, time_up, signalled
        import torch.distributed as dist

        if not self.is_main:
            seconds, time_up = 0.0, False  # the main process's clock decides
        shared = torch.tensor([seconds, float(time_up), float(signalled)], dtype=torch.float64,
                              device=self.accelerator.device)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        return float(shared[0]), bool(shared[1] > 0), bool(shared[2] > 0)

    def wait(self) -> None:
        """Every process waits here until all arrive (e.g. until the main one has written a checkpoint)."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
