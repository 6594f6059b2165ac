"""--snapshot-every N keeps the model of every Nth epoch (a learning curve's points) without changing the run."""
from __future__ import annotations

import torch

from pipeline.models.modelfile import load_model
from stages.prepare import PrepareConfig, prepare
from stages.train import train
from stages.train_config import config_from_dict


def test_snapshots_are_the_models_of_those_epochs_and_change_nothing(tmp_path):
    prepare(PrepareConfig(dataset="digits", limit=120, out=tmp_path / "data"))

    def run(out, **extra):
        train(config_from_dict({"data": tmp_path / "data", "out": tmp_path / out, "preset": "tiny", "epochs": 2,
                                "method": "supervised", "device": "cpu", "tensorboard": False, **extra}))
        return tmp_path / out

    plain, snap = run("plain"), run("snap", snapshot_every=1)
    assert not (plain / "snapshots").exists()
    shots = sorted(p.name for p in (snap / "snapshots").iterdir())
    assert shots == ["model_epoch001.pt", "model_epoch002.pt"]
    final, _ = load_model(plain / "model.pt")
    last, meta = load_model(snap / "snapshots" / "model_epoch002.pt")
    first, _ = load_model(snap / "snapshots" / "model_epoch001.pt")
    assert meta["epoch"] == 2 and meta["method"] == "supervised"
    for (k, a), b, c in zip(final.state_dict().items(), last.state_dict().values(), first.state_dict().values()):
        assert torch.equal(a, b), k  # the run with snapshots trained to the same weights
    assert any(not torch.equal(a, c) for a, c in zip(final.state_dict().values(), first.state_dict().values()))
    # asking for snapshots when a finished run is run again is not "other settings"
    run("plain", snapshot_every=1)
