"""Every distillation method trains through the one trainer on tiny data; the baselines keep their state in
buffers; the live teacher stays frozen; a multi-view cache makes the student train on the stored crops."""
import json

import pytest
import torch

import stages.train as train_stage
from pipeline.runtime.errors import CompressError
from stages.train import train
from stages.train_config import config_from_dict
from tests.train_fixtures import make_tiny


@pytest.fixture(scope="module")
def tiny(module_dir):
    return make_tiny(module_dir, views=(1, 2))


def _cfg(d, out, **kw):
    return config_from_dict({"data": d / "data", "cache": d / "t1.zarr", "out": out, "preset": "tiny",
                             "device": "cpu", "tensorboard": False, **kw})


def _epoch_loss(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]["loss"]


@pytest.mark.parametrize("method", ["reg-bn", "crd", "cc", "seed"])  # reg = reg-bn without its BN
def test_each_baseline_trains_one_epoch(tiny, tmp_path, method):
    train(_cfg(tiny, tmp_path / method, method=method))
    assert (tmp_path / method / "model.pt").is_file()
    assert torch.isfinite(torch.tensor(_epoch_loss(tmp_path / method)))
    state = torch.load(tmp_path / method / "checkpoint.pt", weights_only=True)["objects"]["method"]
    if method == "crd":  # memories of both sides, indexed by dataset index, and the draw counter
        assert state["memory_s"].shape == (200, 128) and int(state["draws"]) > 0
    if method == "cc":  # 10 x 10 classes, k-means ids of every row saved with the run
        assert state["classifier.weight"].shape[0] == 100 and state["ids"].shape == (200,)
    if method == "seed":
        assert int(state["bank.ptr"]) != 0


def test_live_teacher_is_frozen_in_eval_mode_and_unchanged(tiny, tmp_path, monkeypatch):
    seen = []

    class Spy(train_stage.LiveTeacher):
        def __call__(self, x):
            t = super().__call__(x)
            assert not self.net.training and not t.requires_grad
            seen.append(self)
            return t

    monkeypatch.setattr(train_stage, "LiveTeacher", Spy)
    train(_cfg(tiny, tmp_path / "live", method="compress-1q", cache=None, teacher_source="live",
               teacher_weights=tiny / "t.pt"))
    teacher = seen[0].net
    assert len(seen) == 5 and not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    loaded = torch.load(tiny / "t.pt", weights_only=True)["state_dict"]
    after = teacher.state_dict()
    assert all(torch.equal(after[k], v) for k, v in loaded.items())  # BN statistics included
    meta = torch.load(tmp_path / "live" / "model.pt", weights_only=True)
    assert meta["teacher"]["weights_sha256"]


def test_live_teacher_embeddings_match_the_cache_on_centre_crops(tiny):
    """Same network, same normalisation: the live path computes what extract stored (fp16 rounding aside)."""
    from cache.load import load_embeddings
    from pipeline.data.augment import center_crops, render
    from pipeline.data.imagestore import ImageStore
    cfg = _cfg(tiny, tiny / "unused", teacher_source="live", teacher_weights=tiny / "t.pt")
    live = train_stage.LiveTeacher(cfg, torch.device("cpu"))
    images = torch.from_numpy(ImageStore(tiny / "data").read())[:16]
    t = live(render(images, center_crops(16), 8, live.mean, live.std))
    rows, _ = load_embeddings(tiny / "t1.zarr")
    assert torch.allclose(t, rows[:16].float(), atol=2e-3)


def test_multi_view_cache_student_trains_on_the_stored_crops(tiny, tmp_path, monkeypatch):
    from cache.load import load_crops
    stored = load_crops(tiny / "t2.zarr")
    rendered = []
    real_render = train_stage.render

    def spy(images, crops, *args, **kw):
        rendered.append(crops.clone())
        return real_render(images, crops, *args, **kw)

    monkeypatch.setattr(train_stage, "render", spy)
    train(_cfg(tiny, tmp_path / "mv", method="compress-2q", cache=tiny / "t2.zarr"))
    assert len(rendered) == 5
    flat = stored.reshape(-1, 5)
    for crops in rendered:  # every crop the student saw is one of the stored views
        assert (crops[:, None, :] == flat[None]).all(-1).any(1).all()


def test_bad_teacher_settings_are_one_line_errors(tiny, tmp_path):
    with pytest.raises(CompressError, match="teacher-weights"):
        train(_cfg(tiny, tmp_path / "a", teacher_source="live"))
    with pytest.raises(CompressError, match="cached"):
        train(_cfg(tiny, tmp_path / "b", method="cc", teacher_source="live", teacher_weights=tiny / "t.pt"))
    with pytest.raises(CompressError, match="fp16"):
        train(_cfg(tiny, tmp_path / "c", amp="fp16"))
