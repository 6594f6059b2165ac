"""The contract every training objective keeps, and the registry the trainer finds them in by `--method` name.

A method is an nn.Module that holds the student (attribute `student`, the part that is exported) and whatever
else it trains or keeps (heads, momentum copies, queues, memories). Parameters with requires_grad=False
(momentum copies) are never optimised; every piece of state lives in parameters or buffers, so a checkpoint of
the state_dict resumes it exactly. Adding a method is one module in this package that defines a `Method`
subclass decorated with `@register`, and its test: the package imports every module in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# --amp -> storage dtype of the anchor queues (read only by matrix products, which autocast runs in this dtype)
QUEUE_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DataInfo:
    """What some methods need to know about the data: dataset size (memories indexed by dataset index), the
    training indices (where negatives are drawn), the class count, and the cached teacher rows (k-means)."""
    num_items: int
    train_indices: np.ndarray
    num_classes: int
    teacher_rows: torch.Tensor | None = None


@dataclass
class BuildContext:
    """Everything a method may be built from. hp: the training config as a dict (bank_size, tau, ema, crd_*, ...);
    resuming: a checkpoint will be loaded into the method, so state it holds is not computed here."""
    student: nn.Module
    teacher_dim: int | None
    data: DataInfo
    hp: dict
    generator: torch.Generator | None = None
    resuming: bool = False

    @property
    def queue_dtype(self) -> torch.dtype:
        return QUEUE_DTYPES[self.hp.get("amp", "none")]


class Method(nn.Module):
    """names          the `--method` names this class serves (a variant may be part of the name)
    needs_teacher  reads teacher embeddings (t): rows of the cache, or a live teacher
    needs_labels   reads labels (y)
    needs_cache    needs every training row of the cached teacher up front (so no live teacher)
    views          student views rendered per image
    """
    names: tuple[str, ...] = ()
    needs_teacher, needs_labels, needs_cache, views = True, False, False, 1

    @classmethod
    def build(cls, name: str, ctx: BuildContext) -> "Method":
        raise NotImplementedError

    def forward(self, views: list[torch.Tensor], t: torch.Tensor | None, y: torch.Tensor | None,
                idx: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """views: `views` float batches (B, 3, H, W); t: teacher embeddings (B, Dt) or None; y: labels; idx:
        dataset indices of the batch. Returns the loss and a dict of numbers to log."""
        raise NotImplementedError

    def after_step(self) -> None:
        """After the optimiser step: queue, memory and EMA updates (none by default)."""


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    for name in cls.names:
        if name in REGISTRY:
            raise ValueError(f"method name {name!r} is registered twice ({REGISTRY[name].__name__}, {cls.__name__})")
        REGISTRY[name] = cls
    return cls
