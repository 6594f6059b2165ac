"""Issue 16, case 6: a full disk, a read-only one, a file where a folder should be (and the reverse) end in one
line naming the path and the cause, exit 1, no traceback, nothing left that a later run would trust; the same
command after space is freed ends with the same result as an uninterrupted run.

The full disks are small tmpfs mounts: they need root (skipped with the reason otherwise)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from pipeline.runtime.atomic import is_temp, write_atomic
from stages.cli import main
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import ImageStore
from tests.test_trust_train import cfg, tiny  # noqa: F401 - the shared fixture
from stages.train import train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def small_disk(tmp_path):
    """A mount point of a 1 MiB tmpfs, and a function growing it to `size`."""
    point = tmp_path / "disk"
    point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}): needs root")

    def resize(size: str = "64m", mode: str = "rw") -> None:
        subprocess.run(["mount", "-o", f"remount,size={size},{mode}", str(point)], check=True)

    yield point, resize
    subprocess.run(["umount", str(point)], check=False)


def _leftovers(folder: Path) -> list[str]:
    """Files a later run could mistake for its own: temporaries of any writer."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and (is_temp(p) or p.suffix in (".tmp", ".partial"))]


def _one_line_error(result, *words) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    last = result.output.split("\r")[-1]  # after the progress bar's redraws
    assert last.startswith("Error: ") and last.count("\n") == 1, result.output
    for w in words:
        assert w in last, result.output


def test_prepare_on_a_full_disk_is_one_line_and_then_the_same_store(small_disk, tmp_path):
    point, resize = small_disk
    args = [sys.executable, "-m", "stages", "prepare", "--dataset", "digits", "--out"]
    subprocess.run(args + [str(tmp_path / "reference")], check=True, capture_output=True, cwd=REPO)
    resize("100k")  # the 100 KB: the 232 KB store does not fit
    full = subprocess.run(args + [str(point / "data")], capture_output=True, text=True, cwd=REPO)
    assert full.returncode == 1, full.stderr  # 139 was the segfault
    assert full.stderr.strip() == (f"Error: cannot write {point / 'data' / 'images.h5'}: No space left on device; "
                                   f"free some space and re-run the same command")
    assert not any((point / "data").iterdir())
    resize()
    subprocess.run(args + [str(point / "data")], check=True, capture_output=True, cwd=REPO)
    assert ImageStore(point / "data").fingerprint == ImageStore(tmp_path / "reference").fingerprint


def test_extract_on_a_full_disk_resumes_to_the_same_cache(small_disk, tiny, tmp_path):  # noqa: F811
    point, resize = small_disk
    args = ["extract", "--data", str(tiny / "data"), "--weights", str(tiny / "t.pt"), "--shard-rows", "16",
            "--device", "cpu", "--no-progress", "--out"]
    resize("48k")  # a few of the 13 shards (and their markers, 4 KiB pages each) fit
    full = CliRunner().invoke(main, args + [str(point / "c.zarr")])
    _one_line_error(full, "No space left on device", str(point / "c.zarr"))
    assert not _leftovers(point)
    resize()
    assert CliRunner().invoke(main, args + [str(point / "c.zarr")]).exit_code == 0
    assert CliRunner().invoke(main, args + [str(tmp_path / "ref.zarr")]).exit_code == 0
    a, b = zarr.open_group(str(point / "c.zarr"), mode="r"), zarr.open_group(str(tmp_path / "ref.zarr"), mode="r")
    assert a.attrs["complete"] and np.array_equal(a["embeddings"][:], b["embeddings"][:])
    assert a.attrs["checksums"] == b.attrs["checksums"]


def test_train_on_a_full_disk_resumes_to_the_same_model(small_disk, tiny, tmp_path):  # noqa: F811
    point, resize = small_disk
    train(cfg(tiny, tmp_path / "reference", steps=3))
    args = ["train", "--data", str(tiny / "data"), "--cache", str(tiny / "c.zarr"), "--preset", "tiny",
            "--student", "resnet18_w16", "--steps", "3", "--checkpoint-every", "1", "--device", "cpu",
            "--no-tensorboard", "--out", str(point / "run")]
    full = CliRunner().invoke(main, args)  # the settings and log fit in 1 MiB, the first checkpoint does not
    _one_line_error(full, f"cannot write {point / 'run' / 'checkpoint.pt'}: No space left on device")
    assert not (point / "run" / "checkpoint.pt").exists() and not _leftovers(point)
    resize()
    assert CliRunner().invoke(main, args).exit_code == 0
    a = torch.load(point / "run" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "reference" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_with_no_space_at_all_leaves_no_empty_config(small_disk, tiny):  # noqa: F811
    point, resize = small_disk
    with open(point / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    r = CliRunner().invoke(main, ["train", "--data", str(tiny / "data"), "--cache", str(tiny / "c.zarr"),
                                  "--preset", "tiny", "--student", "resnet18_w16", "--steps", "1", "--device", "cpu",
                                  "--no-tensorboard", "--out", str(point / "run")])
    _one_line_error(r, "No space left on device")
    assert not (point / "run" / "config.json").exists() and not _leftovers(point)
    (point / "filler").unlink()
    resize()
    train(cfg(tiny, point / "run", steps=1))
    assert (point / "run" / "model.pt").is_file()


def test_a_read_only_disk_is_one_line(small_disk, tiny):  # noqa: F811
    point, resize = small_disk
    resize("1m", "ro")
    r = CliRunner().invoke(main, ["train", "--data", str(tiny / "data"), "--cache", str(tiny / "c.zarr"),
                                  "--preset", "tiny", "--device", "cpu", "--out", str(point / "run")])
    _one_line_error(r, str(point / "run"), "Read-only file system")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")

    def no_space(f):
        f.write(b"new, half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(CompressError, match=f"cannot write {target}: No space left on device; free some space"):
        write_atomic(target, no_space)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_folder_where_the_model_file_goes_is_one_line(tiny, tmp_path):  # noqa: F811
    (tmp_path / "run" / "model.pt").mkdir(parents=True)
    with pytest.raises(CompressError, match=r"cannot write .*model\.pt: Is a directory; a folder is in the way"):
        train(cfg(tiny, tmp_path / "run", steps=1))
    assert not _leftovers(tmp_path / "run")
