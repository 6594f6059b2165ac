"""Stage `export`: a trained student as a file someone can deploy, with the preprocessing it needs beside it.

The run's `model.pt` already holds the backbone only (the 1q linear head and any training-only wider head were
dropped when it was written), so what is exported is exactly the network whose pooled feature was evaluated.
Every export is loaded back and run on a probe batch; it is refused unless it reproduces the training-time
embedding within `tolerance`. A JSON sidecar (`<out>.json`) says how images become inputs, because an exported
network without its mean/std and input size silently gives wrong embeddings. The sidecar also records the
export's sha256, so `extract --weights OUT` can use a state-dict export as a teacher with exactly this
architecture, stem and preprocessing (pipeline/models/teachers.py).
"""
from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.models.checkpoint_formats import SIDECAR_FORMAT
from pipeline.runtime.errors import CompressError
from pipeline.models.modelfile import load_model
from pipeline.models.backbones import Backbone, build_backbone
from pipeline.runtime.provenance import provenance, sha256_file
from pipeline.runtime.atomic import write_text

EXPORT_FORMATS = ("state-dict", "torchscript", "onnx")
_SUFFIX = {"state-dict": ".pth", "torchscript": ".torchscript.pt", "onnx": ".onnx"}


@dataclass
class ExportConfig:
    run_dir: Path
    format: str = "torchscript"
    out: Path | None = None  # default: RUN_DIR/export/<arch><suffix>
    tolerance: float = 1e-4  # max |exported - training-time| on the probe batch (float32 embeddings)


def _state_dict(backbone: Backbone, probe: torch.Tensor, out: Path) -> Callable:
    """Plain tensors under torchvision names (no `net.` prefix), loadable without this package."""
    torch.save({k.removeprefix("net."): v.detach().cpu() for k, v in backbone.state_dict().items()}, out)

    def rerun(x):
        net = build_backbone(backbone.arch, backbone.small_input).net
        net.load_state_dict(torch.load(out, map_location="cpu", weights_only=True), strict=True)
        return net.eval()(x).flatten(1)
    return rerun


def _torchscript(backbone: Backbone, probe: torch.Tensor, out: Path) -> Callable:
    """Traced, not scripted: every supported backbone is a fixed graph, and tracing accepts any of them.
    (PyTorch marks TorchScript deprecated in favour of torch.export, but it is still what C++/mobile runtimes
    load; its FutureWarnings are silenced so the CLI prints one clean line.)"""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(backbone, probe)
        traced.save(str(out))

    def rerun(x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(out), map_location="cpu")(x)
    return rerun


def _onnx(backbone: Backbone, probe: torch.Tensor, out: Path) -> Callable | None:
    if importlib.util.find_spec("onnx") is None:
        raise CompressError("--format onnx needs the onnx package, which is not installed; `pip install onnx "
                            "onnxscript` (and onnxruntime to check the export), or use --format torchscript")
    try:
        torch.onnx.export(backbone, (probe,), str(out), input_names=["images"], output_names=["embedding"],
                          dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}})
    except Exception as e:  # exporter failures are long; keep the first line
        raise CompressError(f"ONNX export of {backbone.arch} failed: {str(e).splitlines()[0][:200]}; "
                            f"use --format torchscript") from None
    if importlib.util.find_spec("onnxruntime") is None:
        return None  # written, but nothing here can run it
    import onnxruntime
    session = onnxruntime.InferenceSession(str(out))
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


_WRITERS = {"state-dict": _state_dict, "torchscript": _torchscript, "onnx": _onnx}


def _probe(preprocessing: dict) -> torch.Tensor:
    """Two normalised random images at the training input size, seeded so the check is reproducible."""
    size = preprocessing["input_size"]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(preprocessing["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def export(cfg: ExportConfig) -> dict:
    """Write the export and its sidecar; return the sidecar's content."""
    if cfg.format not in EXPORT_FORMATS:
        raise CompressError(f"unknown export format {cfg.format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    source = Path(cfg.run_dir) / "model.pt"
    if not source.is_file():
        raise CompressError(f"{cfg.run_dir} holds no model.pt; pass the folder a `compress-cache train` run wrote")
    backbone, meta = load_model(source)
    pre = meta["preprocessing"]
    stem = backbone.arch.replace(":", "_")  # timm:NAME -> timm_NAME: no colon in a file name
    out = Path(cfg.out) if cfg.out else Path(cfg.run_dir) / "export" / f"{stem}{_SUFFIX[cfg.format]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    probe = _probe(pre)
    with torch.no_grad():
        expected = backbone(probe)
        rerun = _WRITERS[cfg.format](backbone, probe, out)
        got = rerun(probe) if rerun is not None else None
    check = {"probe": "2 seeded random images at input_size", "tolerance": cfg.tolerance, "checked": got is not None}
    if got is not None:
        check["max_abs_diff"] = float((got - expected).abs().max())
        if not check["max_abs_diff"] <= cfg.tolerance:
            out.unlink(missing_ok=True)
            raise CompressError(f"the {cfg.format} export of {backbone.arch} differs from the trained model by "
                                f"{check['max_abs_diff']:.3g} (> {cfg.tolerance}); nothing was written")
    sidecar = {
        "format": SIDECAR_FORMAT, "export_format": cfg.format, "file": out.name, "path": str(out),
        "sha256": sha256_file(out), "arch": backbone.arch,
        "small_input": backbone.small_input, "embed_dim": backbone.embed_dim,
        "preprocessing": pre,
        "input": "float32 (N, 3, input_size, input_size) RGB: short side resized to floor(input_size / "
                 "crop_fraction) with the `resize` filter (antialiased, rounded to uint8), centre crop of "
                 "input_size, pixels / 255, then (x - mean) / std per channel (pipeline/data/eval_view.py)",
        "output": "(N, embed_dim) pooled backbone features, not normalised; l2-normalise before cosine/kNN",
        "source": str(source), "source_sha256": sha256_file(source),
        "method": meta.get("method"), "data_fingerprint": meta.get("data_fingerprint"),
        "check": check, "provenance": provenance({"run_dir": cfg.run_dir, "format": cfg.format, "out": out}),
    }
    write_text(out.with_name(out.name + ".json"), json.dumps(sidecar, indent=2, default=str))
    return sidecar
