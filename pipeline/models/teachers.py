"""Teacher loading: a checkpoint file -> a frozen embedding network and the identity recorded in the cache.

The steps, each in its own module: open the file without running code (safe_load), recognise and rename its
keys (checkpoint_formats), build the architecture and load strictly (strict_load), optionally put the
projection head on top (projection_head). The teacher's preprocessing is part of its identity: a SimCLR network
expects pixels in [0, 1], the others ImageNet mean/std, and a cache made with the wrong one is a wrong cache.
DINO and DINOv2 ViTs are built by pipeline.models.vit, timm models (`--teacher timm:NAME`) by pipeline.models.timm_models.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pipeline.models import timm_models, vit
from pipeline.models.checkpoint_formats import FORMATS, SIDECAR_FORMAT, Mapped, infer_arch, map_checkpoint
from pipeline.runtime.errors import CompressError
from pipeline.models.modelfile import default_preprocessing
from pipeline.models.backbones import Backbone, build_backbone, build_classifier_net
from pipeline.models.projection_head import build_head, out_features
from pipeline.runtime.provenance import sha256_file
from pipeline.runtime.safe_load import load_checkpoint
from pipeline.models.strict_load import load_strict

EMBEDDINGS = ("backbone", "head", "cls+avgpool")


def format_preprocessing(fmt: str) -> dict:
    """How images must be turned into inputs for an official teacher of format `fmt` (224 px, 0.875 crop),
    with the resize filter of that release's evaluation: bicubic for DINO, torchvision's bilinear otherwise."""
    pre = default_preprocessing(224, crop_fraction=0.875, resize="bicubic" if fmt in ("dino", "dinov2") else "bilinear")
    if fmt == "simclr":  # SimCLR was trained on pixels in [0, 1] without mean/std normalisation
        pre.update(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    return pre


class HeadedBackbone(nn.Module):
    """A backbone followed by its checkpoint's projection head: `forward(x) -> (N, head width)`."""

    def __init__(self, backbone: Backbone, head: nn.Sequential):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.arch, self.small_input = backbone.arch, backbone.small_input
        self.embed_dim = out_features(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _build_loaded(arch: str, small_input: bool, mapped: Mapped, what: str) -> Backbone:
    """The backbone of `arch` holding the mapped weights; built on the meta device so nothing is initialised
    twice (a ResNet-50 x4 has 375 M parameters)."""
    with torch.device("meta"):
        backbone = build_backbone(arch, small_input)
    named = dict(backbone.state_dict())
    if any(t.is_meta for n, t in backbone.named_buffers() if n not in named):  # non-persistent buffers
        backbone = build_backbone(arch, small_input)
    if mapped.format == "compress-cache":  # the native file stores Backbone keys ("net.*"), no classifier
        return load_strict(backbone, mapped.backbone, what)
    classifier = _classifier_keys(arch, backbone)
    weights = {k: v for k, v in mapped.backbone.items() if k not in classifier}
    load_strict(backbone.net, weights, what)
    return backbone


def _classifier_keys(arch: str, backbone: Backbone) -> set[str]:
    """Keys of the classifier that `arch`'s checkpoints may carry and its backbone drops (e.g. ResNet fc.*)."""
    if vit.owns(arch):
        return set()  # the official ViT backbones have no classifier
    if timm_models.owns(arch):
        return timm_models.classifier_keys(arch)
    with torch.device("meta"):
        full = set(build_classifier_net(arch).state_dict())
    return full - set(backbone.net.state_dict())


def export_sidecar(weights: str | Path) -> dict | None:
    """The sidecar `WEIGHTS.json` that `compress-cache export --format state-dict` wrote beside the file, when
    there is one and it describes this very file (its sha256); None when there is none."""
    path = Path(str(weights) + ".json")
    if not path.is_file():
        return None
    try:
        sidecar = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # some other JSON-named file: not ours to judge
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        return None
    if sidecar.get("sha256") != sha256_file(weights):
        raise CompressError(f"{path} is the export sidecar of another file (its sha256 differs from {weights}'s); "
                            f"export again, or remove the sidecar and pass --teacher and --weights-format")
    return sidecar


def load_teacher(weights: str | Path, arch: str | None = None, weights_format: str = "auto",
                 embedding: str = "backbone", input_size: int | None = None) -> tuple[nn.Module, dict]:
    """(frozen network in eval mode whose forward gives (N, D) unnormalised embeddings, identity dict).

    `arch` may be omitted for ResNets (inferred from the keys), for compress-cache model files and for
    state-dict exports with their sidecar, and for DINO / DINOv2 ViTs (patch, width, depth, registers and
    LayerScale read from the keys); `timm:NAME` needs it. `input_size` replaces the preprocessing's input size
    (a ViT's must be a multiple of its patch). identity["format"] is the format used: the detected one when
    `weights_format` is "auto".
    """
    if weights_format not in FORMATS:
        raise CompressError(f"unknown weights format {weights_format!r}; use one of {', '.join(FORMATS)}")
    if embedding not in EMBEDDINGS:
        raise CompressError(f"unknown embedding {embedding!r}; use one of {', '.join(EMBEDDINGS)}")
    if weights_format == "auto" and arch is not None and timm_models.owns(arch):
        weights_format = "timm"  # timm's layout cannot always be told from the keys (its ResNets are torchvision's)
    if weights_format == "timm" and (arch is None or not timm_models.owns(arch)):
        raise CompressError(f"{weights} is a checkpoint in timm's layout: pass --teacher timm:NAME, the timm model "
                            f"it was saved from (got --teacher {arch})")
    sidecar = export_sidecar(weights) if weights_format in ("auto", "compress-cache-export") else None
    mapped = map_checkpoint(load_checkpoint(weights), weights_format, sidecar)
    inferred = mapped.arch or infer_arch(mapped.backbone)
    if arch is None:
        if inferred is None:
            raise CompressError(f"{weights}: cannot tell the architecture from its keys; pass --teacher ARCH")
        arch = inferred
    elif mapped.format in ("compress-cache", "compress-cache-export") and arch != inferred:
        raise CompressError(f"{weights} holds a {inferred} but --teacher {arch!r} was given")
    what = f"{weights} ({mapped.format}, detected by {mapped.reason}) does not fit {arch}"
    if inferred is not None and inferred != arch:
        what += f" (its keys look like a {inferred}; pass --teacher {inferred})"
    small_input = bool(mapped.native.get("small_input", False))
    model: nn.Module = _build_loaded(arch, small_input, mapped, what)
    if embedding == "head":
        if mapped.head is None:
            raise CompressError(f"{weights}: --embedding head, but {mapped.head_note}; use --embedding backbone")
        head = load_strict(build_head(mapped.head), mapped.head, f"{weights}: projection head")
        model = HeadedBackbone(model, head)
    elif embedding == "cls+avgpool":
        model = vit.ClsAvgPool(model)
    for p in model.parameters():
        p.requires_grad_(False)
    preprocessing = dict(mapped.native.get("preprocessing") or (
        timm_models.preprocessing(arch) if timm_models.owns(arch) else format_preprocessing(mapped.format)))
    if input_size is not None:
        if input_size < 1:
            raise CompressError(f"--input-size {input_size} must be a positive number of pixels")
        preprocessing["input_size"] = int(input_size)
    identity = {"arch": arch, "small_input": small_input, "embed_dim": model.embed_dim,
                "weights_sha256": sha256_file(weights), "format": mapped.format,
                "embedding": embedding, "preprocessing": preprocessing}
    return model.eval(), identity
