"""Run a frozen backbone over an image store in contiguous blocks: the one forward pass that both teacher
extraction and student evaluation use."""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from pipeline.augment import center_crops, render
from pipeline.imagestore import ImageStore


@torch.no_grad()
def embed_blocks(backbone: torch.nn.Module, store: ImageStore, preprocessing: dict, start: int, stop: int,
                 batch_size: int, device: torch.device, crops: torch.Tensor | None = None,
                 autocast: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (row, l2-normalised float32 embeddings on the CPU) for rows [start, stop), in order.

    `crops` (stop - start, 5) overrides the centre crop (a multi-view cache passes its stored views).
    """
    backbone.eval()
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        images = torch.from_numpy(store.read(lo, hi)).to(device, non_blocking=True)
        view = center_crops(hi - lo, preprocessing["crop_fraction"]) if crops is None else crops[lo - start:hi - start]
        x = render(images, view, preprocessing["input_size"], preprocessing["mean"], preprocessing["std"])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            z = backbone(x)
        yield lo, F.normalize(z.float(), dim=1).cpu()


def embed_all(backbone, store, preprocessing, batch_size=256, device=torch.device("cpu"), **kw) -> torch.Tensor:
    """(N, D) l2-normalised embeddings of every row of the store."""
    parts = [z for _, z in embed_blocks(backbone, store, preprocessing, 0, store.n, batch_size, device, **kw)]
    return torch.cat(parts)
