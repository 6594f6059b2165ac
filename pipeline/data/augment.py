"""Per-sample crop and flip on the device, in one batched op.

A crop is five numbers per sample, as fractions of the source image: (cy, cx, h, w, flip) - centre, size and a
0/1 horizontal flip. `sample_crops` draws RandomResizedCrop parameters **per sample** (torchvision's v2
transforms applied to a batched tensor draw one crop for the whole batch), and `render` turns uint8 images and
crops into normalised float tensors with one `affine_grid` + `grid_sample`. Because the parameters are plain
numbers they can be stored (multi-view cache) and rendered again to the same pixels.

The MoCo-v2 photometric augmentations (colour jitter, grayscale, Gaussian blur) follow the same pattern:
`sample_color` draws per-sample parameters on the CPU, `color_augment` applies them to a float batch on the
device, and `render(..., color=params)` applies them before normalisation. See pipeline/data/color.py.

Training names its augmentation by a recipe (`--augment`), recorded with every run:
    crop-flip  RandomResizedCrop (scale 0.08-1, torchvision's default and the CompRess paper's) + flip only
    mocov2     RandomResizedCrop scale 0.2-1, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2,
               Gaussian blur p 0.5 with sigma 0.1-2.0 px at 224 px, flip (MoCo v2's; `--method moco`'s default)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipeline.data.color import COLOR_PARAMS, color_augment, sample_color  # noqa: F401  (re-exported)

_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 times before falling back to the centre


@dataclass(frozen=True)
class Recipe:
    """A named training augmentation: crop scale range, flip, and MoCo-v2 colour parameters (None: no colour)."""
    name: str
    crop_scale_min: float
    color: dict | None = field(default=None)

    def describe(self, crop_scale_min: float, hflip: bool) -> dict:
        """What a run records: the recipe and every parameter it draws with (after the run's overrides)."""
        return {"name": self.name, "crop_scale": [crop_scale_min, 1.0], "crop_ratio": [3 / 4, 4 / 3],
                "hflip": hflip, "color": dict(self.color) if self.color else None}


RECIPES = {
    "crop-flip": Recipe("crop-flip", crop_scale_min=0.08),
    "mocov2": Recipe("mocov2", crop_scale_min=0.2,
                     color={"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p_jitter": 0.8,
                            "p_gray": 0.2, "p_blur": 0.5, "sigma": (0.1, 2.0), "sigma_reference": 224}),
}


def sample_views(recipe: Recipe, n: int, generator: torch.Generator, image_hw: tuple[int, int],
                 crop_scale_min: float, hflip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One view per sample under `recipe`: (crops (n, 5), colour parameters (n, COLOR_PARAMS) or None).
    Crops are drawn first, then colours, from one generator: a seed and step reproduce the batch."""
    crops = sample_crops(n, generator, image_hw, (crop_scale_min, 1.0), flip=hflip)
    color = sample_color(n, generator, **recipe.color) if recipe.color else None
    return crops, color


def sample_crops(n: int, generator: torch.Generator, image_hw: tuple[int, int],
                 scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip: bool = True) -> torch.Tensor:
    """(n, 5) RandomResizedCrop parameters, one independent draw per sample, on the CPU."""
    height, width = image_hw
    area = torch.empty(n, _ATTEMPTS).uniform_(*scale, generator=generator) * (height * width)
    log_r = torch.empty(n, _ATTEMPTS).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect)  # pixels
    h = torch.sqrt(area / aspect)
    ok = (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    w = torch.where(first >= 0, w[rows, first.clamp(min=0)], torch.full((n,), float(width)))
    h = torch.where(first >= 0, h[rows, first.clamp(min=0)], torch.full((n,), float(height)))
    u = torch.rand(n, 2, generator=generator)
    cy = (h / 2 + u[:, 0] * (height - h)) / height
    cx = (w / 2 + u[:, 1] * (width - w)) / width
    flips = (torch.rand(n, generator=generator) < 0.5).float() if flip else torch.zeros(n)
    return torch.stack([cy, cx, h / height, w / width, flips], dim=1)


def center_crops(n: int, fraction: float = 1.0) -> torch.Tensor:
    """(n, 5) centre crops covering `fraction` of each side, unflipped (the evaluation view, view 0)."""
    return torch.tensor([0.5, 0.5, fraction, fraction, 0.0]).repeat(n, 1)


def render(images: torch.Tensor, crops: torch.Tensor, out_size: int, mean, std,
           color: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (N, H, W, C) images + (N, 5) crops -> float (N, 3, out, out), normalised.

    Runs on the images' device. Grayscale images are repeated to 3 channels so every backbone (and every
    teacher checkpoint) sees RGB-shaped input. `color` (N, COLOR_PARAMS) from `sample_color` applies the
    MoCo-v2 photometric augmentations to the [0, 1] crops before normalisation.
    """
    x = images.permute(0, 3, 1, 2).float().div_(255)  # grey stays 1 channel until the last op: 3x less work
    crops = crops.to(x.device, torch.float32)
    cy, cx, h, w, flip = crops.unbind(1)
    sign = 1 - 2 * flip  # -1 mirrors the sampling grid: a horizontal flip
    # The affine grid of an axis-aligned crop is separable: x depends on the column only, y on the row only.
    # Built by broadcasting it costs a fraction of affine_grid's batched matmul (same numbers).
    base = (torch.arange(out_size, device=x.device, dtype=torch.float32) * 2 + 1) / out_size - 1
    gx = (w * sign).view(-1, 1, 1) * base.view(1, 1, -1) + (2 * cx - 1).view(-1, 1, 1)
    gy = h.view(-1, 1, 1) * base.view(1, -1, 1) + (2 * cy - 1).view(-1, 1, 1)
    size = (len(x), out_size, out_size)
    grid = torch.stack([gx.expand(size), gy.expand(size)], dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if color is not None:
        out = color_augment(out.expand(-1, 3, -1, -1), color)
    mean = torch.as_tensor(mean, device=x.device, dtype=out.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=x.device, dtype=out.dtype).view(1, -1, 1, 1)
    return (out - mean) / std  # broadcasting also repeats a grey channel to 3
