"""Teacher checkpoint formats: recognise each official key layout and map it to torchvision parameter names.

A mapping only renames and sets aside what the format is known to carry besides the backbone (MoCo's key encoder
and queue, SwAV's prototypes). Everything it does not recognise stays in `backbone`, so the strict load that
follows (pipeline/models/teachers.py) names it instead of silently ignoring it - the `strict=False` trap of the original
release, where a wrong prefix gave a random teacher.

Layouts (method.md, "Teacher checkpoint formats users bring"):

    moco         {"state_dict": {"module.encoder_q.<torchvision key>", "module.encoder_q.fc.*" (head),
                  "module.encoder_k.*", "module.queue", "module.queue_ptr"}, "arch", "epoch", "optimizer"}
    swav         {"module.<torchvision key>", "module.projection_head.*" (head), "module.prototypes.*"}
    simclr       {"state_dict": {<torchvision key>, "fc.*" (supervised classifier)}} - converted to PyTorch,
                 ResNet-50 x1/x2/x4 (the x2/x4 stem has 128/256 channels)
    dino         {<torchvision key>} without a classifier; a ViT backbone {"cls_token", "pos_embed",
                 "patch_embed.proj.*", "blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*", "norm.*"}
                 (ViT-S/16, S/8, B/16, B/8); or a full training checkpoint {"teacher": {"[module.]backbone.*",
                 "[module.]head.*"}, "student", "args" (an argparse.Namespace), ...}
    dinov2       a ViT backbone as dino's plus "blocks.N.ls1.gamma"/"ls2.gamma" (LayerScale), "mask_token"
                 (training only: dropped), "register_tokens" (the _reg models), and in ViT-g
                 "blocks.N.mlp.w12.*"/"w3.*" (SwiGLU) instead of fc1/fc2
    timm         any timm model's state dict (`--teacher timm:NAME`); told from the keys when they carry what only
                 timm writes (ViT "reg_token", "fc_norm.*" or a "head.*" classifier; "conv_stem.*"; ConvNeXt
                 "stem.0.*" with "stages.*"); its classifier is dropped when loading
    torchvision  {<torchvision key>} of any torchvision model, classifier included or not
    compress-cache  the model file of pipeline/models/modelfile.py
    compress-cache-export  a `export --format state-dict` file: {<torchvision key>} of the student backbone, with
                 a JSON sidecar FILE.json (format "compress-cache/export", sha256 of FILE) giving the
                 architecture, the stem and the preprocessing, which the keys alone cannot
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from pipeline.runtime.errors import CompressError
from pipeline.models.modelfile import FORMAT as NATIVE_FORMAT
from pipeline.models.narrow_resnet import ARCHS as NARROW_ARCHS
from pipeline.models.vit import is_vit_keys, spec_from_keys

FORMATS = ("auto", "moco", "swav", "simclr", "dino", "dinov2", "timm", "torchvision", "compress-cache",
           "compress-cache-export")
SIDECAR_FORMAT = "compress-cache/export"  # the "format" entry of an export's JSON sidecar (stages/export.py)

# Containers that wrap a state dict in the checkpoints people bring, in the order they are tried.
_WRAPPERS = ("state_dict", "model", "teacher")


@dataclass
class Mapped:
    """A checkpoint after mapping: torchvision-named backbone weights, and the projection head if any."""
    format: str
    reason: str                                   # how the format was recognised, printed by the CLI
    backbone: dict[str, torch.Tensor]             # torchvision names; a classifier may still be present
    head: dict[str, torch.Tensor] | None = None   # "<index>.weight" ... of an MLP (see pipeline.models.projection_head)
    head_note: str = ""                           # why there is no head, for the --embedding head error
    arch: str | None = None                       # when the file says it (MoCo "arch", the native model file)
    native: dict = field(default_factory=dict)    # the native model file's metadata (preprocessing, ...)


def _tensors(d: object) -> bool:
    return isinstance(d, dict) and len(d) > 0 and all(isinstance(v, torch.Tensor) for v in d.values())


def _unwrap(obj: object) -> tuple[dict, str]:
    """(the state dict inside a checkpoint, where it was found)."""
    if _tensors(obj):
        return dict(obj), "top level"
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if _tensors(obj.get(key)):
                return dict(obj[key]), f"under {key!r}"
    shown = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CompressError(f"checkpoint holds no state dict of tensors (found {shown}); expected a dict of "
                        f"tensors, possibly under one of {', '.join(_WRAPPERS)}")


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _strip_ddp(sd: dict) -> dict:
    """Remove DistributedDataParallel's `module.` when every key has it."""
    return _strip(sd, "module.") if all(k.startswith("module.") for k in sd) else sd


def _split(sd: dict, prefix: str) -> tuple[dict, dict]:
    """(keys under `prefix` with it removed, all other keys)."""
    inside = _strip(sd, prefix)
    return inside, {k: v for k, v in sd.items() if not k.startswith(prefix)}


def _is_resnet(sd: dict) -> bool:
    return "conv1.weight" in sd and any(k.startswith("layer4.") for k in sd)


