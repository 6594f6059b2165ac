"""Keeping the whole image: `prepare --fit letterbox` stores each photo whole in the square with its valid region;
crops, renders and the evaluation view stay inside the region; square and centre-fit stores are unchanged."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import stages.prepare as stage
import stages.train as train_stage
from pipeline.data.augment import RECIPES, center_crops, render, sample_crops, sample_views
from pipeline.data.eval_view import eval_view
from pipeline.data.imagestore import ImageStore, fingerprint
from pipeline.data.sources.decode import PAD, decode_file
from pipeline.models.modelfile import default_preprocessing
from pipeline.runtime.errors import CompressError
from stages.prepare import PrepareConfig, prepare
from stages.train import train
from stages.train_config import config_from_dict
from tests.prepare_fixtures import kill_prepare_at
from tests.train_fixtures import cli

SHAPES = [(30, 40), (40, 30), (12, 48), (48, 12), (20, 20), (9, 31)]  # (H, W): 3:4, 4:3, 1:4, 4:1, square, odd


def _tree(root: Path, shapes, grey: bool = False) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k, (h, w) in enumerate(shapes):
        folder = root / ("a" if k % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        x = rng.integers(1, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)  # no 0: padding is told apart
        paths.append(folder / f"{k:04d}.png")
        Image.fromarray(x).save(paths[-1])
    return paths


def _boxes(crops: torch.Tensor, hw) -> torch.Tensor:
    """(n, 4) crop boxes (top, left, bottom, right) in pixels of the stored image."""
    cy, cx, h, w = (crops[:, k].double() for k in range(4))
    H, W = hw
    return torch.stack([(cy - h / 2) * H, (cx - w / 2) * W, (cy + h / 2) * H, (cx + w / 2) * W], dim=1)


def _inside(crops: torch.Tensor, regions, hw, tol: float = 1e-3) -> bool:
    b, r = _boxes(crops, hw), torch.as_tensor(regions, dtype=torch.float64)
    return bool(((b[:, 0] >= r[:, 0] - tol) & (b[:, 1] >= r[:, 1] - tol) & (b[:, 2] <= r[:, 0] + r[:, 2] + tol)
                 & (b[:, 3] <= r[:, 1] + r[:, 3] + tol)).all())


# ---------------------------------------------------------------------------------------------------- prepare

def test_letterboxed_rows_keep_the_whole_image_and_record_its_region(tmp_path):
    paths = _tree(tmp_path / "src", SHAPES)
    m = prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "s", size=16,
                              workers=0))
    store = ImageStore(tmp_path / "s")
    assert m["fit"] == "letterbox" and "regions_sha256" in m["integrity"]
    regions, images = store.regions(), store.read()
    assert regions.shape == (len(SHAPES), 4) and regions.dtype == np.int32
    rows = {i: k for k, i in enumerate(store.ids())}
    for p in paths:
        k = rows[p.relative_to(tmp_path / "src").as_posix()]
        src = np.asarray(Image.open(p))
        h, w = src.shape[:2]
        y0, x0, rh, rw = regions[k].tolist()
        assert max(rh, rw) == 16 and abs(rh / rw - h / w) <= 1 / min(rh, rw)  # long side 16, aspect kept
        assert (y0, x0) == ((16 - rh) // 2, (16 - rw) // 2)  # centred
        inside = np.zeros((16, 16), bool)
        inside[y0:y0 + rh, x0:x0 + rw] = True
        assert (images[k][~inside] == PAD).all()  # padding outside the region
        whole = np.asarray(Image.fromarray(src).resize((rw, rh), Image.BICUBIC, reducing_gap=None))
        assert np.array_equal(images[k][y0:y0 + rh, x0:x0 + rw], whole)  # the whole photo inside it
        assert np.array_equal(images[k], decode_file(str(p), 16)[0])
    assert store.problems() == []
    assert store.fingerprint == fingerprint(store.ids(), images, store.labels, store.split, regions)
    assert store.fingerprint != fingerprint(store.ids(), images, store.labels, store.split)  # regions count


def test_edited_or_removed_regions_are_refused(tmp_path):
    _tree(tmp_path / "src", SHAPES)
    prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "s", size=16, workers=0))
    with h5py.File(tmp_path / "s" / "images.h5", "a") as f:
        r = f["regions"][:]
        r[0, 2] -= 1
        f["regions"][:] = r
    with pytest.raises(CompressError, match="valid regions .* different from the manifest"):
        ImageStore(tmp_path / "s").regions()
    assert any("valid regions" in p for p in ImageStore(tmp_path / "s").problems())
    with h5py.File(tmp_path / "s" / "images.h5", "a") as f:
        del f["regions"]
    with pytest.raises(CompressError, match="valid regions .* missing"):
        ImageStore(tmp_path / "s").regions()


def test_centre_fit_and_square_images_store_no_regions(tmp_path):
    paths = _tree(tmp_path / "src", SHAPES)
    m = prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "c", size=16,
                              workers=0, fit="centre"))
    store = ImageStore(tmp_path / "c")
    assert m["fit"] == "centre" and store.regions() is None and "regions_sha256" not in m["integrity"]
    rows = dict(zip(store.ids(), store.read()))
    for p in paths:  # today's centre square: short side to 16, centre crop
        assert np.array_equal(rows[p.relative_to(tmp_path / "src").as_posix()], decode_file(str(p), 16, "centre")[0])
    # square photos letterbox to full regions: the store is the centre-fit store, byte for byte
    _tree(tmp_path / "sq", [(20, 20), (33, 33), (7, 7)], grey=True)
    a = prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "sq", out=tmp_path / "a", size=16, workers=0))
    b = prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "sq", out=tmp_path / "b", size=16, workers=0,
                              fit="centre"))
    assert a["fit"] == "letterbox" and ImageStore(tmp_path / "a").regions() is None
    assert a["fingerprint"] == b["fingerprint"] and a["integrity"] == b["integrity"]
    # square embedded sources keep the centre fit by default
    assert prepare(PrepareConfig(dataset="digits", out=tmp_path / "d", size=6, limit=20))["fit"] == "centre"
    assert ImageStore(tmp_path / "d").regions() is None


def test_non_square_hdf5_rows_are_letterboxed_by_default(tmp_path):
    rng = np.random.default_rng(2)
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["images"] = rng.integers(1, 256, (10, 6, 18), dtype=np.uint8)
        f["labels"] = np.arange(10) % 2
    m = prepare(PrepareConfig(dataset="hdf5", source=tmp_path / "in.h5", out=tmp_path / "s", size=12))
    store = ImageStore(tmp_path / "s")
    assert m["fit"] == "letterbox" and (store.regions() == [4, 0, 4, 12]).all()
    x = store.read()[..., 0]
    assert (x[:, :4] == PAD).all() and (x[:, 8:] == PAD).all() and (x[:, 4:8] > 0).all()
    c = prepare(PrepareConfig(dataset="hdf5", source=tmp_path / "in.h5", out=tmp_path / "c", size=12, fit="centre"))
    assert c["fit"] == "centre" and ImageStore(tmp_path / "c").regions() is None


def test_fit_without_size_is_a_one_line_error(tmp_path):
    _tree(tmp_path / "src", [(10, 10)])
    with pytest.raises(CompressError, match="--fit letterbox .*--size"):
        prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "s", fit="letterbox"))
    with pytest.raises(CompressError, match="--fit 'sideways'"):
        prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "s", size=8,
                              fit="sideways"))


# ---------------------------------------------------------------------------------------------------- resume

def test_a_killed_letterboxed_prepare_resumes_to_the_same_store(tmp_path):
    n = 10000
    rng = np.random.default_rng(1)
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["images"] = rng.integers(0, 256, (n, 4, 16, 3), dtype=np.uint8)
        f["labels"] = rng.integers(0, 10, n)
    args = ["--dataset", "hdf5", "--source", str(tmp_path / "src.h5"), "--size", "8", "--block", "50",
            "--workers", "0"]
    out = tmp_path / "killed"
    done = kill_prepare_at(args, out, n // 10)
    assert 0 < done < n and not (out / "manifest.json").exists()
    resumed = prepare(PrepareConfig(dataset="hdf5", source=tmp_path / "src.h5", out=out, size=8, block=50,
                                    workers=0))
    whole = prepare(PrepareConfig(dataset="hdf5", source=tmp_path / "src.h5", out=tmp_path / "whole", size=8,
                                  workers=0))
    assert resumed["fingerprint"] == whole["fingerprint"] and resumed["integrity"] == whole["integrity"]
    a, b = ImageStore(out), ImageStore(tmp_path / "whole")
    assert np.array_equal(a.regions(), b.regions()) and (a.regions() == [3, 0, 2, 8]).all()  # 4x16 -> 2x8, centred
    assert np.array_equal(a.read(), b.read()) and a.problems() == []


def test_an_interrupted_letterboxed_imagefolder_resumes_to_the_same_store(tmp_path, monkeypatch):
    shapes = [SHAPES[k % len(SHAPES)] for k in range(24)]
    _tree(tmp_path / "src", shapes)
    cfg = dict(dataset="imagefolder", source=tmp_path / "src", size=16, workers=0, block=5)
    real_plan, calls = stage.plan, []

    def failing_plan(*a, **k):  # the third window never arrives: as if the process died there
        p = real_plan(*a, **k)
        read = p.read
        p.read = lambda lo, hi: (_ for _ in ()).throw(KeyboardInterrupt) if calls.append(lo) or lo >= 10 \
            else read(lo, hi)
        return p
    monkeypatch.setattr(stage, "plan", failing_plan)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareConfig(out=tmp_path / "cut", **cfg))
    monkeypatch.setattr(stage, "plan", real_plan)
    assert json.loads((tmp_path / "cut" / "prepare-spool.json").read_text())["done"] == 10
    resumed = prepare(PrepareConfig(out=tmp_path / "cut", **cfg))
    whole = prepare(PrepareConfig(out=tmp_path / "whole", **{**cfg, "block": None}))
    assert resumed["fingerprint"] == whole["fingerprint"] and resumed["integrity"] == whole["integrity"]
    assert np.array_equal(ImageStore(tmp_path / "cut").regions(), ImageStore(tmp_path / "whole").regions())


# ---------------------------------------------------------------------------------------------------- crops

HW = (64, 64)
REGIONS = [(24, 0, 16, 64), (0, 24, 64, 16), (8, 0, 48, 64), (0, 0, 64, 64), (30, 2, 3, 60), (5, 7, 40, 9)]


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0)])
def test_sampled_crops_stay_in_the_region_and_reach_all_of_it(scale):
    per = 1000
    regions = torch.tensor(REGIONS, dtype=torch.int32).repeat_interleave(per, 0)
    for seed in range(3):
        crops = sample_crops(len(regions), torch.Generator().manual_seed(seed), HW, scale, regions=regions)
        assert _inside(crops, regions, HW)
        b, r = _boxes(crops, HW), regions.double()
        for k in range(len(REGIONS)):  # every edge of every region is touched by some crop
            bk, (y0, x0, h, w) = b[k * per:(k + 1) * per], r[k * per]
            if w / h > 10:  # no draw fits a 20:1 strip: torchvision's fallback, 4:3 at its centre, every time
                assert torch.allclose((bk[:, 1] + bk[:, 3]) / 2, x0 + w / 2) and torch.allclose(bk[:, 2] - bk[:, 0], h)
                assert torch.allclose(bk[:, 3] - bk[:, 1], h * 4 / 3)
                continue
            assert bk[:, 0].min() < y0 + 0.5 and bk[:, 1].min() < x0 + 0.5
            assert bk[:, 2].max() > y0 + h - 0.5 and bk[:, 3].max() > x0 + w - 0.5
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (r[:, 2] * r[:, 3])
        aspect = (b[:, 3] - b[:, 1]) / (b[:, 2] - b[:, 0])
        assert (area <= 1 + 1e-5).all() and (aspect >= 3 / 4 - 1e-4).all() and (aspect <= 4 / 3 + 1e-4).all()
        assert (area[regions[:, 0] == 8] >= scale[0] - 1e-5).all()  # drawn relative to the region's area


def test_without_regions_the_crops_use_the_whole_image_as_before():
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    full = torch.tensor([0, 0, *HW]).repeat(500, 1)
    assert torch.allclose(sample_crops(500, g(), HW, regions=full), sample_crops(500, g(), HW), atol=1e-6)
    inner = torch.tensor([8, 0, 48, 64]).repeat(500, 1)  # the old crops ignore the padding: some land in it
    assert not _inside(sample_crops(500, g(), HW), inner, HW)


def test_a_process_share_draws_the_same_crops_as_the_whole_batch():
    regions = torch.tensor(REGIONS).repeat(8, 1)
    whole, colour = sample_views(RECIPES["mocov2"], len(regions), torch.Generator().manual_seed(1), HW, 0.2, True,
                                 regions=regions)
    for rank in range(4):
        mine = slice(rank * 12, (rank + 1) * 12)
        part, c = sample_views(RECIPES["mocov2"], len(regions), torch.Generator().manual_seed(1), HW, 0.2, True,
                               regions=regions[mine], share=mine)
        assert torch.equal(part, whole[mine]) and torch.equal(c, colour[mine])


def test_rendered_crops_never_show_the_padding():
    regions = torch.tensor(REGIONS).repeat(40, 1)
    images = torch.full((len(regions), *HW, 1), PAD, dtype=torch.uint8)
    for k, (y0, x0, h, w) in enumerate(regions.tolist()):
        images[k, y0:y0 + h, x0:x0 + w] = 255
    crops = sample_crops(len(regions), torch.Generator().manual_seed(0), HW, (0.08, 1.0), regions=regions)
    out = render(images, crops, 32, (0, 0, 0), (1, 1, 1), regions=regions)  # upsampled edges included
    assert out.min() > 1 - 1e-5  # float rounding of the bilinear weights aside, no padding pixel blends in
    centre = render(images, center_crops(len(regions), 0.875, HW, regions), 32, (0, 0, 0), (1, 1, 1),
                    regions=regions)
    assert centre.min() > 1 - 1e-5
    assert render(images, crops, 32, (0, 0, 0), (1, 1, 1)).min() < 0.9  # without the clamp the padding blends in


def test_the_evaluation_view_of_a_letterboxed_row_is_its_region_resized_and_centre_cropped():
    rng = np.random.default_rng(3)
    regions = torch.tensor([[24, 0, 16, 64], [0, 24, 64, 16], [24, 0, 16, 64], [0, 0, 64, 64]])
    images = torch.zeros(4, *HW, 3, dtype=torch.uint8)
    for k, (y0, x0, h, w) in enumerate(regions.tolist()):
        images[k, y0:y0 + h, x0:x0 + w] = torch.from_numpy(rng.integers(1, 256, (h, w, 3), dtype=np.uint8))
    for pre in (default_preprocessing(12), default_preprocessing(224)):
        got = eval_view(images, pre, regions=regions)
        for k, (y0, x0, h, w) in enumerate(regions.tolist()):  # row by row, the region as its own photo
            assert torch.equal(got[k], eval_view(images[k:k + 1, y0:y0 + h, x0:x0 + w], pre)[0])
        assert torch.equal(eval_view(images, pre, regions=torch.tensor([[0, 0, *HW]] * 4)), eval_view(images, pre))


# ---------------------------------------------------------------------------------------------------- stages

def test_extract_and_train_on_a_letterboxed_store_stay_in_the_regions(tmp_path, monkeypatch):
    from cache.load import load_crops
    from pipeline.models.backbones import build_backbone
    from pipeline.models.modelfile import save_model
    _tree(tmp_path / "src", [SHAPES[k % 4] for k in range(64)])
    prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "data", size=16,
                          workers=0))
    store = ImageStore(tmp_path / "data")
    save_model(tmp_path / "t.pt", build_backbone("resnet18", small_input=True, seed=1), default_preprocessing(8))
    cli("extract", "--data", tmp_path / "data", "--weights", tmp_path / "t.pt", "--out", tmp_path / "t2.zarr",
        "--views", "3", "--batch-size", "64", "--device", "cpu", "--no-progress")
    stored = load_crops(tmp_path / "t2.zarr")  # (N, 3, 5): view 0 the region's centre, then random views
    for v in range(3):
        assert _inside(stored[:, v], store.regions(), store.shape[1:3])
    assert torch.allclose(stored[:, 0], center_crops(store.n, 1.0, store.shape[1:3], store.regions()))

    seen = []
    real_render = train_stage.render

    def spy(images, crops, *args, regions=None, **kw):
        seen.append((crops.clone(), regions))
        return real_render(images, crops, *args, regions=regions, **kw)
    monkeypatch.setattr(train_stage, "render", spy)
    for method, cache in (("compress-2q", "t2.zarr"), ("supervised", None)):
        seen.clear()
        train(config_from_dict({"data": tmp_path / "data", "cache": cache and tmp_path / cache, "preset": "tiny",
                                "out": tmp_path / method, "method": method, "device": "cpu", "tensorboard": False,
                                "student": "resnet18_w16"}))
        assert seen
        known = {tuple(r) for r in store.regions().tolist()}
        for crops, regions in seen:
            assert regions is not None and {tuple(r) for r in regions.tolist()} <= known
            assert _inside(crops, regions, store.shape[1:3])
