"""Training objectives, one module each; the trainer picks one by name (`--method`).

Each method is an nn.Module holding the student (attribute `student`, the part that is exported) and whatever
else it trains or keeps (heads, momentum copies, queues). It declares `needs_teacher`, `needs_labels` and
`views` (student views per image), computes `forward(views, t, y) -> (loss, logs)`, and does its queue and EMA
updates in `after_step()`. Parameters with requires_grad=False (momentum copies) are never optimised.
"""
from __future__ import annotations

from torch import nn

from pipeline.errors import CompressError

# name -> whether it reads teacher embeddings (the cache)
METHODS = {"compress-2q": True, "compress-1q": True, "compress-2q-nomomentum": True,
           "moco": False, "supervised": False}


def method_needs_teacher(name: str) -> bool:
    if name not in METHODS:
        raise CompressError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, student: nn.Module, *, teacher_dim: int | None, num_classes: int, hp: dict,
                 generator=None) -> nn.Module:
    """hp: the method's hyper-parameters from the training config (bank_size, tau, ema, ...)."""
    if name.startswith("compress-"):
        from pipeline.methods.compress import CompRess
        return CompRess(student, teacher_dim, variant=name.removeprefix("compress-"), K=hp["bank_size"],
                        tau=hp["tau"], m=hp["ema"], generator=generator)
    if name == "moco":
        from pipeline.methods.moco import MoCo
        return MoCo(student, dim=hp["moco_dim"], K=hp["bank_size"], tau=hp["tau"], m=hp["ema"],
                    generator=generator)
    if name == "supervised":
        from pipeline.methods.supervised import Supervised
        return Supervised(student, num_classes)
    raise CompressError(f"unknown method {name!r}; use one of {', '.join(METHODS)}")
