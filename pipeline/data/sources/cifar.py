"""CIFAR-10 / CIFAR-100 from the python-format folders (cifar-10-batches-py, cifar-100-python).

Order: the training batches in file order, then the test batch (the val split). The pickles are read with an
unpickler that only accepts numpy arrays and plain containers: a pickle cannot run code here.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from pipeline.runtime.errors import CompressError
from pipeline.data.sources import Loaded

LAYOUT = {  # dataset -> (folder name, train files, test file, meta file, label key, class-name key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_labels", b"fine_label_names"),
}
_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise CompressError(f"{path} is missing; pass --source the extracted python-format CIFAR folder")
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        raise CompressError(f"{path}: not a CIFAR python pickle ({e}); re-extract the archive")


def _folder(source: Path | None, name: str, dataset: str) -> Path:
    if source is None:
        raise CompressError(f"--dataset {dataset} needs --source: the extracted {name} folder")
    source = Path(source)
    for cand in (source, source / name):
        if cand.is_dir() and any((cand / f).is_file() for f in ("batches.meta", "meta")):
            return cand
    raise CompressError(f"{str(source)!r} is not a python-format CIFAR folder (no meta file); "
                        f"pass the extracted {name} folder")


def load(dataset, source, size, workers) -> Loaded:
    name, train, test, meta, label_key, names_key = LAYOUT[dataset]
    folder = _folder(source, name, dataset)
    classes = [c.decode() for c in _unpickle(folder / meta)[names_key]]
    images, labels, split, ids = [], [], [], []
    for code, file in [(0, f) for f in train] + [(1, test)]:
        batch = _unpickle(folder / file)
        x = np.asarray(batch[b"data"], dtype=np.uint8)
        if x.ndim != 2 or x.shape[1] != 3072:
            raise CompressError(f"{folder / file}: data has shape {x.shape}, expected (N, 3072)")
        images.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
        split.append(np.full(len(x), code, np.uint8))
        ids += [f"{dataset}/{file}/{i:05d}" for i in range(len(x))]
    return Loaded(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), np.concatenate(split),
                  ids, classes, str(folder))
