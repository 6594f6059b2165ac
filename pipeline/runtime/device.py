"""Decide the device once, at the top of a stage; everything below receives it."""
from __future__ import annotations

import torch

from pipeline.runtime.errors import CompressError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> the local CUDA device when there is one (LOCAL_RANK under torchrun), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CompressError(f"device {name!r} requested but no CUDA GPU is visible; use --device cpu")
        if name == "cuda":
            import os
            name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    elif name != "cpu":
        raise CompressError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


# --amp name -> autocast dtype (None: full precision)
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_amp(name: str, device: torch.device) -> str:
    """'auto' -> bf16 on a GPU (its tensor cores), none on the CPU (bf16 autocast is slower there); else `name`."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "none"
    if name not in AMP_DTYPES:
        raise CompressError(f"unknown --amp {name!r}; use auto, none, bf16 or fp16")
    return name
