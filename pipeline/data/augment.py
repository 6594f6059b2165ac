"""Per-sample crop and flip on the device, in one batched op.

A crop is five numbers per sample, as fractions of the source image: (cy, cx, h, w, flip) - centre, size and a
0/1 horizontal flip. `sample_crops` draws RandomResizedCrop parameters **per sample** (torchvision's v2
transforms applied to a batched tensor draw one crop for the whole batch), and `render` turns uint8 images and
crops into normalised float tensors with one `affine_grid` + `grid_sample`. Because the parameters are plain
numbers they can be stored (multi-view cache) and rendered again to the same pixels.

A letterboxed store (`prepare --fit letterbox`) records each row's valid region (y0, x0, h, w) in pixels: given
the regions, `sample_crops` draws area and aspect relative to the region and places the crop inside it (as
torchvision does on the original photo), `center_crops` centres in it, and `render` never samples outside it.
Without regions every row is the whole image and the numbers are the same as before regions existed.

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

RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect range
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
                 crop_scale_min: float, hflip: bool, regions=None,
                 share: slice | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One view per sample under `recipe`: (crops (n, 5), colour parameters (n, COLOR_PARAMS) or None).
    Crops are drawn first, then colours, from one generator: a seed and step reproduce the batch.

    share: keep only these rows of the n drawn (a process's slice of the global batch; default all); the draws
    do not depend on the images, so every process draws the same numbers. regions: (kept rows, 4) valid regions
    (y0, x0, h, w) px of a letterboxed store, crops placed inside them (see `sample_crops`); None: whole image."""
    draws = draw_crops(n, generator, (crop_scale_min, 1.0), RATIO, hflip)
    color = sample_color(n, generator, **recipe.color) if recipe.color else None
    if share is not None:
        draws, color = draws[share], (None if color is None else color[share])
    return place_crops(draws, image_hw, RATIO, regions), color


@dataclass(frozen=True)
class CropDraws:
    """The random numbers of n RandomResizedCrops, drawn before the images are known: each of the 10 attempts'
    area (a fraction of the region) and aspect w / h, the position in [0, 1)^2 and the 0/1 flip."""
    area: torch.Tensor  # (n, 10)
    aspect: torch.Tensor  # (n, 10)
    position: torch.Tensor  # (n, 2)
    flip: torch.Tensor  # (n,)

    def __getitem__(self, rows) -> "CropDraws":
        return CropDraws(self.area[rows], self.aspect[rows], self.position[rows], self.flip[rows])


def draw_crops(n: int, generator: torch.Generator, scale: tuple[float, float] = (0.2, 1.0),
               ratio: tuple[float, float] = RATIO, flip: bool = True) -> CropDraws:
    """The random part of `sample_crops`: area, log-uniform aspect, position, flip (in that order)."""
    area = torch.empty(n, _ATTEMPTS).uniform_(*scale, generator=generator)
    log_r = torch.empty(n, _ATTEMPTS).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    position = torch.rand(n, 2, generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5).float() if flip else torch.zeros(n)
    return CropDraws(area, torch.exp(log_r), position, flips)


def place_crops(d: CropDraws, image_hw: tuple[int, int], ratio: tuple[float, float] = RATIO,
                regions=None) -> torch.Tensor:
    """(n, 5) crops from draws: the first attempt that fits the region, else torchvision's fallback.

    Only exact IEEE operations (no exp, no log): a row's crop is the same whether it is placed alone or in a
    global batch. regions None: the whole image is the region (and the fallback is the whole image, as before)."""
    height, width = image_hw
    n = len(d.flip)
    if regions is None:
        rh, rw = height, width
        area = d.area * (height * width)
    else:
        y0, x0, rh, rw = torch.as_tensor(regions, dtype=torch.float32).reshape(n, 4).unbind(1)
        area = d.area * (rh * rw).view(-1, 1)
        rh, rw = rh.view(-1, 1), rw.view(-1, 1)
    w = torch.sqrt(area * d.aspect)  # pixels
    h = torch.sqrt(area / d.aspect)
    ok = (w <= rw) & (h <= rh)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    if regions is None:
        fall_w, fall_h = torch.full((n,), float(width)), torch.full((n,), float(height))
    else:  # torchvision's fallback: the whole region with its aspect clamped into `ratio`, centred
        rh, rw = rh.view(-1), rw.view(-1)
        fall_w, fall_h = torch.minimum(rw, rh * ratio[1]), torch.minimum(rh, rw / ratio[0])
    w = torch.where(first >= 0, w[rows, first.clamp(min=0)], fall_w)
    h = torch.where(first >= 0, h[rows, first.clamp(min=0)], fall_h)
    if regions is None:  # the fallback covers the whole image: its position does not matter
        u = d.position
        cy = (h / 2 + u[:, 0] * (height - h)) / height
        cx = (w / 2 + u[:, 1] * (width - w)) / width
    else:  # the fallback is centred in the region
        u = torch.where((first >= 0).view(-1, 1), d.position, torch.full_like(d.position, 0.5))
        cy = (y0 + h / 2 + u[:, 0] * (rh - h)) / height
        cx = (x0 + w / 2 + u[:, 1] * (rw - w)) / width
    return torch.stack([cy, cx, h / height, w / width, d.flip], dim=1)


