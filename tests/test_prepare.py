"""prepare: every source on a tiny synthetic instance, resizing, fingerprints, and undecodable images."""
import gzip
import json
import pickle

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stages.cli import main
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import ImageStore
from stages.prepare import REPORT, PrepareConfig, prepare


def _tree(root, split_dirs=False, bad=False):
    """Six images in two classes (PNG and JPEG, one grey); optionally one truncated file."""
    rng = np.random.default_rng(0)
    for k in range(6):
        cls = "cat" if k % 2 else "dog"
        folder = root / (("train" if k < 4 else "val") if split_dirs else "") / cls
        folder.mkdir(parents=True, exist_ok=True)
        x = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(x).convert("L") if k == 0 else Image.fromarray(x)
        img.save(folder / (f"{k}.png" if k % 3 else f"{k}.jpg"))
    if bad:
        (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")


def test_imagefolder_store_shape_classes_ids_and_labels(tmp_path):
    _tree(tmp_path / "src")
    m = prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "s", size=8,
                              workers=0))
    store = ImageStore(tmp_path / "s")
    assert m["shape"] == [8, 8, 3] and m["classes"] == ["cat", "dog"] and m["n"] == 6
    assert store.ids()[0] == "cat/1.png" and m["splits"] == {"train": 5, "val": 1}
    assert store.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_imagefolder_train_val_folders_in_parallel_workers(tmp_path):
    _tree(tmp_path / "src", split_dirs=True)
    m = prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "s", size=6,
                              workers=2))
    assert m["splits"] == {"train": 4, "val": 2} and ImageStore(tmp_path / "s").ids()[0].startswith("train/")


def test_imagefolder_native_sizes_must_agree(tmp_path):
    _tree(tmp_path / "src")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "src" / "cat" / "odd.png")
    with pytest.raises(CompressError, match="--size"):
        prepare(PrepareConfig(dataset="imagefolder", source=tmp_path / "src", out=tmp_path / "s", workers=0))


def test_corrupt_image_fails_with_a_report(tmp_path):
    _tree(tmp_path / "src", bad=True)
    r = CliRunner().invoke(main, ["prepare", "--dataset", "imagefolder", "--source", str(tmp_path / "src"),
                                  "--out", str(tmp_path / "s"), "--size", "8", "--workers", "0"])
    assert r.exit_code == 1 and "Error: 1 of 7 images could not be decoded" in r.output
    assert "broken.jpg" in r.output and "--skip-bad" in r.output
    report = json.loads((tmp_path / "s" / REPORT).read_text())
    assert report["bad"][0]["id"] == "cat/broken.jpg"
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_skip_bad_records_the_skip_in_the_manifest(tmp_path):
    _tree(tmp_path / "src", bad=True)
    r = CliRunner().invoke(main, ["prepare", "--dataset", "imagefolder", "--source", str(tmp_path / "src"),
                                  "--out", str(tmp_path / "s"), "--size", "8", "--workers", "0", "--skip-bad"])
    assert r.exit_code == 0, r.output
    assert "skipped 1 unreadable" in r.output
    store = ImageStore(tmp_path / "s")
    assert store.n == 6 and store.manifest["skipped"][0]["id"] == "cat/broken.jpg"
    assert "cat/broken.jpg" not in store.ids()


def test_fingerprint_is_stable_and_changes_with_the_data(tmp_path):
    _tree(tmp_path / "src")
    cfg = dict(dataset="imagefolder", source=tmp_path / "src", size=8, workers=0)
    a = prepare(PrepareConfig(out=tmp_path / "a", **cfg))["fingerprint"]
    b = prepare(PrepareConfig(out=tmp_path / "b", **cfg))["fingerprint"]
    assert a == b
    ImageStore(tmp_path / "b").verify()
    Image.fromarray(np.full((12, 16, 3), 7, np.uint8)).save(tmp_path / "src" / "dog" / "2.png")
    assert prepare(PrepareConfig(out=tmp_path / "c", **cfg))["fingerprint"] != a


