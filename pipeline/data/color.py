"""MoCo-v2 photometric augmentations, one random draw per sample, applied to a batch on the device.

torchvision's ColorJitter / RandomGrayscale / GaussianBlur draw one set of parameters per call, so applied to a
batched tensor every image gets the same jitter. Here `sample_color` draws the parameters of every sample on
the CPU from a seeded generator (a fixed number of draws per sample, so the stream does not depend on which
coins came up), and `color_augment` applies them with masked batched ops. The parameters are plain numbers:
they can be stored and applied again to the same pixels.

Columns of a parameter row (COLOR_PARAMS = 12):
    0 jitter on (0/1)   1 brightness   2 contrast   3 saturation   4 hue shift
    5..8 the order in which the four jitter ops run (a permutation of 0..3, like ColorJitter)
    9 grayscale on (0/1)   10 blur on (0/1)   11 blur sigma as a fraction of the image side
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

COLOR_PARAMS = 12
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL and torchvision


def sample_color(n: int, generator: torch.Generator, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.1, p_jitter: float = 0.8, p_gray: float = 0.2,
                 p_blur: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0),
                 sigma_reference: int = 224) -> torch.Tensor:
    """(n, COLOR_PARAMS) MoCo-v2 parameters on the CPU; defaults are MoCo-v2's.

    `sigma` is in pixels of a `sigma_reference`-pixel image (MoCo-v2: 0.1-2.0 at 224 px) and is stored as a
    fraction of the side, so the same blur looks the same at any rendered size.
    """
    u = torch.rand(n, 8, generator=generator)
    order = torch.rand(n, 4, generator=generator).argsort(dim=1).float()
    jitter = (u[:, 0] < p_jitter).float()
    b = 1 + brightness * (2 * u[:, 1] - 1)
    c = 1 + contrast * (2 * u[:, 2] - 1)
    s = 1 + saturation * (2 * u[:, 3] - 1)
    h = hue * (2 * u[:, 4] - 1)
    one = torch.ones(n)
    b, c, s = (torch.where(jitter > 0, v, one) for v in (b, c, s))
    h = h * jitter
    gray = (u[:, 5] < p_gray).float()
    blur = (u[:, 6] < p_blur).float()
    sig = (sigma[0] + (sigma[1] - sigma[0]) * u[:, 7]) / sigma_reference * blur
    return torch.stack([jitter, b, c, s, h, *order.unbind(1), gray, blur, sig], dim=1)


def color_augment(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply per-sample parameters to float (N, 3, H, W) images in [0, 1]; returns a new tensor in [0, 1]."""
    if params.shape != (len(x), COLOR_PARAMS):
        raise ValueError(f"colour parameters must be ({len(x)}, {COLOR_PARAMS}), got {tuple(params.shape)}")
    p = params.to(x.device, torch.float32)
    x = x.clone()
    on = p[:, 0] > 0
    for step in range(4):  # ColorJitter runs its four ops in a random order per sample
        for op in range(4):
            m = on & (p[:, 5 + step] == op)
            if m.any():
                x[m] = _JITTER[op](x[m], p[m, 1 + op])
    g = p[:, 9] > 0
    if g.any():
        x[g] = _gray(x[g]).expand(-1, 3, -1, -1)
    bl = (p[:, 10] > 0) & (p[:, 11] > 0)
    if bl.any():
        x[bl] = _blur(x[bl], p[bl, 11] * min(x.shape[-2:]))
    return x


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * a + (1 - f) * b).clamp_(0, 1)


def _brightness(x, f):
    return _blend(x, torch.zeros_like(x), f)


def _contrast(x, f):
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x, f):
    return _blend(x, _gray(x), f)


def _hue(x, shift):
    """Rotate the hue in HSV space: h -> h + shift (in turns)."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    delta = v - x.min(1).values
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(v == r, ((g - b) / safe) % 6, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    out = []
    for n in (5, 3, 1):  # R, G, B from the closed-form HSV -> RGB
        k = (n + h * 6) % 6
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(out, 1)


_JITTER = (_brightness, _contrast, _saturation, _hue)


def _blur(x: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (a grouped conv over all samples at once)."""
    n, c, hgt, wid = x.shape
    radius = max(1, min(math.ceil(3 * float(sigma_px.max())), hgt - 1, wid - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-t.view(1, -1) ** 2 / (2 * sigma_px.view(-1, 1).to(x.dtype) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, K)
    y = x.reshape(1, n * c, hgt, wid)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(n * c, 1, -1, 1), groups=n * c)
    return y.reshape(n, c, hgt, wid)
