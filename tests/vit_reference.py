"""Test helpers written from the DINO / DINOv2 architecture, independently of pipeline/models/vit.py: random weights in
the releases' key layouts, and a plain forward (explicit attention, LayerNorm, GELU/SwiGLU, position-embedding
resampling) to compare the project's rows with."""
import math

import torch
import torch.nn.functional as F


def official_shapes(patch, width, depth, grid, layerscale=False, swiglu=False, registers=0, mask_token=False):
    """{key: shape} of a released backbone file (DINO: no LayerScale; DINOv2: LayerScale and mask_token)."""
    hidden = (int(4 * width * 2 / 3) + 7) // 8 * 8 if swiglu else 4 * width
    shapes = {"cls_token": (1, 1, width), "pos_embed": (1, 1 + grid * grid, width),
              "patch_embed.proj.weight": (width, 3, patch, patch), "patch_embed.proj.bias": (width,)}
    if mask_token:
        shapes["mask_token"] = (1, width)
    if registers:
        shapes["register_tokens"] = (1, registers, width)
    for i in range(depth):
        b = f"blocks.{i}."
        shapes |= {b + "norm1.weight": (width,), b + "norm1.bias": (width,),
                   b + "attn.qkv.weight": (3 * width, width), b + "attn.qkv.bias": (3 * width,),
                   b + "attn.proj.weight": (width, width), b + "attn.proj.bias": (width,),
                   b + "norm2.weight": (width,), b + "norm2.bias": (width,)}
        if swiglu:
            shapes |= {b + "mlp.w12.weight": (2 * hidden, width), b + "mlp.w12.bias": (2 * hidden,),
                       b + "mlp.w3.weight": (width, hidden), b + "mlp.w3.bias": (width,)}
        else:
            shapes |= {b + "mlp.fc1.weight": (hidden, width), b + "mlp.fc1.bias": (hidden,),
                       b + "mlp.fc2.weight": (width, hidden), b + "mlp.fc2.bias": (width,)}
        if layerscale:
            shapes |= {b + "ls1.gamma": (width,), b + "ls2.gamma": (width,)}
    return shapes | {"norm.weight": (width,), "norm.bias": (width,)}


def random_weights(shapes, seed=0):
    """Random tensors whose every part matters: norms around 1, LayerScale around 0.5, large position
    embeddings (so their resampling shows in the rows), weights scaled by fan-in."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        r = torch.randn(shape, generator=g)
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            r = 1 + 0.2 * r
        elif k.endswith("gamma"):
            r = 0.5 + 0.2 * r
        elif k.endswith("bias"):
            r = 0.1 * r
        elif k.endswith(".weight"):
            r = r / math.sqrt(math.prod(shape[1:]))
        out[k] = r
    return out


def _layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def reference_tokens(w, x, offset=0.1):
    """All tokens after the final norm, computed in float64 from the official-layout weights `w`.
    `offset`: the releases' 0.1 added to the target grid in the position-embedding scale factor (None: resample
    to the target size instead, the naive way, to show that the difference is visible)."""
    w = {k: v.double() for k, v in w.items()}
    x = x.double()
    width = w["cls_token"].shape[-1]
    heads, patch = width // 64, w["patch_embed.proj.weight"].shape[-1]
    n, _, h, wd = x.shape
    t = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=patch)
    gh, gw = t.shape[-2:]
    t = torch.cat([w["cls_token"].expand(n, -1, -1), t.flatten(2).transpose(1, 2)], dim=1)
    pos = w["pos_embed"]
    grid = int(math.isqrt(pos.shape[1] - 1))
    if (gh, gw) != (grid, grid):
        p = pos[:, 1:].reshape(1, grid, grid, width).permute(0, 3, 1, 2)
        if offset is None:
            p = F.interpolate(p, size=(gh, gw), mode="bicubic", align_corners=False)
        else:
            p = F.interpolate(p, scale_factor=((gh + offset) / grid, (gw + offset) / grid), mode="bicubic",
                              align_corners=False)
        pos = torch.cat([pos[:, :1], p.permute(0, 2, 3, 1).reshape(1, gh * gw, width)], dim=1)
    t = t + pos
    if "register_tokens" in w:
        t = torch.cat([t[:, :1], w["register_tokens"].expand(n, -1, -1), t[:, 1:]], dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    for i in range(depth):
        b = lambda name: w[f"blocks.{i}.{name}"]  # noqa: E731
        y = _layer_norm(t, b("norm1.weight"), b("norm1.bias"))
        qkv = (y @ b("attn.qkv.weight").T + b("attn.qkv.bias")).reshape(n, -1, 3, heads, 64).permute(2, 0, 3, 1, 4)
        a = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1) / 8.0, dim=-1) @ qkv[2]  # 1 / sqrt(64)
        y = a.transpose(1, 2).reshape(n, -1, width) @ b("attn.proj.weight").T + b("attn.proj.bias")
        t = t + (y * b("ls1.gamma") if f"blocks.{i}.ls1.gamma" in w else y)
        y = _layer_norm(t, b("norm2.weight"), b("norm2.bias"))
        if f"blocks.{i}.mlp.w12.weight" in w:
            u, v = (y @ b("mlp.w12.weight").T + b("mlp.w12.bias")).chunk(2, dim=-1)
            y = (u * torch.sigmoid(u) * v) @ b("mlp.w3.weight").T + b("mlp.w3.bias")
        else:
            y = _gelu(y @ b("mlp.fc1.weight").T + b("mlp.fc1.bias")) @ b("mlp.fc2.weight").T + b("mlp.fc2.bias")
        t = t + (y * b("ls2.gamma") if f"blocks.{i}.ls2.gamma" in w else y)
    return _layer_norm(t, w["norm.weight"], w["norm.bias"])


def reference_rows(w, x, embedding="cls", offset=0.1):
    """l2-normalised float64 embeddings: CLS, or CLS with the mean patch token (registers excluded)."""
    t = reference_tokens(w, x, offset)
    if embedding == "cls":
        z = t[:, 0]
    else:
        r = w["register_tokens"].shape[1] if "register_tokens" in w else 0
        z = torch.cat([t[:, 0], t[:, 1 + r:].mean(1)], dim=1)
    return F.normalize(z, dim=1)
