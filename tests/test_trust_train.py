"""Issue 16, training side: resume only on the same teacher and data (case 1), nothing non-finite passes (3), one
writer per run folder (4), a refused start pins nothing (5), bad paths and damaged files are one line (7).
Full disks (6) are in tests/test_trust_disk.py."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from cache.lock import StoreLock
from stages.cli import main
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import ImageStore
from pipeline.models.modelfile import default_preprocessing, load_model, save_model
from pipeline.models.backbones import build_backbone
from pipeline.runtime.run_identity import run_identity
from stages.extract import ExtractConfig, extract
from stages.prepare import PrepareConfig, prepare
from stages.train import train
from stages.train_config import config_from_dict


@pytest.fixture(scope="module")
def tiny(module_dir):
    """200 digits, two narrow teachers (t.pt, t2.pt) and a cache of the first."""
    d = module_dir
    prepare(PrepareConfig(dataset="digits", limit=200, out=d / "data"))
    for name, seed in (("t.pt", 1), ("t2.pt", 2)):
        save_model(d / name, build_backbone("resnet18_w16", small_input=True, seed=seed), default_preprocessing(8))
    extract(_extract_cfg(d / "data", d / "t.pt", d / "c.zarr"))
    return d


def _extract_cfg(data, weights, out, **kw):
    return ExtractConfig(data=data, weights=weights, out=out, batch_size=100, device="cpu", progress=False, **kw)


def cfg(d, out, **kw):
    """Two steps of CompRess-2q, a checkpoint after each: seconds."""
    return config_from_dict({"data": d / "data", "cache": d / "c.zarr", "out": out, "preset": "tiny",
                             "student": "resnet18_w16", "steps": 2, "checkpoint_every": 1, "device": "cpu",
                             "tensorboard": False, **kw})


def _weights_sha(path) -> str:
    from pipeline.runtime.provenance import sha256_file
    return sha256_file(path)[:12]


# ---------------------------------------------------------------- case 1: a run knows what it was trained on
def test_the_same_data_and_cache_by_other_paths_resume(tiny, tmp_path):
    train(cfg(tiny, tmp_path / "run"))
    shutil.copytree(tiny / "data", tmp_path / "data")
    shutil.copytree(tiny / "c.zarr", tmp_path / "c.zarr")
    train(cfg(tmp_path, (tmp_path / "run").resolve()))  # other spellings of equal contents: not a change
    assert '"event": "resume"' in (tmp_path / "run" / "log.jsonl").read_text()
    _, meta = load_model(tmp_path / "run" / "model.pt")
    assert meta["identity"] == run_identity(ImageStore(tiny / "data").fingerprint, tiny / "c.zarr")


def test_paths_are_not_settings_but_what_they_hold_is():
    from dataclasses import asdict, replace
    from pathlib import Path

    from pipeline.runtime.code_digest import code_digest
    from stages.run_folder import changed_settings
    from stages.train_config import TrainConfig
    run = TrainConfig(data=Path("data"), out=Path("runs/a"), cache=Path("t.zarr"))
    saved = {**json.loads(json.dumps(asdict(run), default=str)), "code": code_digest()}
    moved = replace(run, data=Path("/abs/data"), out=Path("/abs/runs/a"), cache=Path("../t.zarr"),
                    teacher_weights=Path("t.pt"))
    assert changed_settings(saved, moved) == []
    assert changed_settings(saved, replace(moved, tau=0.1)) == ["tau"]


def test_another_teacher_at_the_same_path_is_refused_naming_both(tiny, tmp_path):
    shutil.copytree(tiny / "c.zarr", tmp_path / "c.zarr")
    shutil.copytree(tiny / "data", tmp_path / "data")
    train(cfg(tmp_path, tmp_path / "run"))
    extract(_extract_cfg(tmp_path / "data", tiny / "t2.pt", tmp_path / "c.zarr", overwrite=True))
    first, second = _weights_sha(tiny / "t.pt"), _weights_sha(tiny / "t2.pt")
    with pytest.raises(CompressError, match=f"trained on data .*teacher weights {first}.*gives .*teacher "
                                            f"weights {second}"):
        train(cfg(tmp_path, tmp_path / "run"))
    (tmp_path / "run" / "config.json").unlink()  # the checkpoint refuses on its own
    with pytest.raises(CompressError, match=f"checkpoint.pt was trained on .*{first}.*this command gives .*{second}"):
        train(cfg(tmp_path, tmp_path / "run"))


def test_other_images_at_the_same_path_are_refused(tiny, tmp_path):
    prepare(PrepareConfig(dataset="digits", limit=150, out=tmp_path / "data"))
    before = ImageStore(tmp_path / "data").fingerprint
    train(cfg(tmp_path, tmp_path / "run", method="supervised", cache=None))
    prepare(PrepareConfig(dataset="digits", limit=160, out=tmp_path / "data"))
    after = ImageStore(tmp_path / "data").fingerprint
    with pytest.raises(CompressError, match=f"trained on data {before[:12]}.*gives data {after[:12]}"):
        train(cfg(tmp_path, tmp_path / "run", method="supervised", cache=None))


# ---------------------------------------------------------------- case 3: nothing non-finite passes
@pytest.mark.parametrize("bad", [{"lr": float("nan")}, {"epochs": 0, "steps": None}, {"epochs": -1, "steps": None},
                                 {"ema": 2.0}, {"input_size": 1}, {"weight_decay": float("inf")}])
def test_bad_values_are_refused_before_anything_is_written(tiny, tmp_path, bad):
    name = next(iter(bad)).replace("_", "-")
    with pytest.raises(CompressError, match=f"--{name} .* is out of range"):
        train(cfg(tiny, tmp_path / "run", **bad))
    assert not any((tmp_path / "run").glob("*.pt")) and not (tmp_path / "run" / "config.json").exists()


def _poison_weights_at(monkeypatch, call: int) -> None:
    """The optimiser's `call`-th step leaves a NaN in the weights (the loss of that step was finite)."""
    real, calls = torch.optim.SGD.step, []

    def step(self, *args, **kw):
        out = real(self, *args, **kw)
        calls.append(1)
        if len(calls) == call:
            self.param_groups[0]["params"][0].data.view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)


