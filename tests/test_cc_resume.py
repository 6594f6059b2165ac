"""CC resumes without clustering again: the cluster ids come from the checkpoint, and the resumed run ends with
the same weights as an uninterrupted one."""
import pytest
import torch

import pipeline.evaluation.cluster_assignment as cluster_assignment
import pipeline.methods.cc as cc_module
from pipeline.methods import DataInfo, build_method
from stages.train import train
from stages.train_config import config_from_dict
from tests.tiny_student import TinyStudent
from tests.train_fixtures import make_tiny


class Interrupted(Exception):
    """Stands for a kill: the run stops between two steps."""


@pytest.fixture(scope="module")
def tiny(module_dir):
    return make_tiny(module_dir)


def _cfg(d, out):
    return config_from_dict({"data": d / "data", "cache": d / "t1.zarr", "out": out, "preset": "tiny",
                             "method": "cc", "epochs": 2, "checkpoint_every": 2, "device": "cpu",
                             "tensorboard": False})


def test_a_resumed_cc_run_takes_its_ids_from_the_checkpoint(tiny, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise comparison: reductions split the same way in both runs
    try:
        train(_cfg(tiny, tmp_path / "reference"))

        calls = []
        real_kmeans, real_loss = cluster_assignment.kmeans, cc_module.cluster_classification_loss
        monkeypatch.setattr(cluster_assignment, "kmeans", lambda *a, **k: calls.append(1) or real_kmeans(*a, **k))

        def killed_at_step_5(*args):
            killed_at_step_5.n += 1
            if killed_at_step_5.n == 5:
                raise Interrupted
            return real_loss(*args)
        killed_at_step_5.n = 0
        monkeypatch.setattr(cc_module, "cluster_classification_loss", killed_at_step_5)
        run = tmp_path / "killed"
        with pytest.raises(Interrupted):
            train(_cfg(tiny, run))
        assert calls == [1]  # the first start clusters
        assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
        assert not (run / "model.pt").exists()

        monkeypatch.setattr(cc_module, "cluster_classification_loss", real_loss)
        monkeypatch.setattr(cluster_assignment, "kmeans", lambda *a, **k: pytest.fail("k-means ran on resume"))
        train(_cfg(tiny, run))
    finally:
        torch.set_num_threads(threads)
    a = torch.load(tmp_path / "reference" / "checkpoint.pt", weights_only=True)
    b = torch.load(run / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 10
    for key, value in a["objects"]["method"].items():
        assert torch.equal(value, b["objects"]["method"][key]), key
    ref = torch.load(tmp_path / "reference" / "model.pt", weights_only=True)["state_dict"]
    got = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_unfilled_ids_cannot_train():
    """Built for a resume whose checkpoint never came, CC refuses to train on the placeholder ids."""
    data = DataInfo(num_items=6, train_indices=torch.arange(6).numpy(), num_classes=2,
                    teacher_rows=torch.randn(6, 4))
    method = build_method("cc", TinyStudent(), teacher_dim=4, data=data,
                          hp={"clusters": 2, "seed": 0}, resuming=True)
    assert (method.ids == -1).all()
    with pytest.raises(IndexError):
        method([torch.randn(2, 12)], None, None, torch.tensor([0, 1]))
