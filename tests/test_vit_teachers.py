"""DINO and DINOv2 ViT teachers through `compress-cache extract`: random weights in each released key layout
(tiny widths and depths), every cached row compared with an independent float64 forward written in
tests/vit_reference.py, at the trained grid and at an interpolated one; layouts of the same weights agree; wrong
files are refused with the keys named; the full-size key sets are recognised (shapes only)."""
import argparse

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.models.checkpoint_formats import detect, infer_arch, map_checkpoint
from stages.cli import main
from pipeline.data.eval_view import eval_view
from pipeline.data.imagestore import ImageStore, write_image_store
from pipeline.models.backbones import build_backbone
from tests.vit_reference import official_shapes, random_weights, reference_rows

# tiny releases: patch 4, width 128 (2 heads of 64), depth 2; grid 4 (DINO, 16 px) and 5 (DINOv2, 20 px)
DINO = dict(patch=4, width=128, depth=2, grid=4)
DINOV2 = dict(patch=4, width=128, depth=2, grid=5, layerscale=True, mask_token=True)
LAYOUTS = {
    "dino": (DINO, "dino"),
    "dinov2": (DINOV2, "dinov2"),
    "dinov2_reg": (DINOV2 | {"registers": 4}, "dinov2"),
    "dinov2_g_reg": (DINOV2 | {"registers": 4, "swiglu": True}, "dinov2"),  # ViT-g's SwiGLU, tiny
}


@pytest.fixture(scope="module")
def root(module_dir):
    root = module_dir
    images = np.random.default_rng(0).integers(0, 256, (5, 30, 26, 3), dtype=np.uint8)
    write_image_store(root / "data", images, [0, 1, 0, 1, 0], [0] * 5, [f"i{i}" for i in range(5)],
                      dataset="tiny", classes=["x", "y"], source="test")
    for name, (spec, _) in LAYOUTS.items():
        torch.save(random_weights(official_shapes(**spec), seed=len(name)), root / f"{name}.pth")
    return root


def _extract(root, weights, out, *extra):
    return CliRunner().invoke(main, ["extract", "--data", str(root / "data"), "--weights", str(weights),
                                     "--out", str(root / out), "--dtype", "float32", "--batch-size", "2",
                                     "--device", "cpu", "--no-progress", *map(str, extra)])


def _rows(root, out):
    from cache.load import load_embeddings
    z, attrs = load_embeddings(root / out)
    return z.double(), attrs


def _inputs(root, preprocessing):
    return eval_view(torch.from_numpy(ImageStore(root / "data").read()), preprocessing)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("size", ["native", "interpolated"])
def test_rows_match_an_independent_forward(root, layout, size):
    spec, fmt = LAYOUTS[layout]
    px = spec["patch"] * (spec["grid"] if size == "native" else spec["grid"] + 3)
    out = f"{layout}_{size}.zarr"
    result = _extract(root, root / f"{layout}.pth", out, "--input-size", px)
    assert result.exit_code == 0, result.output
    z, attrs = _rows(root, out)
    t = attrs["teacher"]
    assert t["format"] == fmt and t["embed_dim"] == spec["width"] and t["preprocessing"]["input_size"] == px
    assert t["preprocessing"]["resize"] == "bicubic" and t["preprocessing"]["crop_fraction"] == 0.875
    w = torch.load(root / f"{layout}.pth", weights_only=True)
    x = _inputs(root, t["preprocessing"])
    ref = reference_rows(w, x)
    assert (z - ref).abs().max() <= 1e-4
    if size == "interpolated":  # the +0.1 offset is visible: resampling to the size instead would fail here
        assert (reference_rows(w, x, offset=None) - ref).abs().max() > 1e-3