def _map_moco(obj, sd, why) -> Mapped:
    sd = _strip_ddp(sd)
    if not any(k.startswith("encoder_q.") for k in sd):
        raise CompressError(_wrong_layout("moco", "module.encoder_q.", sd))
    query, rest = _split(sd, "encoder_q.")
    ignored = ("encoder_k.", "queue")  # momentum encoder and negatives queue: training state, not the teacher
    leftovers = {k: v for k, v in rest.items() if not k.startswith(ignored)}
    head, backbone = _split(query, "fc.")
    if set(head) == {"weight", "bias"}:  # MoCo v1: a single linear projection
        head = {f"0.{k}": v for k, v in head.items()}
    backbone.update(leftovers)
    arch = obj.get("arch") if isinstance(obj, dict) and isinstance(obj.get("arch"), str) else None
    return Mapped("moco", why, backbone, head or None, "this MoCo checkpoint has no encoder_q.fc head", arch)


def _map_swav(obj, sd, why) -> Mapped:
    sd = _strip_ddp(sd)
    head, rest = _split(sd, "projection_head.")
    _, backbone = _split(rest, "prototypes.")  # cluster prototypes: the SwAV loss, not an embedding
    if not head and len(backbone) == len(sd):
        raise CompressError(_wrong_layout("swav", "module.projection_head. / module.prototypes.", sd))
    return Mapped("swav", why, backbone, head or None, "this SwAV checkpoint has no projection_head")


def _map_simclr(obj, sd, why) -> Mapped:
    sd = _strip_ddp(sd)
    if not _is_resnet(sd):
        raise CompressError(_wrong_layout("simclr", "torchvision ResNet names (conv1., layer1. ...)", sd))
    return Mapped("simclr", why, sd, None, "converted SimCLR checkpoints keep the backbone and the supervised fc "
                  "only, no projection head")


def _map_dino(obj, sd, why) -> Mapped:
    sd = _strip_ddp(sd)
    if any(k.startswith("backbone.") for k in sd):  # full training checkpoint: teacher network
        backbone, rest = _split(sd, "backbone.")
        _, leftovers = _split(rest, "head.")
        backbone.update(leftovers)
        return Mapped("dino", why, backbone, None, "the DINO head (MLP + weight-normalised prototypes) is not "
                      "supported as an embedding")
    if not (_is_resnet(sd) or is_vit_keys(sd)):
        raise CompressError(_wrong_layout("dino", "torchvision ResNet names, ViT names (cls_token, pos_embed, "
                                          "patch_embed.proj.*), or backbone.* under 'teacher'", sd))
    return Mapped("dino", why, sd, None, "DINO backbone checkpoints carry no projection head")


def _map_dinov2(obj, sd, why) -> Mapped:
    sd = _strip_ddp(sd)
    if not is_vit_keys(sd):
        raise CompressError(_wrong_layout("dinov2", "ViT names (cls_token, pos_embed, patch_embed.proj.*)", sd))
    sd.pop("mask_token", None)  # the masked-token embedding of iBOT training: no part of the forward
    return Mapped("dinov2", why, sd, None, "DINOv2 backbone checkpoints carry no projection head")


def _map_timm(obj, sd, why) -> Mapped:
    return Mapped("timm", why, _strip_ddp(sd), None, "a timm model's classifier is not an embedding")


def _map_torchvision(obj, sd, why) -> Mapped:
    return Mapped("torchvision", why, _strip_ddp(sd), None, "a torchvision checkpoint has no projection head "
                  "(its classifier is not an embedding)")


def _map_native(obj, sd, why) -> Mapped:
    if not (isinstance(obj, dict) and obj.get("format") == NATIVE_FORMAT):
        raise CompressError(f"not a compress-cache model file (no format={NATIVE_FORMAT!r} entry); "
                            f"use --weights-format auto")
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    return Mapped("compress-cache", why, dict(obj["state_dict"]), None,
                  "a compress-cache model file holds the backbone only", obj["arch"], meta)


def _map_export(obj, sd, why, sidecar: dict) -> Mapped:
    native = {"small_input": bool(sidecar["small_input"]), "preprocessing": dict(sidecar["preprocessing"])}
    return Mapped("compress-cache-export", why, _strip_ddp(sd), None, "an export holds the backbone only",
                  sidecar["arch"], native)


_MAPPERS = {"moco": _map_moco, "swav": _map_swav, "simclr": _map_simclr, "dino": _map_dino, "dinov2": _map_dinov2,
            "timm": _map_timm,
            "torchvision": _map_torchvision, "compress-cache": _map_native}


def _wrong_layout(fmt: str, wanted: str, sd: dict) -> str:
    return (f"--weights-format {fmt}: no key has the expected prefix {wanted} (first keys: "
            f"{', '.join(list(sd)[:3])}); check the file, or use --weights-format auto to detect its layout")


