"""The memory bank: FIFO queues of anchor embeddings that advance with ONE shared write pointer.

Row j of every queue in a bank describes the same image (CompRess-2q needs this: teacher row j and
momentum-student row j are one anchor). Queues and pointer are buffers, so they are saved and restored with
the module's state_dict - the original release kept the pointer in a plain attribute and lost it on resume.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from pipeline.runtime import distributed


class AnchorBank(nn.Module):
    """Named queues of K rows each, written together at one pointer.

    K: number of anchors (paper: 128,000). dims: queue name -> embedding width.
    Queues start as uniform noise in +-1/sqrt(D/3) (rows of about unit norm, not normalised), as in the paper.
    dtypes: queue name -> storage dtype (float32 when absent). A queue that is only ever read by matrix products
    under bf16/fp16 autocast can be stored in that dtype: autocast would cast a float32 queue to it before every
    product, so the product sees bitwise the same values, and the bank takes half the memory and no per-step
    cast (benchmarks/compress_loss.py). Rows are drawn and computed in float32 and rounded when stored.
    """

    def __init__(self, K: int, dims: dict[str, int], generator: torch.Generator | None = None,
                 dtypes: dict[str, torch.dtype] | None = None):
        super().__init__()
        self.K = K
        self.names = tuple(dims)
        dtypes = dtypes or {}
        for name, d in dims.items():
            bound = 1.0 / math.sqrt(d / 3)
            noise = (torch.rand(K, d, generator=generator) * 2 - 1) * bound
            self.register_buffer(f"queue_{name}", noise.to(dtypes.get(name, torch.float32)))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def read(self, name: str) -> torch.Tensor:
        """The queue as a detached view: no copy of the bank per step (the original cloned 1 GB each step)."""
        return getattr(self, f"queue_{name}").detach()

    @torch.no_grad()
    def enqueue(self, **rows: torch.Tensor) -> None:
        """Write one batch into every queue at the shared pointer (all ranks' rows, in rank order)."""
        if set(rows) != set(self.names):
            raise ValueError(f"enqueue needs exactly the queues {self.names}, got {tuple(rows)}")
        n = None
        for name, x in rows.items():
            x = distributed.all_gather(x.detach())  # every rank's rows, in rank order
            n = len(x) if n is None else n
            assert len(x) == n, "every queue advances by the same number of rows"
            slots = (self.ptr + torch.arange(n, device=x.device)) % self.K  # wraps when K % B != 0
            getattr(self, f"queue_{name}")[slots] = x.to(getattr(self, f"queue_{name}").dtype)
        self.ptr.copy_((self.ptr + n) % self.K)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy to be EMA-updated: it never receives gradients."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def batch_statistics_mode(module: nn.Module) -> nn.Module:
    """Eval mode except BatchNorm, which normalises by the batch's statistics: how the official CompRess code runs
    its momentum encoder. Nothing stochastic stays active (the backbones carry no dropout anyway, see
    pipeline/models/backbones.py), and BN keeps doing what the online network's BN does in training."""
    module.eval()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    return module


@torch.no_grad()
def momentum_update(online: nn.Module, twin: nn.Module, m: float) -> None:
    """twin <- m * twin + (1 - m) * online, over parameters only (BN buffers are not averaged)."""
    for p_twin, p in zip(twin.parameters(), online.parameters()):
        p_twin.mul_(m).add_(p.detach(), alpha=1 - m)
