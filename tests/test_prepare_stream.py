"""`prepare` streams: resumable after a kill, `--limit` before decoding, mixed sizes resized per image."""
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import stages.prepare as stage
from pipeline.data.imagestore import ImageStore
from pipeline.data.sources.decode import decode_file
from pipeline.runtime.errors import CompressError
from stages.prepare import PrepareConfig, prepare
from tests.prepare_fixtures import kill_prepare_at

N = 20000


def _h5_source(path: Path) -> Path:
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
        f["labels"] = rng.integers(0, 10, N)
    return path


def _same_store(a: Path, b: Path) -> None:
    x, y = ImageStore(a), ImageStore(b)
    assert x.fingerprint == y.fingerprint
    assert np.array_equal(x.read(), y.read()) and np.array_equal(x.labels, y.labels)
    assert np.array_equal(x.split, y.split) and x.ids() == y.ids()
    assert x.problems() == [] and y.problems() == []


def test_a_killed_prepare_resumes_from_its_last_window_to_the_same_store(tmp_path, monkeypatch):
    src = _h5_source(tmp_path / "src.h5")
    args = ["--dataset", "hdf5", "--source", str(src), "--block", "50", "--workers", "0"]
    out = tmp_path / "killed"
    done = kill_prepare_at(args, out, N // 10)
    assert 0 < done < N and not (out / "manifest.json").exists()

    reads = []  # the windows the resumed run decodes: none before the last complete one
    real_plan = stage.plan

    def counting_plan(*a, **k):
        p = real_plan(*a, **k)
        read = p.read
        p.read = lambda lo, hi: reads.append(lo) or read(lo, hi)
        return p
    monkeypatch.setattr(stage, "plan", counting_plan)
    prepare(PrepareConfig(dataset="hdf5", source=src, out=out, block=50, workers=0))
    assert min(reads) == done
    monkeypatch.setattr(stage, "plan", real_plan)
    prepare(PrepareConfig(dataset="hdf5", source=src, out=tmp_path / "whole", workers=0))
    _same_store(out, tmp_path / "whole")
    assert not (out / "prepare-spool.u8").exists() and not (out / "prepare-spool.json").exists()


def _tree(root: Path, sizes) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k, (h, w) in enumerate(sizes):
        folder = root / ("a" if k % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        paths.append(folder / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_limit_applies_before_decoding(tmp_path):
    _tree(tmp_path / "src", [(10, 10)] * 6)
    (tmp_path / "src" / "zz").mkdir()  # sorts after every good file: past the limit, never opened
    for k in range(3):
        (tmp_path / "src" / "zz" / f"{k}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(CompressError, match="3 of 9 images could not be decoded"):
        prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "all", workers=0))
    m = prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "six", workers=0,
                              limit=6))
    assert m["n"] == 6 and m["skipped"] == [] and not (tmp_path / "six" / stage.REPORT).exists()
    assert all(not i.startswith("zz/") for i in ImageStore(tmp_path / "six").ids())


def test_limit_reads_only_the_first_rows_of_an_hdf5_source(tmp_path):
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["images"] = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
        f["labels"] = np.arange(10)
    m = prepare(PrepareConfig(dataset="hdf5", source=tmp_path / "in.h5", out=tmp_path / "s", limit=4))
    assert m["n"] == 4
    assert np.array_equal(ImageStore(tmp_path / "s").read()[..., 0], np.arange(64, dtype=np.uint8).reshape(4, 4, 4))


def test_mixed_sizes_are_resized_per_image(tmp_path):
    paths = _tree(tmp_path / "src", [(12, 16), (20, 10), (30, 30), (9, 40)])
    m = prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "s", size=8,
                              workers=2))
    assert m["shape"] == [8, 8, 3] and m["n"] == 4
    store = ImageStore(tmp_path / "s")
    rows = dict(zip(store.ids(), store.read()))
    for p in paths:
        assert np.array_equal(rows[p.relative_to(tmp_path / "src").as_posix()], decode_file(str(p), 8)[0])


def test_mixed_sizes_without_size_fail_before_decoding(tmp_path, monkeypatch):
    _tree(tmp_path / "src", [(12, 16), (20, 10)])
    monkeypatch.setattr("pipeline.data.sources.decode.decode_file", lambda *a: pytest.fail("decoded"))
    with pytest.raises(CompressError, match=r"differ in size .*pass --size"):
        prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "s", workers=0))
    assert not (tmp_path / "s").exists()