def sample_crops(n: int, generator: torch.Generator, image_hw: tuple[int, int],
                 scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = RATIO,
                 flip: bool = True, regions=None) -> torch.Tensor:
    """(n, 5) RandomResizedCrop parameters, one independent draw per sample, on the CPU.

    regions: (n, 4) int (y0, x0, h, w), each sample's valid region in pixels (a letterboxed store): the area
    and aspect are drawn relative to the region and the crop lies inside it, as torchvision's RandomResizedCrop
    on the original photo; the crop is still given as fractions of the stored image. None: the whole image."""
    return place_crops(draw_crops(n, generator, scale, ratio, flip), image_hw, ratio, regions)


def center_crops(n: int, fraction: float = 1.0, image_hw: tuple[int, int] | None = None,
                 regions=None) -> torch.Tensor:
    """(n, 5) centre crops covering `fraction` of each side, unflipped (the evaluation view, view 0).

    With `regions` (n, 4) and the stored `image_hw`: the centred square of side `fraction` x the region's short
    side, inside each region (what `eval_view` takes of a letterboxed row)."""
    if regions is None:
        return torch.tensor([0.5, 0.5, fraction, fraction, 0.0]).repeat(n, 1)
    height, width = image_hw
    y0, x0, rh, rw = torch.as_tensor(regions, dtype=torch.float32).reshape(n, 4).unbind(1)
    side = fraction * torch.minimum(rh, rw)
    return torch.stack([(y0 + rh / 2) / height, (x0 + rw / 2) / width, side / height, side / width,
                        torch.zeros(n)], dim=1)


def render(images: torch.Tensor, crops: torch.Tensor, out_size: int, mean, std,
           color: torch.Tensor | None = None, regions=None) -> torch.Tensor:
    """uint8 (N, H, W, C) images + (N, 5) crops -> float (N, 3, out, out), normalised.

    Runs on the images' device. Grayscale images are repeated to 3 channels so every backbone (and every
    teacher checkpoint) sees RGB-shaped input. `color` (N, COLOR_PARAMS) from `sample_color` applies the
    MoCo-v2 photometric augmentations to the [0, 1] crops before normalisation. `regions` (N, 4) (y0, x0, h, w)
    px of a letterboxed store: samples are clamped to the region's pixel centres, so a crop on the region's
    edge repeats its border (as grid_sample's border padding does at the image's edge) and never blends in
    the letterbox padding.
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
    if regions is not None:
        gy, gx = _clamp_to_regions(gy, gx, regions, x.shape[2], x.shape[3])
    size = (len(x), out_size, out_size)
    grid = torch.stack([gx.expand(size), gy.expand(size)], dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if color is not None:
        out = color_augment(out.expand(-1, 3, -1, -1), color)
    mean = torch.as_tensor(mean, device=x.device, dtype=out.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=x.device, dtype=out.dtype).view(1, -1, 1, 1)
    return (out - mean) / std  # broadcasting also repeats a grey channel to 3


def _clamp_to_regions(gy: torch.Tensor, gx: torch.Tensor, regions, height: int, width: int):
    """Grid coordinates (align_corners=False) clamped to the first and last pixel centre of each region."""
    y0, x0, rh, rw = torch.as_tensor(regions, device=gy.device, dtype=torch.float32).reshape(-1, 4).unbind(1)
    lo_y, hi_y = (2 * y0 + 1) / height - 1, (2 * (y0 + rh) - 1) / height - 1
    lo_x, hi_x = (2 * x0 + 1) / width - 1, (2 * (x0 + rw) - 1) / width - 1
    gy = torch.minimum(torch.maximum(gy, lo_y.view(-1, 1, 1)), hi_y.view(-1, 1, 1))
    gx = torch.minimum(torch.maximum(gx, lo_x.view(-1, 1, 1)), hi_x.view(-1, 1, 1))
    return gy, gx
