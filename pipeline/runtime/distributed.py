"""Process-group helpers for `torchrun`: one code path for 1 process (no torchrun, every helper a no-op) and
for N processes (gloo on CPU, NCCL on GPU).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init` reads them once. Nothing here
carries gradient: `all_gather` is for queues and metrics, not for losses.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cache.errors import CacheError
from pipeline.runtime.errors import CompressError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None at world size 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> World:
    """The world torchrun describes in the environment (1 process when it is absent)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def init(device: torch.device | str = "cpu", timeout_s: float = 1800) -> World:
    """Join the process group when WORLD_SIZE > 1 (once; later calls return the same world)."""
    world = env_world()
    if world.world_size == 1:
        return world
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            # the device decided by the stage (cuda:LOCAL_RANK unless the user named one)
            torch.cuda.set_device(device if device.index is not None else world.local_rank)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return World(world.rank, world.world_size, world.local_rank, dist.get_backend())


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if active() else 0


def barrier() -> None:
    if active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(obj=None, src: int = 0):
    """`obj` from rank `src` on every rank (e.g. an error message, so all ranks stop together)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order (a one-element list at world size 1)."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def stop_together():
    """Run a block on every rank; a CompressError, CacheError or OSError raised in it on any rank stops every
    rank, each with the first failing rank's message (named), instead of leaving the others waiting at the next
    collective. At world size 1 the error passes unchanged."""
    problem = None
    try:
        yield
    except (CompressError, CacheError, OSError) as e:
        if not active():
            raise
        problem = f"rank {dist.get_rank()}: {e}"
    first = next((p for p in all_gather_object(problem) if p), None)
    if first is not None:
        raise CompressError(first)


def require_same(values: dict, advice: str) -> None:
    """Stop every rank (CompressError, the same message on each) unless every rank's `values` (name -> value)
    equal rank 0's; the message names the first rank and value that differ, with both."""
    every = all_gather_object(values)
    for rank, mine in enumerate(every):
        for name, value in mine.items():
            if value != every[0].get(name):
                raise CompressError(f"rank {rank} has {name} {_short(value)} but rank 0 has "
                                    f"{_short(every[0].get(name))}; {advice}")


def _short(value) -> str:
    """A digest as the rest of the project shows one (its first 12 hex digits); anything else as it is."""
    return str(value)[:12] if re.fullmatch(r"[0-9a-f]{32,}", str(value)) else str(value)


def node_leader_first(work: Callable[[bool], object]):
    """`work(True)` on each node's first process (LOCAL_RANK 0), then, once every leader is done, `work(False)` on
    the others: one process per node builds a file that the others then open. Errors stop every rank together."""
    leader = env_world().local_rank == 0
    result = None
    with stop_together():
        if leader:
            result = work(True)
    with stop_together():
        if not leader:
            result = work(False)
    return result


@torch.no_grad()
def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `x` in place with rank `src`'s (same shape and dtype on every rank); no gradient flows.
    NCCL carries only device tensors, so the values travel through the current GPU there."""
    if not active():
        return x
    carrier = x.to(f"cuda:{torch.cuda.current_device()}") if dist.get_backend() == "nccl" else x
    dist.broadcast(carrier, src=src)
    if carrier is not x:
        x.copy_(carrier)
    return x


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `x` along dim 0, in rank order; no gradient flows back.

    Ranks may hold different numbers of rows (the trailing dims must agree): sizes are exchanged first and the
    shorter tensors padded, so the result holds exactly sum(rows) rows.
    """
    if not active():
        return x.detach()
    x = x.detach().contiguous()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes),) + x.shape[1:])
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
