"""Stage `teacher`: produce the teacher artifact (a compress-cache model file) that `extract` runs once.

Either import a checkpoint the user brings (`weights`: MoCo, SwAV, SimCLR, DINO, torchvision or a model file;
loaded strictly, see pipeline/models/teachers.py) or, when none is named, pretrain one self-supervised with MoCo v2 on
the prepared data - nothing can be downloaded here. Both paths end in the same file: `OUT/model.pt`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.runtime.errors import CompressError
from pipeline.models.modelfile import save_model
from pipeline.models.backbones import Backbone
from pipeline.runtime.provenance import provenance
from pipeline.models.teachers import load_teacher
from stages.train import train
from stages.train_config import TrainConfig


@dataclass
class TeacherConfig:
    data: Path
    out: Path
    weights: Path | None = None  # a checkpoint to import; None pretrains with MoCo v2
    weights_format: str = "auto"
    input_size: int | None = None  # imported teachers: override the format's input size (e.g. 32 for CIFAR)
    crop_fraction: float | None = None
    pretrain: TrainConfig | None = None  # MoCo v2 settings (method, data and out are filled in here)


def make_teacher(cfg: TeacherConfig) -> Path:
    target = Path(cfg.out) / "model.pt"
    if cfg.weights:
        model, identity = load_teacher(cfg.weights, weights_format=cfg.weights_format)
        if not isinstance(model, Backbone):
            raise CompressError("a teacher artifact holds a backbone; import with --embedding backbone")
        preprocessing = dict(identity["preprocessing"])
        if cfg.input_size:
            preprocessing["input_size"] = cfg.input_size
        if cfg.crop_fraction:
            preprocessing["crop_fraction"] = cfg.crop_fraction
        save_model(target, model, preprocessing, method="imported",
                   source={"path": str(cfg.weights), "sha256": identity["weights_sha256"],
                           "format": identity["format"]},
                   provenance=provenance({"weights": str(cfg.weights), "weights_format": cfg.weights_format}))
        return target
    if cfg.pretrain is None:
        raise CompressError("no --weights given and no pretraining settings; pass --weights PATH")
    cfg.pretrain.method, cfg.pretrain.data, cfg.pretrain.out = "moco", Path(cfg.data), Path(cfg.out)
    train(cfg.pretrain)
    return target
