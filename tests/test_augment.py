"""Per-sample crops and colour augmentation: independent draws, seeded, reproducible from stored parameters."""
import torch

from pipeline.data.augment import (COLOR_PARAMS, center_crops, color_augment, render, sample_color,
                              sample_crops)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _images(n=8, size=16, c=3):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, size, size, c), generator=g, dtype=torch.uint8)


def test_two_samples_of_one_batch_get_different_crops():
    crops = sample_crops(8, torch.Generator().manual_seed(0), (16, 16))
    assert crops.shape == (8, 5)
    assert len({tuple(r.tolist()) for r in crops[:, :4]}) == 8
    x = render(_images(), crops, 12, MEAN, STD)
    same = render(_images()[:1].repeat(8, 1, 1, 1), crops, 12, MEAN, STD)  # one image, eight crops
    assert x.shape == (8, 3, 12, 12) and not torch.allclose(same[0], same[1])


def test_seed_reproduces_crops_and_colour():
    a = sample_crops(4, torch.Generator().manual_seed(5), (16, 16)), sample_color(4, torch.Generator().manual_seed(5))
    b = sample_crops(4, torch.Generator().manual_seed(5), (16, 16)), sample_color(4, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_stored_parameters_reproduce_pixels():
    g = torch.Generator().manual_seed(3)
    crops, color = sample_crops(8, g, (16, 16)), sample_color(8, g, p_blur=1.0)
    first = render(_images(), crops, 12, MEAN, STD, color=color)
    again = render(_images(), crops.clone(), 12, MEAN, STD, color=color.clone())
    assert torch.equal(first, again)


def test_center_crop_full_image_is_identity():
    x = _images(2, 8)
    out = render(x, center_crops(2), 8, (0, 0, 0), (1, 1, 1))
    assert torch.allclose(out, x.permute(0, 3, 1, 2).float() / 255, atol=1e-5)


def test_colour_parameters_are_per_sample_and_follow_probabilities():
    p = sample_color(2000, torch.Generator().manual_seed(0))
    assert p.shape == (2000, COLOR_PARAMS)
    assert abs(p[:, 0].mean() - 0.8) < 0.05 and abs(p[:, 9].mean() - 0.2) < 0.05 and abs(p[:, 10].mean() - 0.5) < 0.05
    on = p[:, 0] > 0
    assert p[on, 1].min() >= 0.6 and p[on, 1].max() <= 1.4 and p[on, 4].abs().max() <= 0.1
    assert len(set(p[on, 1].tolist())) > 100  # one draw per sample, not one per batch
    assert (torch.sort(p[:, 5:9], 1).values == torch.arange(4.0)).all()  # a permutation of the jitter ops


def identity_color(n: int) -> torch.Tensor:
    """(n, COLOR_PARAMS) parameters that change nothing (the evaluation view)."""
    row = torch.tensor([0, 1, 1, 1, 0, 0, 1, 2, 3, 0, 0, 0], dtype=torch.float32)
    return row.repeat(n, 1)


def test_identity_colour_changes_nothing_and_grayscale_is_grey():
    x = _images(4).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(color_augment(x, identity_color(4)), x)
    p = identity_color(4)
    p[:, 9] = 1
    g = color_augment(x, p)
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])


def test_colour_augment_differs_per_sample_and_stays_in_range():
    x = _images(1).permute(0, 3, 1, 2).float().repeat(16, 1, 1, 1) / 255
    y = color_augment(x, sample_color(16, torch.Generator().manual_seed(2)))
    assert y.min() >= 0 and y.max() <= 1
    assert len({round(float(v), 5) for v in y.mean((1, 2, 3))}) > 8
