"""Checks on the tensors of a saved file (checkpoint, model): a digest of all of them, and the first non-finite.

Both walk nested dicts, lists and tuples in a fixed order (dict keys sorted), so the digest of what was saved
equals the digest of what is loaded. The digest covers each tensor's name, dtype, shape and bytes: a flipped
byte anywhere in the tensor data changes it (torch.load does not check its archive's CRCs).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch


def _tensors(obj, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}[{i}]")


def tensors_sha256(obj) -> str:
    h = hashlib.sha256()
    for name, t in _tensors(obj):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def first_non_finite(obj) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf, or None when every value is finite."""
    for name, t in _tensors(obj):
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            return name.lstrip("/")
    return None
