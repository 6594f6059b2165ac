"""`--steps`: a budget in optimiser steps ends the run inside an epoch, with the schedule spanning the budget."""
from __future__ import annotations

import json
import math

import pytest

from stages.train import train

from stages.train_config import config_from_dict
from tests.train_fixtures import make_tiny


@pytest.fixture(scope="module")
def tiny(module_dir):
    return make_tiny(module_dir)


def _run(tiny, out, **over):
    cfg = {"data": tiny / "data", "cache": tiny / "t1.zarr", "out": out, "preset": "tiny", "device": "cpu",
           "tensorboard": False, "method": "compress-1q", "schedule": "cosine", "lr": 0.1, **over}
    return train(config_from_dict(cfg))


def test_step_budget_stops_inside_an_epoch_and_the_cosine_spans_the_budget(tiny, tmp_path):
    result = _run(tiny, tmp_path / "run", epochs=5, steps=4)  # 5 epochs would be ~25 steps
    assert result["steps"] == 4
    epochs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["step"] == 4
    assert epochs[0]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))  # lr of the last step
    assert (tmp_path / "run" / "model.pt").is_file()
    # the same command again finds the budget spent: nothing more is trained
    assert _run(tiny, tmp_path / "run", epochs=5, steps=4)["steps"] == 4


def test_a_budget_longer_than_an_epoch_crosses_epochs(tiny, tmp_path):
    result = _run(tiny, tmp_path / "run", epochs=1, steps=9)
    assert result["steps"] == 9
