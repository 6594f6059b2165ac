"""A run folder or a cache made by other code is refused, or started over when asked (what dvc.yaml asks):
nothing other code made is resumed or reused."""
from __future__ import annotations

import json

import pytest
import zarr
from click.testing import CliRunner

from stages.cli import main
from pipeline.runtime.code_digest import code_digest
from tests.train_fixtures import TINY, make_tiny


@pytest.fixture(scope="module")
def tiny(module_dir):
    return make_tiny(module_dir)


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_run_made_by_other_code_is_refused_or_started_over(tiny, tmp_path):
    out = tmp_path / "run"
    cmd = ["train", "--data", tiny / "data", "--cache", tiny / "t1.zarr", "--out", out, "--steps", "2", *TINY]
    assert _invoke(*cmd).exit_code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["code"] == code_digest()
    (out / "config.json").write_text(json.dumps({**config, "code": "0" * 16}))  # as if other code had made it
    refused = _invoke(*cmd)
    assert refused.exit_code == 1 and "code" in refused.output and "--restart if-changed" in refused.output
    assert _invoke(*cmd, "--restart", "if-changed").exit_code == 0
    assert json.loads((out / "config.json").read_text())["code"] == code_digest()
    # the same settings and code: resumed (nothing to do), not started over
    before = (out / "model.pt").stat().st_mtime_ns
    log_lines = len((out / "log.jsonl").read_text().splitlines())
    assert _invoke(*cmd, "--restart", "if-changed").exit_code == 0
    assert len((out / "log.jsonl").read_text().splitlines()) > log_lines  # appended: the same run went on
    assert (out / "model.pt").stat().st_mtime_ns >= before


def test_a_cache_made_by_other_code_is_refused_or_rebuilt(tiny, tmp_path):
    out = tmp_path / "c.zarr"
    cmd = ["extract", "--data", tiny / "data", "--weights", tiny / "t.pt", "--out", out, "--device", "cpu",
           "--batch-size", "64", "--no-progress"]
    assert _invoke(*cmd).exit_code == 0
    group = zarr.open_group(str(out), mode="r+")
    assert group.attrs["code"] == code_digest()
    group.attrs["code"] = "0" * 16
    refused = _invoke(*cmd)
    assert refused.exit_code == 1 and "code" in refused.output
    rebuilt = _invoke(*cmd, "--rebuild-if-changed")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert zarr.open_group(str(out), mode="r").attrs["code"] == code_digest()
