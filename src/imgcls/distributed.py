"""Several processes under torchrun: each computes the gradient of its part of every global batch, and the
gradients are summed (engine.py), so all make the same update. We join torchrun's group (NCCL on GPUs, gloo on CPUs);
outside torchrun each function is a no-op. torch is imported inside them: exit_process ends even `--help`."""

from __future__ import annotations

import os
import sys
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` processes."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, count: int) -> slice:
        """Its contiguous share of `count` items; shares differ by at most one, none is padded."""
        return slice(count * self.rank // self.world, count * (self.rank + 1) // self.world)


def launched_by_torchrun() -> bool:
    """True in a process torchrun started for a world of several; a UserError for a half-set environment (WORLD_SIZE
    or RANK left over from another job), which would wait for processes that never come, or keep this one silent."""
    from imgcls.errors import UserError

    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    if not (world.isdigit() and rank.isdigit()):
        raise UserError(f"WORLD_SIZE={world[:20]!r} and RANK={rank[:20]!r} must be whole numbers; unset them, or "
                        f"launch with torchrun")
    if int(world) > 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        raise UserError(f"WORLD_SIZE={world} is set but this process was not started by torchrun; unset WORLD_SIZE "
                        f"(and RANK, MASTER_ADDR) to run as one process, or launch with torchrun --nproc-per-node N")
    if int(world) <= 1 and int(rank) != 0:
        raise UserError(f"RANK={rank} is set without WORLD_SIZE above 1 (a leftover from another job?); unset RANK "
                        f"to run as one process, or launch with torchrun")
    return int(world) > 1


def is_main_process() -> bool:
    """Whether this process speaks for the run: the only one, or torchrun's rank 0."""
    return not launched_by_torchrun() or os.environ["RANK"] == "0"


def setup(device: torch.device) -> tuple[Shard, torch.device]:
    """Join torchrun's process group when there is one; returns this process's shard and device."""
    import torch
    import torch.distributed as dist

    if not launched_by_torchrun():
        return Shard(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size()), device


def active() -> bool:
    return _joined() is not None


def _joined():
    """torch.distributed once this process has joined a process group, else None (not imported: none joined)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def barrier() -> None:
    if dist := _joined():
        dist.barrier()


def sum_across(*tensors: torch.Tensor) -> None:
    """Sum each tensor over all processes, in place (gradients, metrics, running sums)."""
    if dist := _joined():
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process if it is true on any: all stop at the same step."""
    if not (dist := _joined()):
        return flag
    import torch

    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def teardown() -> None:
    if dist := _joined():
        dist.destroy_process_group()


def from_main(value):
    """The main process's value of `value`, on every process (a run folder name, say)."""
    if not (dist := _joined()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def exit_process(code: int) -> NoReturn:
    """Exit without finalizing the interpreter, once every file is closed: tearing torch down costs up to a second,
    and under torchrun can abort (docs/development.md). A normal exit where a profiler, a coverage tracer or child
    processes still need one."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # a closed pipe (imgcls ... | head), a closed stream: nothing to keep
            stream.flush()
    import multiprocessing

    world = os.environ.get("WORLD_SIZE", "1")  # torchrun's processes (a WORLD_SIZE that is no number: not ours)
    if (world.isdigit() and int(world) > 1) or not (sys.getprofile() or sys.gettrace()
                                                     or multiprocessing.active_children()):
        os._exit(code)
    sys.exit(code)
