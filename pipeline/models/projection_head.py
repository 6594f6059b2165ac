"""Rebuild a checkpoint's projection head (for `--embedding head`) from its weights alone.

MoCo v2 (`fc.0` Linear, `fc.1` ReLU, `fc.2` Linear), MoCo v1 (one Linear) and SwAV (`0` Linear, `1` BatchNorm1d,
`2` ReLU, `3` Linear) all store an nn.Sequential whose parameter-free positions are ReLUs. So the layers can be
read off the keys: a 2-d `weight` is a Linear, a `weight` with `running_mean` beside it is a BatchNorm1d, and an
index with no parameters is a ReLU. The head is then loaded strictly like the backbone.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.runtime.errors import CompressError


def build_head(sd: dict[str, torch.Tensor]) -> nn.Sequential:
    """An nn.Sequential with the layout of `sd` ("<index>.<param>" keys), weights not yet loaded."""
    try:
        indices = sorted({int(k.split(".", 1)[0]) for k in sd})
    except ValueError:
        raise CompressError(f"projection head keys are not an nn.Sequential layout: {sorted(sd)[:5]}") from None
    layers: list[nn.Module] = []
    for i in range(indices[-1] + 1):
        weight = sd.get(f"{i}.weight")
        if weight is None:
            layers.append(nn.ReLU())
        elif weight.dim() == 2:
            layers.append(nn.Linear(weight.shape[1], weight.shape[0], bias=f"{i}.bias" in sd))
        elif weight.dim() == 1 and f"{i}.running_mean" in sd:
            layers.append(nn.BatchNorm1d(weight.shape[0]))
        else:
            raise CompressError(f"projection head layer {i} (weight of shape {tuple(weight.shape)}) is neither a "
                                f"Linear nor a BatchNorm1d; use --embedding backbone")
    return nn.Sequential(*layers)


def out_features(head: nn.Sequential) -> int:
    return next(m.out_features for m in reversed(head) if isinstance(m, nn.Linear))
