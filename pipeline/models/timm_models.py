"""timm models as students and teachers: `--student timm:NAME`, `--teacher timm:NAME`.

timm is used for model definitions only. Networks are always created with `pretrained=False`: nothing is ever
downloaded, a teacher's weights come from `--weights FILE` in timm's own layout, and a name that points at the
Hugging Face hub (`hf-hub:...`, `local-dir:...`) is refused.

The embedding is timm's pooled pre-logits feature (`num_classes=0`: the classifier is removed, whatever timm
puts before it stays, e.g. MobileNetV3's 1x1 conv head, 1024-d for mobilenetv3_small_100). Every model is built
with `drop_rate=0` and `drop_path_rate=0`, so no embedding goes through dropout or stochastic depth, and
transformers with `dynamic_img_size=True` where the class accepts it, so they take any input size that is a
multiple of their patch (timm resamples the position embeddings, its way: bicubic with antialiasing).

`small_input=True` (8-64 px images) removes the stride of a convolutional stem: `conv_stem` (MobileNet,
EfficientNet ...) keeps its kernel with stride 1; `conv1` + `maxpool` (ResNets) gets stride 1 and no max-pool.
Models whose stem is a patch embedding (ViT, ConvNeXt, ...) have no such variant and are refused.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.runtime.errors import CompressError

PREFIX = "timm:"


def owns(arch: str) -> bool:
    return arch.startswith(PREFIX)


def model_name(arch: str) -> str:
    """`timm:NAME` -> NAME, refusing what timm would fetch from the hub or does not know."""
    import timm
    from timm.models import parse_model_name
    name = arch[len(PREFIX):]
    source, _ = parse_model_name(name)
    if source is not None:
        raise CompressError(f"{arch}: {source} names are fetched from the hub, and nothing is downloaded here; use "
                            f"a timm architecture name (e.g. timm:vit_small_patch14_dinov2) and pass --weights FILE")
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise CompressError(f"{arch}: timm has no model {name!r}{hint}; see timm.list_models()")
    return name


def _create(name: str, **kw) -> nn.Module:
    import timm
    kw |= {"pretrained": False, "drop_rate": 0.0, "drop_path_rate": 0.0}
    try:
        return timm.create_model(name, dynamic_img_size=True, **kw)
    except TypeError as e:  # convolutional models do not take the argument
        if "dynamic_img_size" not in str(e):
            raise
    return timm.create_model(name, **kw)


def _no_stochastic_layers(net: nn.Module) -> None:
    """Belt and braces after drop_rate=drop_path_rate=0: every Dropout and DropPath at rate 0. Set to 0 rather
    than replaced, because timm's attention reads `attn_drop.p` to pass it to the fused kernel."""
    from timm.layers import DropPath
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        elif isinstance(m, DropPath):
            m.drop_prob = 0.0


def _small_input_stem(arch: str, net: nn.Module) -> None:
    stem = getattr(net, "conv_stem", None)
    if isinstance(stem, nn.Conv2d):
        stem.stride = (1, 1)
        return
    if isinstance(getattr(net, "conv1", None), nn.Conv2d) and hasattr(net, "maxpool"):
        net.conv1.stride = (1, 1)
        net.maxpool = nn.Identity()
        return
    raise CompressError(f"{arch} has no small-input variant (its stem is not a strided convolution this project "
                        f"knows: conv_stem, or conv1 + maxpool); drop --small-input, and for a patch-embedding "
                        f"model choose an --input-size that is a multiple of its patch")


def embed_dim(net: nn.Module) -> int:
    return int(getattr(net, "head_hidden_size", None) or net.num_features)


def build_backbone(arch: str, small_input: bool = False, seed: int | None = None):
    """pipeline.models.backbones.Backbone around timm's NAME without classifier (seeded when `seed` is given)."""
    from pipeline.models.backbones import Backbone  # models dispatches here: imported late to avoid a cycle
    name = model_name(arch)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        net = _create(name, num_classes=0)
    _no_stochastic_layers(net)
    if small_input:
        _small_input_stem(arch, net)
    return Backbone(arch, net, embed_dim(net), small_input)


def classifier_keys(arch: str) -> set[str]:
    """State-dict keys of NAME's classifier, which a teacher file in timm's layout may carry (dropped)."""
    name = model_name(arch)
    with torch.device("meta"):
        full, bare = _create(name).state_dict(), _create(name, num_classes=0).state_dict()
    return set(full) - set(bare)


def preprocessing(arch: str) -> dict:
    """NAME's evaluation preprocessing from timm's pretrained config (shipped with the code, not downloaded):
    mean, std, input size, crop fraction (crop_pct) and resize filter (bicubic when timm's is neither bilinear
    nor bicubic)."""
    import timm
    cfg = timm.models.get_pretrained_cfg(model_name(arch))
    cfg = cfg.to_dict() if cfg is not None else {}
    resize = cfg.get("interpolation", "bicubic")
    return {"mean": list(cfg.get("mean", (0.485, 0.456, 0.406))), "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
            "input_size": int(cfg.get("input_size", (3, 224, 224))[-1]),
            "crop_fraction": float(cfg.get("crop_pct", 0.875)),
            "resize": resize if resize in ("bilinear", "bicubic") else "bicubic"}
