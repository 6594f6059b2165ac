"""The evaluation view: how an image becomes a network input when it is embedded rather than trained on.

The official releases evaluate with torchvision's transform `Resize(S) -> CenterCrop(input_size)`, S =
input_size / crop_fraction (224 px at crop_fraction 0.875: Resize(256) -> CenterCrop(224)), the short side
resized, antialiased, then rounded to uint8 (their PIL image), then ToTensor and Normalize. `eval_view` is that
transform, batched on the device. Teacher extraction (view 0 of the cache) and `eval` both call it, through
`pipeline.evaluation.embed`, so the teacher rows in a cache and the features `eval` computes for the same network come
from the same pixels.

`preprocessing["resize"]` names the filter of the release: "bilinear" (torchvision's default, used by the
MoCo, SwAV and SimCLR-in-PyTorch evaluations and by this project's own models) or "bicubic" (DINO, DINOv2).
A model file written before the key existed is read as bilinear.

On a letterboxed store (`prepare --fit letterbox`) the view is taken from each row's valid region, the photo
without its padding: Resize(S) -> CenterCrop of the region, as the release's transform does on the photo.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.runtime.errors import CompressError

RESIZE_FILTERS = ("bilinear", "bicubic")
DEFAULT_RESIZE = "bilinear"
IMAGENET_INPUT = 224  # from this input size on, a model is evaluated like an ImageNet model
IMAGENET_CROP = 0.875  # 224 / 256


def default_crop_fraction(input_size: int) -> float:
    """0.875 at ImageNet resolution (Resize(256) -> CenterCrop(224)); 1.0 for small inputs (digits, CIFAR,
    Fashion-MNIST are evaluated whole, as their usual protocols do)."""
    return IMAGENET_CROP if input_size >= IMAGENET_INPUT else 1.0


def resize_filter(preprocessing: dict) -> str:
    name = preprocessing.get("resize", DEFAULT_RESIZE)
    if name not in RESIZE_FILTERS:
        raise CompressError(f"unknown resize filter {name!r} in the preprocessing; use one of "
                            f"{', '.join(RESIZE_FILTERS)}")
    return name


def resize_side(preprocessing: dict) -> int:
    """S, the short side before the centre crop: floor(input_size / crop_fraction) (256 for 224 at 0.875)."""
    size, fraction = int(preprocessing["input_size"]), float(preprocessing["crop_fraction"])
    if not 0 < fraction <= 1:
        raise CompressError(f"crop_fraction {fraction} in the preprocessing must be in (0, 1]")
    return max(size, math.floor(size / fraction + 1e-6))  # the epsilon keeps 224 / 0.875 at 256, not 255


def resized_hw(height: int, width: int, side: int) -> tuple[int, int]:
    """torchvision's Resize(side) output size: the short side becomes `side`, the long one keeps the aspect."""
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


def eval_view(images: torch.Tensor, preprocessing: dict, regions=None) -> torch.Tensor:
    """uint8 (N, H, W, C) on any device -> normalised float (N, 3, input_size, input_size) on that device.

    Grey images stay one channel until the normalisation broadcasts them to three (as `augment.render`).
    `regions` (N, 4) (y0, x0, h, w) px, a letterboxed store's valid regions: each row's region is resized and
    centre-cropped instead of the whole stored square, so the padding is never part of the view (rows sharing
    a region size go through one batched resize). None: the whole image.
    """
    size, side, mode = int(preprocessing["input_size"]), resize_side(preprocessing), resize_filter(preprocessing)
    x = images.permute(0, 3, 1, 2).float()
    if regions is None:
        x = _resize_centre(x, size, side, mode)
    else:
        regions = np.asarray(torch.as_tensor(regions).cpu(), dtype=np.int64).reshape(len(x), 4)
        kinds, which = np.unique(regions, axis=0, return_inverse=True)
        out = x.new_empty((len(x), x.shape[1], size, size))
        for k, (y0, x0, h, w) in enumerate(kinds):
            rows = torch.from_numpy(np.flatnonzero(which.reshape(-1) == k)).to(x.device)
            out[rows] = _resize_centre(x[rows, :, y0:y0 + h, x0:x0 + w], size, side, mode)
        x = out
    mean = torch.as_tensor(preprocessing["mean"], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(preprocessing["std"], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def _resize_centre(x: torch.Tensor, size: int, side: int, mode: str) -> torch.Tensor:
    """float 0-255 (N, C, H, W) -> [0, 1] (N, C, size, size): Resize(side) on the short side, CenterCrop(size)."""
    h, w = resized_hw(x.shape[2], x.shape[3], side)
    if (h, w) != tuple(x.shape[2:]):
        x = F.interpolate(x, size=(h, w), mode=mode, antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)  # the uint8 image the official pipelines crop
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # torchvision's CenterCrop
    return x[:, :, top:top + size, left:left + size].div_(255)


def describe(preprocessing: dict) -> str:
    """One line for a metrics file: which pixels the features came from."""
    return (f"Resize({resize_side(preprocessing)}, {resize_filter(preprocessing)}, antialiased, short side) -> "
            f"CenterCrop({preprocessing['input_size']}) -> /255 -> (x - {preprocessing['mean']}) / "
            f"{preprocessing['std']}")