def test_non_finite_weights_write_no_checkpoint_and_no_model(tiny, tmp_path, monkeypatch):
    _poison_weights_at(monkeypatch, 1)
    with pytest.raises(CompressError, match="non-finite values in .* at step 1 .*no checkpoint was written"):
        train(cfg(tiny, tmp_path / "run", steps=1))
    assert not (tmp_path / "run" / "model.pt").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_only_a_finite_checkpoint_is_kept_and_named(tiny, tmp_path, monkeypatch):
    _poison_weights_at(monkeypatch, 2)
    with pytest.raises(CompressError, match=r"at step 2 .*the last good checkpoint .*checkpoint\.pt is intact"):
        train(cfg(tiny, tmp_path / "run", steps=3))
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 1 and not (tmp_path / "run" / "model.pt").exists()
    assert all(torch.isfinite(v).all() for v in saved["objects"]["method"].values() if v.is_floating_point())


# ---------------------------------------------------------------- case 4: one writer per run folder
def test_a_second_writer_on_a_run_folder_is_refused(tiny, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".checkpoint.pt.99999999.tmp").write_bytes(b"left by a killed run")
    with StoreLock(tmp_path / "run"):  # another `train` holds the folder
        with pytest.raises(CompressError, match=r"run is being written by pid \d+ .*another --out"):
            train(cfg(tiny, tmp_path / "run"))
        assert not (tmp_path / "run" / "config.json").exists()
    train(cfg(tiny, tmp_path / "run"))  # released: the run goes ahead and removes the dead run's temporary
    assert (tmp_path / "run" / "model.pt").exists() and not (tmp_path / "run" / ".checkpoint.pt.99999999.tmp").exists()
    assert not (tmp_path / "run.lock").exists()


# ---------------------------------------------------------------- case 5: a refused start pins nothing
def test_a_refused_start_does_not_lock_the_folder(tiny, tmp_path):
    with pytest.raises(Exception, match="needs a teacher"):
        train(cfg(tiny, tmp_path / "run", cache=None, tensorboard=True))
    assert not (tmp_path / "run" / "config.json").exists()
    assert not (tmp_path / "run" / "log.jsonl").exists() and not (tmp_path / "run" / "tb").exists()
    train(cfg(tiny, tmp_path / "run"))  # the fixed command is not "other settings"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["identity"]["teacher"]


@pytest.mark.parametrize("restart", ["always", "if-changed"])
def test_a_refused_start_over_leaves_the_run_it_was_to_replace(tiny, tmp_path, restart):
    out = tmp_path / "run"
    train(cfg(tiny, out))
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    # a start over refused only after the data is loaded: the batch is larger than the 200 images
    with pytest.raises(CompressError, match="--batch-size 4096 .* larger than the"):
        train(cfg(tiny, out, restart=restart, batch_size=4096))
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before and (out / "model.pt").exists()


def test_an_empty_config_json_without_a_checkpoint_is_written_again(tiny, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("")  # what a full disk left before writes were atomic
    train(cfg(tiny, tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["steps"] == 2


# ---------------------------------------------------------------- case 7: bad paths and damaged files
def _flip_middle_byte(path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # the middle of the file: tensor data
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_a_model_or_checkpoint_is_refused(tiny, tmp_path):
    train(cfg(tiny, tmp_path / "run"))
    load_model(tmp_path / "run" / "model.pt")  # intact: loads
    _flip_middle_byte(tmp_path / "run" / "model.pt")
    with pytest.raises(CompressError, match="model.pt is damaged: its tensors do not match the checksum"):
        load_model(tmp_path / "run" / "model.pt")
    _flip_middle_byte(tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(CompressError, match="checkpoint.pt is damaged"):
        train(cfg(tiny, tmp_path / "run"))


def test_out_naming_a_file_is_one_line(tiny, tmp_path):
    (tmp_path / "f").write_text("mine")
    r = CliRunner().invoke(main, ["train", "--data", str(tiny / "data"), "--cache", str(tiny / "c.zarr"),
                                  "--out", str(tmp_path / "f"), "--preset", "tiny", "--device", "cpu"])
    assert r.exit_code == 1 and "is a file, not a folder" in r.output and r.output.count("\n") == 1, r.output
    assert (tmp_path / "f").read_text() == "mine"


def test_eval_out_naming_a_folder_is_refused_before_evaluating(tiny, tmp_path):
    r = CliRunner().invoke(main, ["eval", "--data", str(tiny / "data"), "--random-init", "resnet18_w16",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 2 and "is a folder" in r.output and not list(tmp_path.iterdir())