def test_digits_fingerprint_is_stable(tmp_path):
    a = prepare(PrepareConfig(dataset="digits", out=tmp_path / "a", size=6))
    b = prepare(PrepareConfig(dataset="digits", out=tmp_path / "b", size=6))
    assert a["fingerprint"] == b["fingerprint"] and a["shape"] == [6, 6, 1] and a["n"] == 1797


def _idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    m = prepare(PrepareConfig(dataset="fashion-mnist", source=tmp_path, out=tmp_path / "s", size=14))
    assert m["n"] == 8 and m["splits"] == {"train": 5, "val": 3} and m["shape"] == [14, 14, 1]
    assert m["classes"][9] == "Ankle boot" and ImageStore(tmp_path / "s").ids()[5] == "fashion-mnist/test/00000"


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    _idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28)))
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "rb") as f:
        data = f.read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(data[:-10])
    with pytest.raises(CompressError, match="truncated"):
        prepare(PrepareConfig(dataset="fashion-mnist", source=tmp_path, out=tmp_path / "s"))


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_python_folder(tmp_path, dataset):
    folder = tmp_path / ("cifar-10-batches-py" if dataset == "cifar10" else "cifar-100-python")
    folder.mkdir()
    rng = np.random.default_rng(0)
    label_key, names_key = (b"labels", b"label_names") if dataset == "cifar10" else (b"fine_labels", b"fine_label_names")
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if dataset == "cifar10" else ["train", "test"]
    for f in files:
        batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), label_key: [0, 1]}
        (folder / f).write_bytes(pickle.dumps(batch))
    (folder / ("batches.meta" if dataset == "cifar10" else "meta")).write_bytes(
        pickle.dumps({names_key: [b"plane", b"car"]}))
    m = prepare(PrepareConfig(dataset=dataset, source=tmp_path, out=tmp_path / "s"))
    assert m["shape"] == [32, 32, 3] and m["classes"] == ["plane", "car"]
    assert m["splits"]["val"] == 2 and m["n"] == 2 * len(files)
    first = pickle.loads((folder / files[0]).read_bytes())[b"data"][0]
    assert np.array_equal(ImageStore(tmp_path / "s").read(0, 1)[0, :, :, 0].ravel(), first[:1024])


def test_cifar_pickle_cannot_run_code(tmp_path):
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"]}))
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(print))
    with pytest.raises(CompressError, match="refusing"):
        prepare(PrepareConfig(dataset="cifar10", source=tmp_path, out=tmp_path / "s"))


def test_hdf5_source_with_and_without_optional_datasets(tmp_path):
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["images"] = np.arange(10 * 9 * 12, dtype=np.uint8).reshape(10, 9, 12) % 251
        f["labels"] = np.arange(10) % 2
    m = prepare(PrepareConfig(dataset="hdf5", source=tmp_path / "in.h5", out=tmp_path / "s", size=9))
    assert m["shape"] == [9, 9, 1] and m["splits"] == {"train": 8, "val": 2} and m["classes"] == ["0", "1"]
    with h5py.File(tmp_path / "in.h5", "a") as f:
        f["split"] = np.array([0] * 7 + [1] * 3)
        f["ids"] = np.array([f"item{i}" for i in range(10)], dtype=object)
        f.create_dataset("classes", data=np.array(["no", "yes"], dtype=object), dtype=h5py.string_dtype())
    m = prepare(PrepareConfig(dataset="hdf5", source=tmp_path / "in.h5", out=tmp_path / "t"))
    assert m["splits"] == {"train": 7, "val": 3} and m["classes"] == ["no", "yes"]
    assert ImageStore(tmp_path / "t").ids()[3] == "item3"


def test_hdf5_without_labels_names_the_layout(tmp_path):
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["images"] = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(CompressError, match="no `labels` dataset"):
        prepare(PrepareConfig(dataset="hdf5", source=tmp_path / "in.h5", out=tmp_path / "s"))


def test_missing_source_is_a_clear_cli_error(tmp_path):
    r = CliRunner().invoke(main, ["prepare", "--dataset", "cifar10", "--out", str(tmp_path / "s")])
    assert r.exit_code == 1 and "needs --source" in r.output
