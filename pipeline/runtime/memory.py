"""Memory budgets given as settings: "auto", a size such as 16G or 512M, or 0.

"auto" is a quarter of the memory the data would live in: the node's RAM, or the GPU's when it goes to a GPU,
leaving room for the model, the loader and the other processes of the node.
"""
from __future__ import annotations

import os
import re

import torch

from pipeline.runtime.errors import CompressError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str, option: str) -> int | None:
    """Bytes of a size setting ("16G", "512M", "1.5T", "1000000", "0"); None for "auto". A bad value is a
    CompressError naming `option` and the value."""
    text = str(value).strip().upper()
    if text == "AUTO":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)I?B?", text)
    if match is None:
        raise CompressError(f"{option} {value!r} is not a size: use auto, 0, or a number with an optional unit "
                            f"K, M, G or T (e.g. 16G)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def node_ram() -> int:
    """Physical RAM of this machine, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def budget(value: str, option: str, device: torch.device) -> int:
    """The budget in bytes: the size given, or for "auto" a quarter of `device`'s memory (the node's RAM for
    the CPU)."""
    size = parse_size(value, option)
    if size is not None:
        return size
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    return node_ram() // 4
