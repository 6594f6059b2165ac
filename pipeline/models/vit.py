"""Vision Transformers as DINO and DINOv2 release them: teachers whose embedding is the CLS token after the final
LayerNorm.

One network covers both releases; what differs is read from the checkpoint's keys (`spec_from_keys`):

    patch        patch_embed.proj.weight (width, 3, patch, patch)
    width, depth the same weight; 1 + the largest N of blocks.N.*          heads = width / 64, as in every release
    grid         pos_embed (1, 1 + grid^2, width): the grid it was trained at (DINO 224 / patch, DINOv2 518 / 14)
    registers    register_tokens (1, R, width): DINOv2 `_reg` models, R = 4
    layerscale   blocks.N.ls1.gamma / ls2.gamma (DINOv2)
    swiglu       blocks.N.mlp.w12 / w3 instead of mlp.fc1 / fc2 (DINOv2 ViT-g), hidden = 8-rounded 2/3 of 4 width

Parameter names are the releases' own, so their files load without renaming (DINOv2's `mask_token`, used only
in training, is dropped by pipeline.models.checkpoint_formats). An architecture is named either by its release name
(`dino_vits16` ... `dinov2_vitg14_reg`, see ARCHS) or, for any other shape, by `vit-p<patch>-w<width>-d<depth>-
g<grid>[-r<registers>][-ls][-swiglu]`, which `spec_from_name` reads back.

Forward, as both releases compute it: patches (a stride-`patch` convolution) -> prepend CLS -> add position
embeddings -> insert the registers after CLS -> blocks x = x + ls1(attn(norm1(x))), x = x + ls2(mlp(norm2(x)))
-> LayerNorm (eps 1e-6). Attention goes through torch's scaled_dot_product_attention (scale 1/sqrt(64)); GELU is
the exact (erf) one. At an input grid other than the trained one the position embeddings are resampled as both
releases do: bicubic, `scale_factor = (grid + 0.1) / trained_grid`, no antialiasing, align_corners False.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.runtime.errors import CompressError

HEAD_DIM = 64  # every official ViT: heads = width / 64
LN_EPS = 1e-6
POS_OFFSET = 0.1  # both releases add 0.1 to the target grid in the interpolation's scale factor


@dataclass(frozen=True)
class ViTSpec:
    """Shape of a DINO / DINOv2 ViT. `grid`: side of the position-embedding grid the weights were trained at."""
    patch: int
    width: int
    depth: int
    grid: int
    registers: int = 0
    layerscale: bool = False
    swiglu: bool = False

    @property
    def heads(self) -> int:
        return self.width // HEAD_DIM

    @property
    def hidden(self) -> int:
        """Feed-forward width: 4 width (GELU MLP); SwiGLU: 2/3 of that, rounded up to a multiple of 8 (DINOv2)."""
        return (int(4 * self.width * 2 / 3) + 7) // 8 * 8 if self.swiglu else 4 * self.width

    def name(self) -> str:
        known = {spec: name for name, spec in ARCHS.items()}
        if self in known:
            return known[self]
        return (f"vit-p{self.patch}-w{self.width}-d{self.depth}-g{self.grid}"
                + (f"-r{self.registers}" if self.registers else "") + ("-ls" if self.layerscale else "")
                + ("-swiglu" if self.swiglu else ""))


def _releases() -> dict[str, ViTSpec]:
    dino = {"dino_vits16": ViTSpec(16, 384, 12, 14), "dino_vits8": ViTSpec(8, 384, 12, 28),
            "dino_vitb16": ViTSpec(16, 768, 12, 14), "dino_vitb8": ViTSpec(8, 768, 12, 28)}
    v2 = {"dinov2_vits14": ViTSpec(14, 384, 12, 37, layerscale=True),
          "dinov2_vitb14": ViTSpec(14, 768, 12, 37, layerscale=True),
          "dinov2_vitl14": ViTSpec(14, 1024, 24, 37, layerscale=True),
          "dinov2_vitg14": ViTSpec(14, 1536, 40, 37, layerscale=True, swiglu=True)}
    reg = {f"{name}_reg": ViTSpec(s.patch, s.width, s.depth, s.grid, 4, s.layerscale, s.swiglu)
           for name, s in v2.items()}
    return {**dino, **v2, **reg}


ARCHS = _releases()
_GENERIC = re.compile(r"vit-p(\d+)-w(\d+)-d(\d+)-g(\d+)(?:-r(\d+))?(-ls)?(-swiglu)?")


def owns(arch: str) -> bool:
    return arch in ARCHS or _GENERIC.fullmatch(arch) is not None


def spec_from_name(arch: str) -> ViTSpec:
    if arch in ARCHS:
        return ARCHS[arch]
    m = _GENERIC.fullmatch(arch)
    if m is None:
        raise CompressError(f"{arch!r} names no ViT; use one of {', '.join(ARCHS)} or vit-p<patch>-w<width>-"
                            f"d<depth>-g<grid>[-r<registers>][-ls][-swiglu]")
    p, w, d, g, r = (int(x) if x else 0 for x in m.groups()[:5])
    return ViTSpec(p, w, d, g, r, bool(m.group(6)), bool(m.group(7)))


def is_vit_keys(sd: dict) -> bool:
    return {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= set(sd)


def spec_from_keys(sd: dict[str, torch.Tensor]) -> ViTSpec | None:
    """The ViTSpec of official-layout ViT weights, or None when the keys are not such a ViT."""
    if not is_vit_keys(sd):
        return None
    width, _, patch, _ = sd["patch_embed.proj.weight"].shape
    blocks = [int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))]
    tokens = sd["pos_embed"].shape[1] - 1
    grid = round(tokens ** 0.5)
    if not blocks or grid * grid != tokens:
        return None
    registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    return ViTSpec(patch, width, max(blocks) + 1, grid, registers, "blocks.0.ls1.gamma" in sd,
                   "blocks.0.mlp.w12.weight" in sd)


def resample_position_embedding(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + G^2, W) trained at a G x G grid -> (1, 1 + gh gw, W) for a gh x gw grid, as DINO and DINOv2 do."""
    trained = round((pos_embed.shape[1] - 1) ** 0.5)
    if grid == (trained, trained):
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    width = pos_embed.shape[-1]
    patches = patches.float().reshape(1, trained, trained, width).permute(0, 3, 1, 2)
    scale = ((grid[0] + POS_OFFSET) / trained, (grid[1] + POS_OFFSET) / trained)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)
    patches = patches.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], width)
    return torch.cat([cls, patches], dim=1)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # 3 x N,H,T,d
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, w))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """DINOv2 ViT-g's feed-forward: w3(silu(a) * b) with (a, b) the two halves of w12(x)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w12, self.w3 = nn.Linear(width, 2 * hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class LayerScale(nn.Module):
    def __init__(self, width: int, init: float = 1e-5):  # DINOv2's init_values
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, spec: ViTSpec):
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.width, eps=LN_EPS)
        self.attn = Attention(spec.width, spec.heads)
        self.ls1 = LayerScale(spec.width) if spec.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(spec.width, eps=LN_EPS)
        self.mlp = (SwiGLU if spec.swiglu else Mlp)(spec.width, spec.hidden)
        self.ls2 = LayerScale(spec.width) if spec.layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """`forward(x) -> (N, width)` CLS embeddings; `tokens(x) -> (N, 1 + registers + patches, width)` after the
    final norm. Input sides must be multiples of the patch (the releases would silently drop the remainder)."""

    def __init__(self, spec: ViTSpec):
        super().__init__()
        if spec.width % HEAD_DIM or spec.width == 0:
            raise CompressError(f"ViT width {spec.width} is not a multiple of {HEAD_DIM} (heads = width / 64 in "
                                f"every DINO and DINOv2 model); this checkpoint is no such ViT")
        self.spec = spec
        self.patch_embed = PatchEmbed(spec.patch, spec.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + spec.grid ** 2, spec.width))
        if spec.registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, spec.registers, spec.width))
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(spec.width, eps=LN_EPS)
        for p in (self.cls_token, self.pos_embed) + ((self.register_tokens,) if spec.registers else ()):
            nn.init.trunc_normal_(p, std=0.02)  # random teachers for tests and benchmarks; releases overwrite it

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        p = self.spec.patch
        if h % p or w % p:
            raise CompressError(f"a ViT with patch {p} needs input sides that are multiples of {p}, got {h}x{w}; "
                                f"pass --input-size {max(p, h // p * p)} (or another multiple of {p})")
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # N, gh*gw, W
        t = torch.cat([self.cls_token.expand(n, -1, -1), t], dim=1)
        t = t + resample_position_embedding(self.pos_embed, (h // p, w // p))
        if self.spec.registers:  # after the position embeddings: registers carry none
            t = torch.cat([t[:, :1], self.register_tokens.expand(n, -1, -1), t[:, 1:]], dim=1)
        for block in self.blocks:
            t = block(t)
        return self.norm(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[:, 0]


class ClsAvgPool(nn.Module):
    """CLS concatenated with the mean patch token (registers excluded): DINOv2's linear-probe feature,
    `--embedding cls+avgpool`; `forward(x) -> (N, 2 width)`."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        vit = getattr(backbone, "net", None)
        if not isinstance(vit, VisionTransformer):
            raise CompressError(f"--embedding cls+avgpool needs a DINO/DINOv2 ViT teacher, not "
                                f"{getattr(backbone, 'arch', type(backbone).__name__)}; use --embedding backbone")
        self.backbone = backbone
        self.arch, self.small_input = backbone.arch, backbone.small_input
        self.embed_dim = 2 * vit.spec.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.backbone.net.tokens(x)
        return torch.cat([t[:, 0], t[:, 1 + self.backbone.net.spec.registers:].mean(dim=1)], dim=1)


def build_backbone(arch: str, small_input: bool = False, seed: int | None = None):
    """pipeline.models.backbones.Backbone holding a randomly initialised VisionTransformer (seeded when `seed` is given)."""
    from pipeline.models.backbones import Backbone  # models dispatches here: imported late to avoid a cycle
    spec = spec_from_name(arch)
    if small_input:
        raise CompressError(f"{arch} has no small-input variant: a ViT takes any input whose sides are multiples "
                            f"of its patch ({spec.patch}); drop --small-input and choose --input-size")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        net = VisionTransformer(spec)
    return Backbone(arch, net, spec.width, small_input=False)
