"""git_sha: '+dirty' means the code differs from the commit; the pipeline's own committed outputs do not count."""
import subprocess
from pathlib import Path

import pytest

from pipeline.runtime import provenance


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "m.json").write_text("{}")
    (tmp_path / "dvc.lock").write_text("a")
    (tmp_path / "code.py").write_text("x = 1")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    monkeypatch.setattr(provenance, "_REPO", tmp_path)
    return tmp_path


def test_clean_tree_gives_the_bare_sha(repo):
    sha = provenance.git_sha()
    assert len(sha) == 40 and not sha.endswith("+dirty")


def test_rewritten_pipeline_outputs_do_not_make_the_code_dirty(repo):
    (repo / "metrics" / "m.json").write_text('{"nn": 1}')
    (repo / "dvc.lock").write_text("b")
    assert not provenance.git_sha().endswith("+dirty")


def test_a_changed_code_file_does(repo):
    (repo / "code.py").write_text("x = 2")
    assert provenance.git_sha().endswith("+dirty")


def test_the_machine_is_recorded_with_its_cpu_model():
    m = provenance.provenance({"x": 1})["machine"]
    assert m["cpus"] >= 1 and m["system"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "model name" in cpuinfo.read_text():
        assert m["cpu"] not in ("", "x86_64", "aarch64")  # the model's name, not only the architecture
