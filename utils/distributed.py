"""Several processes (GPUs, machines) with torch.distributed, launched by ``torchrun``.

Nothing here launches processes or moves bytes itself: torchrun starts the processes and sets
RANK / WORLD_SIZE / LOCAL_RANK, ``torch.distributed`` (NCCL on CUDA, gloo on CPU) carries the
data. A plain ``python prog.py`` sees WORLD_SIZE unset and runs as one process, exactly as
without this module.

    torchrun --nproc_per_node 4 test_few_shot.py ...            # 4 GPUs of one machine
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_endpoint HOST:29500 test_few_shot.py ...
"""
from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

import torch
import torch.distributed as dist

from utils.cli import DeviceError

# rank 0 computes metrics and writes pictures while the others wait at the next gather
TIMEOUT = timedelta(hours=6)
_objects_group = None  # gloo group for Python objects: NCCL would stage every pickled map on a GPU


@dataclass(frozen=True)
class Dist:
    """This process's place among the processes of a run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def tag(self) -> str:
        """A log prefix naming the process, empty for a single process."""
        return f"[rank {self.rank}/{self.world_size}] " if self.enabled else ""


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else do nothing.

    On CUDA each process takes the GPU of its local rank (``--device`` names the device type;
    torchrun decides the index) and the backend is NCCL, with a gloo group beside it for the
    Python objects gathered (maps and scores stay in host memory); on CPU the backend is gloo.
    Returns this process's place and the device it computes on.
    """
    global _objects_group
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise DeviceError(f"local rank {local} has no GPU: only {torch.cuda.device_count()} visible; "
                               f"start at most that many processes per machine (--nproc_per_node)")
        if device.index not in (None, local):
            warnings.warn(f"--device {device} under torchrun: each process takes the GPU of its local rank "
                          f"(this one cuda:{local}); limit the GPUs with CUDA_VISIBLE_DEVICES", stacklevel=2)
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        extra = {}
        if device.type == "cuda" and _takes_device_id():
            extra["device_id"] = device  # binds the NCCL communicator to this GPU at once (newer torch)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT, **extra)
        _objects_group = dist.new_group(backend="gloo", timeout=TIMEOUT) if device.type == "cuda" else None
    return Dist(rank, world, local), device


def _takes_device_id() -> bool:
    """Whether this torch's ``init_process_group`` has the ``device_id`` argument (it binds NCCL to
    one GPU; older versions bind it lazily on the first collective, which works the same)."""
    return "device_id" in inspect.signature(dist.init_process_group).parameters


def gather_to_main(obj: Any, d: Dist) -> list[Any] | None:
    """Every process's ``obj`` on rank 0, in rank order (None on the others); one process: [obj]."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size if d.is_main else None
    dist.gather_object(obj, out, dst=0, group=_objects_group)
    return out


def broadcast_from_main(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_objects_group)
    return box[0]


def reduce_sum(value: torch.Tensor, d: Dist) -> float:
    """The sum of a scalar over every process (the value itself for one process)."""
    if d.enabled:
        value = value.clone()
        dist.all_reduce(value)
    return float(value)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Unit:
    """Test images ``start:stop`` (meta.json order) of class ``cls``: one process's piece of work."""

    cls: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_units(sizes: dict[str, int], world: int, batch_size: int) -> list[list[Unit]]:
    """Share the test images of every class among ``world`` processes, classes first.

    sizes: images per class, in the order results are reported. A class of more than a fair
    share (total / world) is cut into contiguous slices of about a share each, at multiples of
    ``batch_size`` so every batch is one a single process would score too; the other classes stay
    whole. Units go, largest first, to the process with the fewest images so far (ties: the lower
    rank). Returns each rank's units in class order. One process gets every class whole.
    """
    if world < 1 or batch_size < 1:
        raise ValueError(f"world size and batch size must be >= 1, got {world}, {batch_size}")
    total = sum(sizes.values())
    share = max(batch_size, -(-total // world))
    units: list[Unit] = []
    for cls, n in sizes.items():
        if n <= share or world == 1:
            units.append(Unit(cls, 0, n))
            continue
        pieces = -(-n // share)
        step = -(-(-(-n // pieces)) // batch_size) * batch_size  # ceil(n / pieces) up to a batch multiple
        units += [Unit(cls, s, min(s + step, n)) for s in range(0, n, step)]
    load = [0] * world
    plan: list[list[Unit]] = [[] for _ in range(world)]
    for unit in sorted(units, key=lambda u: -u.size):
        r = min(range(world), key=lambda i: (load[i], i))
        plan[r].append(unit)
        load[r] += unit.size
    order = {cls: i for i, cls in enumerate(sizes)}
    return [sorted(p, key=lambda u: (order[u.cls], u.start)) for p in plan]


def shard(items: Sequence, d: Dist, batch_size: int) -> range:
    """The indices of ``items`` this process handles: contiguous blocks of whole batches, one
    per process in rank order (the whole range for one process)."""
    n = len(items)
    if not d.enabled:
        return range(n)
    batches = -(-n // batch_size)
    per = -(-batches // d.world_size)
    start = min(n, d.rank * per * batch_size)
    return range(start, min(n, start + per * batch_size))
