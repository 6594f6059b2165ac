"""dvc.yaml sees the code and the parameters: no stage can hand back an artifact that other code made."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CODE = {"pipeline", "stages", "cache"}
DVC = [sys.executable, "-m", "dvc"]


def _stages() -> dict:
    return {name: stage.get("do", stage) for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items()}


def test_every_stage_depends_on_the_code_and_declares_its_params():
    for name, stage in _stages().items():
        assert CODE <= set(stage["deps"]), name
        if name != "report":  # the report reads the metrics folder only
            assert stage.get("params"), name


def test_resumable_outputs_persist():
    for name in ("teacher", "extract", "train"):
        outs = _stages()[name]["outs"]
        assert all(next(iter(o.values())).get("persist") for o in outs), name


def test_the_lock_records_params_for_every_stage_that_declares_them():
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    declared = {n for n, s in _stages().items() if s.get("params")}
    for name, entry in lock.items():
        if name.split("@")[0] in declared:
            assert entry.get("params"), name
        assert CODE <= {d["path"] for d in entry["deps"]}, name


def test_an_edited_loss_changes_every_student_stage(tmp_path):
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in tracked.split():
        if rel.endswith(".py") or rel.startswith((".dvc/", "dvc.", "params.yaml", ".dvcignore")):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, tmp_path / rel)
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n    analytics = false\n")
    with open(tmp_path / "pipeline" / "methods" / "losses.py", "a") as f:
        f.write("# an appended comment\n")
    out = subprocess.run([*DVC, "status", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    status = json.loads(out.stdout)
    students = yaml.safe_load((REPO / "params.yaml").read_text())["students"]
    for key in students:
        changes = status[f"train@{key}"]
        deps = next(c["changed deps"] for c in changes if isinstance(c, dict) and "changed deps" in c)
        assert deps.get("pipeline") == "modified", (key, deps)