def detect(obj: object) -> tuple[str, str]:
    """(format, reason) for an unpickled checkpoint, from its keys alone."""
    if isinstance(obj, dict) and obj.get("format") == NATIVE_FORMAT:
        return "compress-cache", f"format entry {NATIVE_FORMAT!r}"
    sd, where = _unwrap(obj)
    keys = list(_strip_ddp(sd))
    if any(k.startswith("encoder_q.") for k in keys):
        return "moco", f"keys encoder_q.* {where}"
    if any(k.startswith(("projection_head.", "prototypes.")) for k in keys):
        return "swav", f"keys projection_head.*/prototypes.* {where}"
    if any(k.startswith("backbone.") for k in keys) and where == "under 'teacher'":
        return "dino", "backbone.* keys of the 'teacher' network"
    plain = _strip_ddp(sd)
    timm_marks = [k for k in ("reg_token", "conv_stem.weight") if k in plain]
    if is_vit_keys(plain):  # a classifier or its pre-logits norm: DINO and DINOv2 backbones carry neither
        timm_marks += [k for k in ("fc_norm.weight", "head.weight") if k in plain]
    if "stem.0.weight" in plain and any(k.startswith("stages.") for k in plain):
        timm_marks.append("stem.0.weight with stages.*")
    if timm_marks:
        return "timm", f"key {timm_marks[0]}, which only timm's layout has {where}; pass --teacher timm:NAME"
    if is_vit_keys(plain):
        v2 = [k for k in ("blocks.0.ls1.gamma", "register_tokens", "mask_token", "blocks.0.mlp.w12.weight")
              if k in plain]
        if v2:
            return "dinov2", f"ViT keys with {v2[0]} {where}"
        return "dino", f"ViT keys cls_token, pos_embed, blocks.N.* without LayerScale {where}"
    if _is_resnet(plain):
        stem = plain["conv1.weight"].shape[0]
        if stem in (128, 256) and "layer1.0.conv3.weight" in plain:
            return "simclr", f"ResNet-50 x{stem // 64} widths (a {stem}-channel stem); only SimCLR ships those"
        if isinstance(obj, dict) and set(obj) == {"state_dict"} and "fc.weight" in plain:
            return "simclr", ("torchvision ResNet keys alone under 'state_dict', the layout of converted "
                              "SimCLR checkpoints; pass --weights-format torchvision if it is not SimCLR")
        if "fc.weight" not in plain:
            return "dino", "torchvision ResNet keys without a classifier, as DINO releases its backbone"
    return "torchvision", f"torchvision parameter names {where}"


def map_checkpoint(obj: object, weights_format: str = "auto", sidecar: dict | None = None) -> Mapped:
    """Map an unpickled checkpoint to torchvision names; `auto` detects the format first.

    `sidecar`: the JSON written beside a state-dict export, already checked to describe this very file; with
    `auto` it makes the file a compress-cache-export.
    """
    if weights_format not in FORMATS:
        raise CompressError(f"unknown weights format {weights_format!r}; use one of {', '.join(FORMATS)}")
    if weights_format == "compress-cache-export" or (weights_format == "auto" and sidecar is not None):
        if sidecar is None:
            raise CompressError("--weights-format compress-cache-export needs the export's sidecar FILE.json "
                                "beside the weights (written by `compress-cache export`); copy it there")
        why = "given by --weights-format" if weights_format != "auto" else f"its sidecar {sidecar['file']}.json"
        return _map_export(obj, _unwrap(obj)[0], why, sidecar)
    if weights_format == "auto":
        weights_format, why = detect(obj)
    else:
        why = "given by --weights-format"
    sd = {} if weights_format == "compress-cache" else _unwrap(obj)[0]
    return _MAPPERS[weights_format](obj, sd, why)


def infer_arch(sd: dict[str, torch.Tensor]) -> str | None:
    """The architecture that fits torchvision-named ResNet weights (depth from block counts, width from the
    stem) or official-layout ViT weights (pipeline.models.vit.spec_from_keys); None for anything else."""
    spec = spec_from_keys(sd)
    if spec is not None:
        return spec.name()
    if not _is_resnet(sd):
        return None
    blocks = tuple(len({m.group(1) for k in sd if (m := re.match(rf"layer{i}\.(\d+)\.", k))}) for i in (1, 2, 3, 4))
    bottleneck = "layer1.0.conv3.weight" in sd
    stem = sd["conv1.weight"].shape[0]
    names = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34",
             (True, (3, 4, 6, 3)): "resnet50", (True, (3, 4, 23, 3)): "resnet101",
             (True, (3, 8, 36, 3)): "resnet152"}
    name = names.get((bottleneck, blocks))
    if not bottleneck and stem != 64:  # basic-block ResNets at another width: only the narrow ResNet-18s exist
        return next((a for a, w in NARROW_ARCHS.items() if w == stem and name == "resnet18"), None)
    if name == "resnet50" and stem in (128, 256):
        return f"resnet50x{stem // 64}"
    if name in ("resnet50", "resnet101") and sd["layer1.0.conv1.weight"].shape[0] == 128:
        return f"wide_{name}_2"
    return name
