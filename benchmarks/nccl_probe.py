"""Two ranks under torchrun all-gather a tensor over NCCL, through pipeline.runtime.distributed, and check the result.

    python -m torch.distributed.run --standalone --nproc_per_node=2 benchmarks/nccl_probe.py [cuda | cuda:0]

With `cuda` each rank takes cuda:LOCAL_RANK; `cuda:0` puts both ranks on one GPU (NCCL may refuse that).
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from pipeline.runtime import distributed
from pipeline.runtime.device import pick_device

device = pick_device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
world = distributed.init(device, timeout_s=120)
assert world.backend == "nccl", world
# ranks hold different numbers of rows, as the last batch of an epoch may: rank r sends r + 1 rows of value r
mine = torch.full((world.rank + 1, 3), float(world.rank), device=device)
got = distributed.all_gather(mine)
want = torch.cat([torch.full((r + 1, 3), float(r), device=device) for r in range(world.world_size)])
assert torch.equal(got, want), got
distributed.barrier()
print(f"rank {world.rank}/{world.world_size} on {device} ({world.backend}): all_gather ok")
dist.destroy_process_group()
