"""An ImageFolder tree of JPEG/PNG files: ROOT/<class>/<file>, or ROOT/train/<class>/... and ROOT/val/<class>/...

Order: split (train, then val), class name, file name, all sorted, so the same tree always gives the same rows.
Without train/val subfolders the split is fixed: every fifth file of that sorted listing is val (about a
fifth of every class, no RNG).
Ids are the paths relative to ROOT. `--limit N` keeps the first N files of that order, before any is opened.
With `--size` each image is letterboxed into the square by default (long side to the size, the valid region
of each item computed from its header), or centre-cropped with `--fit centre`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.runtime.errors import CompressError
from pipeline.data.sources import Plan, every_fifth_val
from pipeline.data.sources.decode import Decoder, letterbox_region

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


def plan(dataset, source, size, workers, limit, fit=None) -> Plan:
    """The sorted listing cut to `limit` files; headers read (no pixels) to fix the stored shape, and the
    letterboxed regions, up front. `fit` (with `size`): "letterbox" (None: the default) or "centre"."""
    if source is None or not Path(source).is_dir():
        raise CompressError(f"--dataset imagefolder needs --source ROOT, a folder of class folders; "
                            f"got {str(source)!r}")
    root = Path(source)
    paths, names, split, classes = _listing(root)
    if not paths:
        raise CompressError(f"{root}: no image files ({', '.join(sorted(EXTENSIONS))}) in class folders")
    paths, names, split = paths[:limit], names[:limit], split[:limit]
    files = [str(p) for p in paths]
    decoder = Decoder(workers)
    try:
        heads = decoder.headers(files)
        sizes = {hw: f for f, (hw, _) in zip(files, heads) if hw is not None}
        if size is None and len(sizes) > 1:  # before decoding anything, not after decoding everything
            (a, fa), (b, fb) = sorted(sizes.items())[:2]
            raise CompressError(f"{root}: images differ in size ({len(sizes)} shapes, e.g. {a} in {fa} and {b} "
                                f"in {fb}); pass --size PX to resize each image to PX x PX")
        channels = 1 if all(grey for hw, grey in heads if hw is not None) else 3  # mixed grey and colour: colour
        hw = (size, size) if size is not None else (next(iter(sizes)) if sizes else (1, 1))
    except BaseException:
        decoder.close()
        raise
    fit = (fit or "letterbox") if size is not None else None
    hws = [h for h, _ in heads]
    regions = None
    if fit == "letterbox":  # an unreadable header's file fails to decode: its placeholder row is never stored
        regions = np.array([letterbox_region(*h, size) if h is not None else (0, 0, size, size) for h in hws],
                           dtype=np.int32).reshape(-1, 4)

    def read(lo: int, hi: int):
        items = decoder.decode(files[lo:hi], size, fit or "centre", hws[lo:hi] if regions is not None else None)
        return [(np.repeat(x, 3, axis=2) if x is not None and x.shape[2] < channels else x, err)
                for x, err in items]

    index = {c: k for k, c in enumerate(classes)}
    return Plan(np.array([index[c] for c in names], dtype=np.int64), split,
                [p.relative_to(root).as_posix() for p in paths], classes, str(root), (*hw, channels), read,
                paths=files, resized=size is not None, close=decoder.close, fit=fit, regions=regions)
