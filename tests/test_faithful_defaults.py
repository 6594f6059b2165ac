"""The settings around the objective are the paper's where they say so: no dropout in any embedding, the
ImageNet stem and crop scale 0.08 by default, MoCo v2's augmentations drawn per sample and really applied."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from pipeline.data import augment
from pipeline.data.augment import RECIPES, render, sample_views
from stages.cli import main
from stages.cli.train import command as train_command
from pipeline.methods.compress import CompRess
from pipeline.models.backbones import build_backbone
from stages.train_config import config_from_dict
from tests.train_fixtures import TINY, make_tiny

# every student architecture `train --help` names
STUDENTS = ["alexnet", "mobilenet_v2", "resnet18", "resnet34", "resnet50", "shufflenet_v2_x0_5", "resnet18_w16",
            "resnet18_w32"]


@pytest.fixture(scope="module")
def tiny(module_dir):
    return make_tiny(module_dir)


@pytest.mark.parametrize("arch", STUDENTS)
def test_train_mode_embedding_is_a_function_of_the_batch(arch):
    net = build_backbone(arch, small_input=True, seed=0).train()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a, b), f"{arch}: two train-mode passes over one batch differ (dropout?)"
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in net.modules())


def test_momentum_student_embeds_without_dropout_and_with_batch_statistics():
    student = build_backbone("mobilenet_v2", small_input=True, seed=0)  # torchvision's carries Dropout(0.2)
    method = CompRess(student, teacher_dim=16, variant="2q", K=32).train()
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    t = nn.functional.normalize(torch.randn(8, 16), dim=1)
    rows = []
    for _ in range(2):
        method([x], t)
        rows.append(method._pending["student"])
    assert torch.equal(rows[0], rows[1])
    twin = method.momentum_student
    assert not twin.training
    bns = [m for m in twin.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(m.training for m in bns)


@pytest.mark.parametrize("channels", [1, 3])
def test_mocov2_draws_per_sample_and_a_seed_reproduces_the_batch(channels):
    images = torch.randint(0, 256, (1, 16, 16, channels), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(3)).repeat(6, 1, 1, 1)  # one image, six times

    def batch(seed):
        crops, color = sample_views(RECIPES["mocov2"], 6, torch.Generator().manual_seed(seed), (16, 16), 0.2, True)
        return color, render(images, crops, 16, (0.5,) * 3, (0.25,) * 3, color=color)

    color, x = batch(7)
    assert color is not None and len(torch.unique(color[:, 1])) > 1  # brightness drawn per sample
    assert all(not torch.equal(x[0], x[i]) for i in range(1, 6))
    assert torch.equal(x, batch(7)[1]) and not torch.equal(x, batch(8)[1])
    crops, none = sample_views(RECIPES["crop-flip"], 6, torch.Generator().manual_seed(7), (16, 16), 0.08, True)
    assert none is None


def test_paper_preset_is_the_papers_network_and_crop():
    cfg = config_from_dict({"preset": "paper-imagenet", "student": "resnet18", "data": "d", "out": "o"})
    assert (cfg.small_input, cfg.crop_scale_min, cfg.input_size, cfg.augment) == (False, 0.08, 224, "crop-flip")
    net = build_backbone(cfg.student, cfg.small_input).net
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2)
    assert isinstance(net.maxpool, nn.MaxPool2d)
    # the same through the command line
    ctx = train_command.make_context("train", ["--data", "d", "--out", "o", "--preset", "paper-imagenet"])
    assert config_from_dict(ctx.params).small_input is False
    assert config_from_dict({"method": "moco", "data": "d", "out": "o"}).augment == "mocov2"
    assert config_from_dict({"method": "moco", "data": "d", "out": "o"}).crop_scale_min == 0.2


def test_train_help_shows_every_default():
    ctx = train_command.make_context("train", ["--data", "d", "--out", "o"])
    for param in train_command.get_params(ctx):
        if param.name in ("_click_default_help", "help", "preset", "data", "out"):
            continue
        record = param.get_help_record(ctx)
        assert record and "[default:" in record[1], param.name
    help_text = CliRunner().invoke(main, ["train", "--help"], terminal_width=200).output
    assert "[default: 10 x classes; paper: 16000]" in help_text and "[default: 0.01]" in help_text


@pytest.mark.parametrize("option,value", [("--batch-size", "0"), ("--milestones", "90,x"), ("--lr", "nan"),
                                          ("--epochs", "-1"), ("--tau", "0"), ("--ema", "2"),
                                          ("--input-size", "1"), ("--weight-decay", "inf")])
def test_bad_values_are_usage_errors_naming_the_option(tmp_path, option, value):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--out", str(out), option, value])
    assert result.exit_code == 2, result.output
    assert option in result.output and value in result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("method,recipe", [("moco", "mocov2"), ("compress-2q", "crop-flip")])
def test_the_recipe_is_applied_by_training_and_recorded(tiny, tmp_path, monkeypatch, method, recipe):
    calls = []
    real = augment.color_augment
    monkeypatch.setattr(augment, "color_augment", lambda x, p: calls.append(len(x)) or real(x, p))
    out = tmp_path / method
    result = CliRunner().invoke(main, ["train", "--data", str(tiny / "data"), "--cache", str(tiny / "t1.zarr"),
                                       "--method", method, "--out", str(out), "--steps", "2", *TINY],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["augment"] == recipe and saved["augmentation"]["name"] == recipe
    if recipe == "mocov2":
        assert saved["crop_scale_min"] == 0.2 and saved["augmentation"]["color"]["p_gray"] == 0.2
        assert calls and sum(calls) == 2 * 2 * 32  # two steps, two views of 32 images each
    else:
        assert saved["crop_scale_min"] == 0.08 and saved["augmentation"]["color"] is None and not calls


def test_a_failed_start_then_the_corrected_command_trains(tiny, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny / "data"), "--cache", str(tiny / "t1.zarr"), "--out", str(out), "--steps", "1",
            *TINY]
    assert CliRunner().invoke(main, args + ["--batch-size", "0"]).exit_code == 2
    assert CliRunner().invoke(main, args).exit_code == 0 and (out / "model.pt").exists()


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_other_settings(tiny, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny / "data"), "--cache", str(tiny / "t1.zarr"), "--out", str(out), "--steps", "1",
            *TINY]
    assert CliRunner().invoke(main, args).exit_code == 0
    (out / "checkpoint.pt").unlink()  # as if killed before the first checkpoint: only config.json pins the folder
    (out / "model.pt").unlink()
    result = CliRunner().invoke(main, args + ["--tau", "0.1"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["tau"] == 0.1
