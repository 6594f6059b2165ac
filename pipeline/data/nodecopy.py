"""One in-RAM copy of the training rows per node, shared by the node's ranks.

Local rank 0 fills the copy once (checked rows from the store) in a file under /dev/shm (tmpfs, i.e. RAM);
the node's other ranks map that file read-only; once every rank has mapped it the name is removed, so the
memory lives exactly as long as the last mapping and nothing stays in /dev/shm after the run. A single
process on a node keeps a private array instead. Every rank learns every other's outcome in one exchange:
a damaged block stops all ranks with its message, and a node without room sends every rank to the paged path
(the read mode decides the order of an epoch, so all ranks must agree on it).
"""
from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.storereader import aligned_empty
from pipeline.runtime.errors import CompressError


def _alone(obj) -> list:
    return [obj]


@dataclass(frozen=True)
class Node:
    """Where this process sits: its global rank, its rank on the node and the node's process count, and
    `all_gather(obj) -> [every rank's obj, in rank order]` (torch.distributed under torchrun). torchrun numbers
    a node's processes consecutively, so this node's local rank 0 is global rank `rank - local_rank`."""
    rank: int = 0
    local_rank: int = 0
    local_size: int = 1
    all_gather: Callable[[object], list] = field(default=_alone, compare=False)
    shm: Path = Path("/dev/shm")  # where the shared copy lives (tmpfs)

    @property
    def first(self) -> int:
        return self.rank - self.local_rank

    def agree(self, value):
        """Rank 0's `value`, on every rank."""
        return self.all_gather(value)[0]


def node_of(world) -> Node:
    """The Node of a pipeline.runtime.distributed.World (LOCAL_WORLD_SIZE from torchrun's environment)."""
    from pipeline.runtime import distributed
    if not distributed.active():
        return Node()
    return Node(world.rank, world.local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                distributed.all_gather_object)


def node_copy(node: Node, shape: tuple, fill: Callable[[np.ndarray], None], tag: str) -> np.ndarray | None:
    """The node's uint8 array of `shape`, filled once by `fill(array)` on local rank 0 (read-only elsewhere),
    or None on every rank when some node has no room for it in `node.shm`. `tag` names the file (the store's
    fingerprint), for whoever looks at /dev/shm meanwhile."""
    nbytes = int(np.prod(shape))
    array, path, status = None, None, None
    if node.local_rank == 0:
        try:
            if node.local_size == 1:
                array = aligned_empty(shape)  # uncached reads fill it in place (storereader.py)
            else:
                path, array = _shm_file(node.shm, tag, nbytes, shape)
            if array is not None:
                fill(array)
            else:
                status = ("room", f"{node.shm} has less than {nbytes / 2**30:.1f} GiB free")
        except CompressError as e:
            status = ("error", str(e))
        except BaseException:
            _remove(path)
            raise
    outcomes = node.all_gather((status, path))
    errors = [s[1] for s, _ in outcomes if s is not None and s[0] == "error"]
    no_room = any(s is not None for s, _ in outcomes)
    if errors or no_room:
        _remove(path)
        if errors:
            raise CompressError(errors[0])
        if status is not None:
            print(f"loader: {status[1]} for the training images; reading pages from disk instead", file=sys.stderr)
        return None
    if node.local_rank != 0:
        array = np.memmap(outcomes[node.first][1], dtype=np.uint8, mode="r", shape=shape)
    node.all_gather(None)  # every rank has mapped it: the name can go, the memory stays until the last unmap
    _remove(path)
    return array


def _shm_file(shm: Path, tag: str, nbytes: int, shape: tuple):
    """(path, writable mapping) of a new file of `nbytes` in `shm`, its pages reserved; (None, None) without
    room. posix_fallocate makes a full tmpfs fail here with ENOSPC rather than with SIGBUS on a later write."""
    if not shm.is_dir():
        return None, None
    fd, name = tempfile.mkstemp(prefix=f"compress-cache-{tag[:16]}-", suffix=".u8", dir=shm)
    try:
        os.posix_fallocate(fd, 0, max(1, nbytes))
    except OSError:
        os.close(fd)
        _remove(name)
        return None, None
    os.close(fd)
    return name, np.memmap(name, dtype=np.uint8, mode="r+", shape=shape)


def _remove(path) -> None:
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