def test_cls_avgpool_embedding(root):
    result = _extract(root, root / "dinov2_reg.pth", "avg.zarr", "--input-size", 24, "--embedding", "cls+avgpool")
    assert result.exit_code == 0, result.output
    z, attrs = _rows(root, "avg.zarr")
    assert attrs["teacher"]["embedding"] == "cls+avgpool" and z.shape[1] == 2 * DINOV2["width"]
    w = torch.load(root / "dinov2_reg.pth", weights_only=True)
    ref = reference_rows(w, _inputs(root, attrs["teacher"]["preprocessing"]), embedding="cls+avgpool")
    assert (z - ref).abs().max() <= 1e-4


def test_dino_training_checkpoint_gives_the_backbone_files_rows(root):
    """The EMA teacher of a DINO training checkpoint (`teacher` -> backbone.*, head.* dropped, an argparse
    `args`, the student under DDP's module.) and the released backbone file of the same weights."""
    w = torch.load(root / "dino.pth", weights_only=True)
    head = {"head.mlp.0.weight": torch.randn(256, 128), "head.mlp.0.bias": torch.zeros(256),
            "head.last_layer.weight_g": torch.ones(1000, 1), "head.last_layer.weight_v": torch.randn(1000, 256)}
    ckpt = {"teacher": {f"backbone.{k}": v for k, v in w.items()} | head,
            "student": {f"module.backbone.{k}": v + 1 for k, v in w.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
            "epoch": 7, "args": argparse.Namespace(arch="vit_small", patch_size=4, out_dim=1000),
            "dino_loss": {"center": torch.zeros(1, 1000)}}
    torch.save(ckpt, root / "dino_train.pth")
    for name in ("dino", "dino_train"):
        result = _extract(root, root / f"{name}.pth", f"{name}_same.zarr", "--input-size", 20)
        assert result.exit_code == 0, result.output
    a, attrs = _rows(root, "dino_same.zarr")
    b, attrs_b = _rows(root, "dino_train_same.zarr")
    assert torch.equal(a, b) and attrs_b["teacher"]["format"] == "dino"


def test_timm_layout_of_the_same_weights(root):
    """timm's vit_tiny_patch16_224 holds DINO's key names plus a classifier `head`: detected as timm, needs
    --teacher timm:NAME, takes timm's preprocessing for that name, and at the trained size gives the rows of the
    architecture, as the same weights in the DINO layout do."""
    w = random_weights(official_shapes(patch=16, width=192, depth=12, grid=14), seed=3)
    torch.save(w | {"head.weight": torch.randn(1000, 192), "head.bias": torch.zeros(1000)}, root / "timm.pth")
    torch.save(w, root / "dino_tiny.pth")
    refused = _extract(root, root / "timm.pth", "timm_no_arch.zarr")
    assert refused.exit_code == 1 and "--teacher timm:NAME" in refused.output
    result = _extract(root, root / "timm.pth", "timm.zarr", "--teacher", "timm:vit_tiny_patch16_224",
                      "--input-size", 224)
    assert result.exit_code == 0, result.output
    result = _extract(root, root / "dino_tiny.pth", "dino_tiny.zarr", "--input-size", 224)
    assert result.exit_code == 0, result.output
    a, attrs = _rows(root, "timm.zarr")
    b, attrs_b = _rows(root, "dino_tiny.zarr")
    assert attrs["teacher"]["format"] == "timm" and attrs_b["teacher"]["arch"] == "vit-p16-w192-d12-g14"
    pre = attrs["teacher"]["preprocessing"]  # timm's config of the name: mean/std 0.5, crop 0.9, bicubic
    assert (pre["mean"], pre["crop_fraction"], pre["resize"]) == ([0.5] * 3, 0.9, "bicubic")
    assert (a - reference_rows(w, _inputs(root, pre))).abs().max() <= 1e-4
    assert (b - reference_rows(w, _inputs(root, attrs_b["teacher"]["preprocessing"]))).abs().max() <= 1e-4


@pytest.mark.parametrize("teacher, listed", [
    ("dino_vits16", ["of another shape", "patch_embed.proj.weight (128, 3, 4, 4) vs (384, 3, 16, 16)",
                     "its keys look like a vit-p4-w128-d2-g4; pass --teacher vit-p4-w128-d2-g4"]),
    ("vit-p4-w128-d3-g4", ["missing", "blocks.2.norm1.weight"]),
    ("vit-p4-w128-d2-g4-ls", ["missing", "blocks.0.ls1.gamma"]),
])
def test_wrong_teacher_is_refused_with_the_keys(root, teacher, listed):
    result = _extract(root, root / "dino.pth", f"wrong_{teacher}.zarr", "--teacher", teacher, "--input-size", 16)
    assert result.exit_code == 1 and result.output.startswith("Error:") and "Traceback" not in result.output
    for text in listed:
        assert text in result.output
    assert not (root / f"wrong_{teacher}.zarr").exists()


def test_missing_key_is_refused_with_its_name(root):
    w = torch.load(root / "dinov2.pth", weights_only=True)
    del w["blocks.1.attn.proj.weight"]
    torch.save(w, root / "dinov2_missing.pth")
    result = _extract(root, root / "dinov2_missing.pth", "missing.zarr", "--input-size", 20)
    assert result.exit_code == 1 and "1 missing (blocks.1.attn.proj.weight)" in result.output


def test_input_size_must_be_a_multiple_of_the_patch(root):
    result = _extract(root, root / "dino.pth", "odd.zarr", "--input-size", 18)
    assert result.exit_code == 1 and "multiples of 4" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("spec, fmt, arch", [
    (dict(patch=16, width=384, depth=12, grid=14), "dino", "dino_vits16"),
    (dict(patch=8, width=768, depth=12, grid=28), "dino", "dino_vitb8"),
    (dict(patch=14, width=768, depth=12, grid=37, layerscale=True, mask_token=True), "dinov2", "dinov2_vitb14"),
    (dict(patch=14, width=384, depth=12, grid=37, layerscale=True, mask_token=True, registers=4), "dinov2",
     "dinov2_vits14_reg"),
    (dict(patch=14, width=1536, depth=40, grid=37, layerscale=True, mask_token=True, swiglu=True), "dinov2",
     "dinov2_vitg14"),
])
def test_released_key_sets_are_recognised(spec, fmt, arch):
    sd = {k: torch.empty(s, device="meta") for k, s in official_shapes(**spec).items()}
    assert detect(sd)[0] == fmt
    mapped = map_checkpoint(sd)
    assert infer_arch(mapped.backbone) == arch
    with torch.device("meta"):
        model = build_backbone(arch).net.state_dict()
    assert {k: tuple(v.shape) for k, v in model.items()} == {k: tuple(v.shape) for k, v in mapped.backbone.items()}


def test_vit_imported_as_a_teacher_artifact_keeps_its_rows(root):
    """`compress-cache teacher --weights` writes a model file (arch dinov2 name, bicubic preprocessing) that
    `extract` reads to the rows of the released file."""
    result = CliRunner().invoke(main, ["teacher", "--data", str(root / "data"), "--out", str(root / "imported"),
                                       "--weights", str(root / "dinov2_reg.pth"), "--input-size", "20"])
    assert result.exit_code == 0, result.output
    for weights, out in ((root / "imported" / "model.pt", "imported.zarr"), (root / "dinov2_reg.pth", "direct.zarr")):
        result = _extract(root, weights, out, "--input-size", 20)
        assert result.exit_code == 0, result.output
    a, attrs = _rows(root, "imported.zarr")
    b, attrs_b = _rows(root, "direct.zarr")
    assert attrs["teacher"]["format"] == "compress-cache" and attrs["teacher"]["arch"] == "vit-p4-w128-d2-g5-r4-ls"
    assert attrs["teacher"]["preprocessing"] == attrs_b["teacher"]["preprocessing"]
    assert torch.equal(a, b)
