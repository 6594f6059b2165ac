"""Run a frozen backbone over an image store in contiguous blocks: the one forward pass that both teacher
extraction and student evaluation use, on the evaluation view (pipeline.data.eval_view) unless crops are given."""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from pipeline.data.augment import render
from pipeline.data.eval_view import eval_view
from pipeline.data.imagestore import ImageStore


@torch.no_grad()
def embed_blocks(backbone: torch.nn.Module, store: ImageStore, preprocessing: dict, start: int, stop: int,
                 batch_size: int, device: torch.device, crops: torch.Tensor | None = None,
                 amp_dtype: torch.dtype | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (row, l2-normalised float32 embeddings on the CPU) for rows [start, stop), in order; the forward runs
    under autocast to `amp_dtype` when one is given (bf16 / fp16 on a GPU).

    Without `crops` every image goes through `eval_view` (resize the short side, centre crop); `crops`
    (stop - start, 5) renders those crops instead (the augmented views 1.. of a multi-view cache). Rows of a
    letterboxed store (`store.regions()`) are viewed inside their valid region, never their padding.
    """
    backbone.eval()
    regions = store.regions() if hasattr(store, "regions") else None
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        images = torch.from_numpy(store.read(lo, hi)).to(device, non_blocking=True)
        r = None if regions is None else regions[lo:hi]
        if crops is None:
            x = eval_view(images, preprocessing, regions=r)
        else:
            x = render(images, crops[lo - start:hi - start], preprocessing["input_size"], preprocessing["mean"],
                       preprocessing["std"], regions=r)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            z = backbone(x)
        yield lo, F.normalize(z.float(), dim=1).cpu()

