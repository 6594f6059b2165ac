"""The evaluation view is torchvision's Resize(short side) -> CenterCrop with the release's filter, and teacher
extraction (view 0) and `eval` embed exactly those pixels."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.runtime.errors import CompressError
from pipeline.data.eval_view import eval_view, resize_side, resized_hw
from pipeline.data.imagestore import write_image_store
from pipeline.models.modelfile import default_preprocessing, load_model, save_model
from pipeline.models.backbones import build_backbone
from pipeline.models.teachers import format_preprocessing

PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def _smooth_image(shape, seed=0) -> np.ndarray:
    """Smooth random blobs (not white noise, where every filter looks alike; no hard edges, where PIL clips
    bicubic overshoot between its two passes), uint8 (H, W, C)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (shape[0] // 3, shape[1] // 3, shape[2]), dtype=np.uint8)
    big = Image.fromarray(small.squeeze(-1) if shape[2] == 1 else small).resize((shape[1], shape[0]), Image.BILINEAR)
    x = np.asarray(big)
    return x[..., None] if x.ndim == 2 else x


def _pil_reference(image: np.ndarray, pre: dict) -> np.ndarray:
    """PIL's Resize(short side, filter) -> CenterCrop, as the official evaluation scripts compute it."""
    h, w = resized_hw(image.shape[0], image.shape[1], resize_side(pre))
    pil = Image.fromarray(image.squeeze(-1) if image.shape[2] == 1 else image)
    out = np.asarray(pil.resize((w, h), PIL_FILTERS[pre["resize"]]), dtype=np.float32)
    size = pre["input_size"]
    top, left = int(round((h - size) / 2)), int(round((w - size) / 2))
    out = out[top:top + size, left:left + size]
    return out[..., None] if out.ndim == 2 else out


@pytest.mark.parametrize("shape, size, fraction", [((37, 50, 3), 16, 0.8), ((64, 48, 1), 24, 0.875),
                                                   ((12, 12, 3), 32, 1.0)])
@pytest.mark.parametrize("resize", ["bilinear", "bicubic"])
def test_matches_pil_resize_then_centre_crop(shape, size, fraction, resize):
    image = _smooth_image(shape)
    pre = {"mean": [0.0] * 3, "std": [1.0] * 3, "input_size": size, "crop_fraction": fraction, "resize": resize}
    x = eval_view(torch.from_numpy(image.copy())[None], pre)[0].permute(1, 2, 0).numpy() * 255
    assert x.shape == (size, size, 3)
    ref = _pil_reference(image, pre)
    assert np.abs(x - ref).max() <= 1.0 + 1e-3  # PIL and torch round their antialiased sums differently
    other = {**pre, "resize": "bicubic" if resize == "bilinear" else "bilinear"}
    assert np.abs(x - _pil_reference(image, other)).max() > 2  # the filter is not ignored


def test_imagenet_resolution_is_resize_256_centre_crop_224():
    pre = default_preprocessing(224)
    assert pre["crop_fraction"] == 0.875 and resize_side(pre) == 256 and pre["resize"] == "bilinear"
    assert default_preprocessing(32)["crop_fraction"] == 1.0  # small images are evaluated whole
    assert format_preprocessing("dino")["resize"] == "bicubic"
    assert format_preprocessing("moco")["resize"] == format_preprocessing("swav")["resize"] == "bilinear"
    with pytest.raises(CompressError, match="crop_fraction 1.5"):
        eval_view(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), default_preprocessing(8, crop_fraction=1.5))
    with pytest.raises(CompressError, match="'lanczos'"):
        eval_view(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), default_preprocessing(8, resize="lanczos"))


def test_extract_view_zero_and_eval_embed_the_same_pixels(tmp_path):
    from cache.load import load_embeddings
    from stages.evaluate import EvaluateConfig, evaluate
    from stages.extract import ExtractConfig, extract
    n = 24
    images = np.stack([_smooth_image((12, 12, 3), seed=i) for i in range(n)])
    labels = np.arange(n) % 2
    m = write_image_store(tmp_path / "data", images, labels, (np.arange(n) % 4 == 3).astype(np.uint8),
                          [f"i{i}" for i in range(n)], dataset="tiny", classes=["a", "b"], source="test")
    pre = default_preprocessing(8, crop_fraction=0.75)  # 12 px -> Resize(10) -> CenterCrop(8)
    save_model(tmp_path / "t.pt", build_backbone("resnet18_w16", small_input=True, seed=1), pre,
               data_fingerprint=m["fingerprint"], method="test")
    extract(ExtractConfig(data=tmp_path / "data", weights=tmp_path / "t.pt", out=tmp_path / "t.zarr", views=2,
                          batch_size=8, device="cpu", progress=False))
    cached, _ = load_embeddings(tmp_path / "t.zarr")
    evaluate(EvaluateConfig(data=tmp_path / "data", out=tmp_path / "m.json", model=tmp_path / "t.pt",
                            batch_size=8, probe_epochs=1, device="cpu"))
    evaluated = np.load(tmp_path / "m.features.npy")
    np.testing.assert_array_equal(cached[:, 0].numpy(), evaluated)
    model, _ = load_model(tmp_path / "t.pt")
    with torch.no_grad():
        ref = F.normalize(model(eval_view(torch.from_numpy(images), pre)), dim=1)
    assert (torch.from_numpy(evaluated).float() - ref).abs().max() < 2e-3  # fp16 storage
