"""A run's saved settings against the command that resumes it: what counts as a change."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from pipeline.runtime.code_digest import code_digest
from stages.run_folder import changed_settings
from stages.train_config import TrainConfig


def _saved(cfg: TrainConfig) -> dict:
    """config.json as a run writes it: the settings and the digest of the code."""
    return {**json.loads(json.dumps(asdict(cfg), default=str)), "code": code_digest()}


def test_a_changed_setting_is_named_and_a_resumable_one_is_not():
    cfg = TrainConfig(data=Path("d"), out=Path("o"))
    assert changed_settings(_saved(cfg), cfg) == []
    assert changed_settings(_saved(cfg), replace(cfg, tau=0.1, device="cpu")) == ["tau"]


def test_a_key_older_runs_lack_counts_as_its_default():
    cfg = TrainConfig(data=Path("d"), out=Path("o"))
    old = {k: v for k, v in _saved(cfg).items() if k != "bn_groups"}  # written before --bn-groups existed
    assert changed_settings(old, cfg) == []
    assert changed_settings(old, replace(cfg, bn_groups=2)) == ["bn_groups"]
