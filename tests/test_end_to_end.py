"""The whole path through the CLI on a 200-image digits subset: prepare -> teacher (MoCo) -> extract ->
two students from one cache -> eval -> report; then the bad inputs a user is most likely to give."""
import json

import pytest

from tests.train_fixtures import run

TINY = ["--input-size", "8", "--batch-size", "32", "--bank-size", "64", "--seed", "0", "--no-hflip"]


@pytest.fixture(scope="module")
def pipeline_dir(module_dir):
    d = module_dir
    run("prepare", "--dataset", "digits", "--limit", "200", "--out", d / "data")
    run("teacher", "--data", d / "data", "--out", d / "teacher", "--epochs", "1", *TINY)
    run("extract", "--data", d / "data", "--weights", d / "teacher/model.pt", "--out", d / "t.zarr",
        "--no-progress")
    for student, method in [("resnet18", "compress-2q"), ("mobilenet_v2", "compress-1q")]:
        run("train", "--data", d / "data", "--cache", d / "t.zarr", "--student", student, "--method", method,
            "--epochs", "1", "--no-tensorboard", "--out", d / student, *TINY)
    return d


def test_students_are_written_and_evaluated(pipeline_dir):
    d = pipeline_dir
    run("eval", "--data", d / "data", "--cache", d / "t.zarr", "--out", d / "metrics/teacher.json",
        "--probe-epochs", "2")
    for student in ("resnet18", "mobilenet_v2"):
        assert (d / student / "model.pt").is_file()
        log = [json.loads(line) for line in (d / student / "log.jsonl").read_text().splitlines()]
        assert [r["event"] for r in log] == ["start", "loader", "epoch"] and log[0]["git_sha"]
        assert log[1]["mode"] == "ram"  # a tiny store is read into memory
        run("eval", "--data", d / "data", "--model", d / student / "model.pt",
            "--out", d / f"metrics/{student}.json", "--probe-epochs", "2")
        metrics = json.loads((d / f"metrics/{student}.json").read_text())
        for key in ("nn", "knn20", "linear", "ca"):
            assert 0 <= metrics[key] <= 100
    out = run("report", "--metrics", d / "metrics", "--out", d / "summary.md").output
    assert "teacher" in out and "resnet18" in out and "mobilenet_v2" in out


def test_info_describes_the_cache(pipeline_dir):
    info = json.loads(run("info", pipeline_dir / "t.zarr", "--json").output)
    manifest = json.loads((pipeline_dir / "data/manifest.json").read_text())
    assert info["complete"] is True
    assert info["data_fingerprint"] == manifest["fingerprint"]
    assert info["teacher"]["arch"] == "resnet18"


def test_rerunning_a_finished_training_changes_nothing(pipeline_dir):
    d = pipeline_dir
    before = (d / "resnet18/model.pt").read_bytes()
    run("train", "--data", d / "data", "--cache", d / "t.zarr", "--student", "resnet18", "--method",
        "compress-2q", "--epochs", "1", "--no-tensorboard", "--out", d / "resnet18", *TINY)
    assert json.loads((d / "resnet18/log.jsonl").read_text().splitlines()[-1])["event"] == "resume"
    import torch
    a = torch.load(d / "resnet18/model.pt", weights_only=True)["state_dict"]
    (d / "before.pt").write_bytes(before)
    b = torch.load(d / "before.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error:"), result.output
    for needle in needles:
        assert needle in line, line


def test_bad_inputs_end_in_one_line_errors(pipeline_dir, tmp_path):
    d = pipeline_dir
    common = ["--epochs", "1", "--no-tensorboard", *TINY]
    _one_line_error(run("train", "--data", tmp_path / "nowhere", "--cache", d / "t.zarr", "--out",
                        tmp_path / "r1", *common, ok=False), "nowhere", "does not exist")
    _one_line_error(run("train", "--data", d / "data", "--cache", d / "t.zarr", "--student", "resnet_nope",
                        "--out", tmp_path / "r2", *common, ok=False), "resnet_nope")
    _one_line_error(run("train", "--data", d / "data", "--cache", d / "t.zarr", "--method", "compress-3q",
                        "--out", tmp_path / "r3", *common, ok=False), "compress-3q")
    # a cache built from other data: the first 150 images instead of 200
    run("prepare", "--dataset", "digits", "--limit", "150", "--out", tmp_path / "other")
    _one_line_error(run("train", "--data", tmp_path / "other", "--cache", d / "t.zarr",
                        "--out", tmp_path / "r4", *common, ok=False), "fingerprint", "extract")
    # a finished run folder asked to train with other settings: refused, nothing overwritten
    _one_line_error(run("train", "--data", d / "data", "--cache", d / "t.zarr", "--student", "resnet18",
                        "--method", "compress-2q", "--out", d / "resnet18", "--lr", "0.5", *common, ok=False),
                    "other settings", "lr")
