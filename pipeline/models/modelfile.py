"""The model file: a trained backbone with what it needs to be used again (a teacher artifact, an export).

A plain dict saved by `torch.save` holding only tensors, strings and numbers, so it loads with
`torch.load(weights_only=True)`:

    format          "compress-cache/model"
    arch, small_input, embed_dim
    state_dict      the backbone's weights (train-time heads are never included)
    preprocessing   {"mean", "std", "input_size", "crop_fraction", "resize"}: how images become inputs
                    (the evaluation view: pipeline/data/eval_view.py)
    data_fingerprint, method, provenance, identity (pipeline/runtime/run_identity.py) for trained students
    tensors_sha256  sha256 of every tensor above (pipeline/runtime/tensor_check.py), checked whenever the file is loaded
                    (pipeline/runtime/safe_load.py); files written before it existed load unchecked

A model holding a non-finite value is never written.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.runtime.atomic import make_dir, torch_save
from pipeline.runtime.errors import CompressError
from pipeline.data.eval_view import DEFAULT_RESIZE, default_crop_fraction
from pipeline.models.backbones import Backbone, build_backbone
from pipeline.runtime.safe_load import load_checkpoint
from pipeline.models.strict_load import load_strict
from pipeline.runtime.tensor_check import first_non_finite, tensors_sha256

FORMAT = "compress-cache/model"


def default_preprocessing(input_size: int, crop_fraction: float | None = None, resize: str = DEFAULT_RESIZE) -> dict:
    """ImageNet statistics (what official teachers expect, harmless for the small demo data) and the evaluation
    view of pipeline.data.eval_view. crop_fraction None: 0.875 at ImageNet resolution (input_size >= 224, i.e.
    Resize(256) -> CenterCrop(224)), 1.0 below (small images such as digits or CIFAR are evaluated whole)."""
    if crop_fraction is None:
        crop_fraction = default_crop_fraction(input_size)
    return {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "input_size": int(input_size), "crop_fraction": float(crop_fraction), "resize": resize}


def save_model(path: str | Path, backbone: Backbone, preprocessing: dict, **meta) -> None:
    """Write atomically (a reader never sees half a file), with the checksum of its tensors; refuse (CompressError,
    nothing written) a model with a non-finite weight."""
    path = Path(path)
    payload = {"format": FORMAT, **backbone.describe(), "preprocessing": preprocessing,
               "state_dict": {k: v.detach().cpu() for k, v in backbone.state_dict().items()}, **meta}
    bad = first_non_finite(payload["state_dict"])
    if bad is not None:
        raise CompressError(f"{path} not written: the model's {bad} holds non-finite values; lower --lr or use "
                            f"--amp none")
    payload["tensors_sha256"] = tensors_sha256(payload)
    make_dir(path.parent)
    torch_save(path, payload)


def read_model_file(path: str | Path) -> dict:
    """Load a model file safely (weights_only, see safe_load); refuse anything that is not one."""
    payload = load_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CompressError(f"{path}: not a compress-cache model file; for official checkpoints use "
                            f"`compress-cache extract --weights-format auto`")
    return payload


def load_model(path: str | Path) -> tuple[Backbone, dict]:
    """(backbone with the saved weights, loaded strictly, in eval mode; the file's metadata)."""
    payload = read_model_file(path)
    backbone = load_strict(build_backbone(payload["arch"], payload["small_input"]), payload["state_dict"],
                           f"{path}: weights do not fit {payload['arch']}")
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return backbone.eval(), meta
