"""An ImageFolder tree of JPEG/PNG files: ROOT/<class>/<file>, or ROOT/train/<class>/... and ROOT/val/<class>/...

Order: split (train, then val), class name, file name, all sorted, so the same tree always gives the same rows.
Without train/val subfolders the split is fixed: every fifth file of that sorted listing is val (about a
fifth of every class, no RNG).
Ids are the paths relative to ROOT.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.runtime.errors import CompressError
from pipeline.data.sources import Loaded, every_fifth_val
from pipeline.data.sources.decode import decode_all

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def _files(folder: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
            for d in sorted(folder.iterdir()) if d.is_dir()}


def _listing(root: Path) -> tuple[list[Path], list[str], np.ndarray, list[str]]:
    """(paths, class of each, split of each, class names) in the store's order."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        parts = [(0, _files(root / "train")), (1, _files(root / "val"))]
        classes = sorted(parts[0][1])
        extra = sorted(set(parts[1][1]) - set(classes))
        if extra:
            raise CompressError(f"{root}/val has classes missing from train: {', '.join(extra[:5])}; "
                                f"give every val class at least one training image")
    else:
        tree = _files(root)
        classes = sorted(tree)
        parts = [(None, tree)]
    paths, names, split = [], [], []
    for code, tree in parts:
        for c in sorted(tree):
            files = tree[c]
            paths += files
            names += [c] * len(files)
            split.append(np.full(len(files), 0 if code is None else code, np.uint8))
    split = np.concatenate(split) if split else np.zeros(0, np.uint8)
    return paths, names, every_fifth_val(len(paths)) if parts[0][0] is None else split, classes


def load(dataset, source, size, workers) -> Loaded:
    if source is None or not Path(source).is_dir():
        raise CompressError(f"--dataset imagefolder needs --source ROOT, a folder of class folders; "
                            f"got {str(source)!r}")
    root = Path(source)
    paths, names, split, classes = _listing(root)
    if not paths:
        raise CompressError(f"{root}: no image files ({', '.join(sorted(EXTENSIONS))}) in class folders")
    ids = [p.relative_to(root).as_posix() for p in paths]
    decoded = decode_all(paths, size, workers)
    bad = [{"id": i, "path": str(p), "error": err} for i, p, (_, err) in zip(ids, paths, decoded) if err]
    keep = [k for k, (x, _) in enumerate(decoded) if x is not None]
    arrays = [decoded[k][0] for k in keep]
    if arrays:
        shapes = {a.shape[:2] for a in arrays}
        if len(shapes) > 1:
            raise CompressError(f"{root}: images differ in size ({len(shapes)} shapes, e.g. "
                                f"{sorted(shapes)[:2]}); pass --size PX to resize them to PX x PX")
        if len({a.shape[2] for a in arrays}) > 1:  # mixed grey and colour: store colour
            arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    images = np.stack(arrays) if arrays else np.zeros((0, 1, 1, 3), np.uint8)
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([index[names[k]] for k in keep], dtype=np.int64)
    return Loaded(images, labels, split[keep], [ids[k] for k in keep], classes, str(root), bad=bad,
                  resized=size is not None)
