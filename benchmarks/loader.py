"""Benchmark: this project's data path vs a torchvision ImageFolder + PIL DataLoader, and vs student demand.

Both sides read the same JPEG files (written from real Fashion-MNIST into a temporary folder; the store is
packed from that folder by `prepare --dataset imagefolder`) and produce the same thing: normalised float
batches of random-resized crops with a random flip at --out-size pixels. Rounds alternate A/B so drift on a
shared machine hits every variant alike; medians and the spread of per-round ratios are reported.

    torchvision: ImageFolder + PIL decode + RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize,
                 DataLoader with W worker processes (1 torch thread each), shuffle
    ours:        BatchLoader (uint8 store, in RAM, seeded shuffle) + sample_crops + render, in this process,
                 1 torch thread: it uses no worker process at all, whatever W the baseline gets
    student:     one ResNet-18 (small_input=False) SGD training step at --out-size px, batch --batch, with all
                 the machine's threads: the demand the loader has to meet

    .venv/bin/python benchmarks/loader.py
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.data.augment import render, sample_color, sample_crops
from pipeline.data.imagestore import ImageStore
from pipeline.data.loader import BatchLoader
from pipeline.runtime.provenance import provenance

MEAN, STD = (0.286, 0.286, 0.286), (0.353, 0.353, 0.353)


def write_jpegs(root: Path, n: int, source: Path) -> None:
    """The first n Fashion-MNIST training images as grey JPEGs in class folders (native 28 px)."""
    from PIL import Image

    from pipeline.data.sources.idx import read_idx
    x = read_idx(source / "train-images-idx3-ubyte.gz")[:n]
    y = read_idx(source / "train-labels-idx1-ubyte.gz")[:n]
    for i, (img, label) in enumerate(zip(x, y)):
        folder = root / f"{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)


def _one_thread(_):
    torch.set_num_threads(1)


def torchvision_epoch(loader) -> int:
    n = 0
    for x, _ in loader:
        n += len(x)
    return n


def ours_epoch(loader: BatchLoader, epoch: int, out_size: int, color: bool) -> int:
    g = torch.Generator().manual_seed(epoch)
    n = 0
    for idx, images in loader.epoch(epoch):
        crops = sample_crops(len(idx), g, tuple(images.shape[1:3]))
        params = sample_color(len(idx), g) if color else None
        x = render(images, crops, out_size, MEAN, STD, color=params)
        n += len(x)
    return n


def student_rate(batch: int, size: int, steps: int, threads: int) -> float:
    from pipeline.models.backbones import build_backbone
    torch.set_num_threads(threads)
    net = build_backbone("resnet18", small_input=False, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size)
    for s in range(steps + 1):  # step 0 warms up
        if s == 1:
            t = time.perf_counter()
        loss = net(x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t)


def timed(fn) -> float:
    t = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="JPEG files to write and read per epoch")
    ap.add_argument("--out-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--student-steps", type=int, default=3)
    ap.add_argument("--student-threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "loader.json")
    args = ap.parse_args(argv)
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    from stages.prepare import PrepareConfig, prepare

    student_threads = args.student_threads
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jpegs(tmp / "jpeg", args.n, args.source)
        prepare(PrepareConfig(dataset="imagefolder", source=tmp / "jpeg", out=tmp / "store", workers=0))
        store = ImageStore(tmp / "store")
        tf = T.Compose([T.RandomResizedCrop(args.out_size, scale=(0.2, 1.0)), T.RandomHorizontalFlip(),
                        T.ToTensor(), T.Normalize(MEAN, STD)])
        folder = ImageFolder(str(tmp / "jpeg"), transform=tf)
        tv = {w: torch.utils.data.DataLoader(folder, batch_size=args.batch, shuffle=True, num_workers=w,
                                             worker_init_fn=_one_thread if w else None,
                                             persistent_workers=w > 0, drop_last=True) for w in args.workers}
        ours = BatchLoader(store, np.arange(store.n), args.batch, seed=0, in_memory=True, pin_memory=False)
        paged = BatchLoader(store, np.arange(store.n), args.batch, seed=0, in_memory=False, pin_memory=False)
        for w in args.workers:  # warm-up: worker start-up and first-touch costs are not measured
            torchvision_epoch(tv[w])
        ours_epoch(ours, 0, args.out_size, False)

        rates: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for w in args.workers:  # A B A B: baseline, then ours, for each worker count
                rates.setdefault(f"torchvision_w{w}", []).append(timed(lambda: torchvision_epoch(tv[w])))
                rates.setdefault(f"ours_w{w}", []).append(timed(lambda: ours_epoch(ours, r, args.out_size, False)))
            rates.setdefault("ours_paged", []).append(timed(lambda: ours_epoch(paged, r, args.out_size, False)))
            rates.setdefault("ours_mocov2_color", []).append(timed(lambda: ours_epoch(ours, r, args.out_size, True)))
            rates.setdefault("student_resnet18_train", []).append(
                student_rate(args.batch, args.out_size, args.student_steps, student_threads))
            torch.set_num_threads(1)

    med = {k: statistics.median(v) for k, v in rates.items()}
    speedups = {w: [o / t for o, t in zip(rates[f"ours_w{w}"], rates[f"torchvision_w{w}"])] for w in args.workers}
    demand = [o / s for o, s in zip(rates[f"ours_w{args.workers[0]}"], rates["student_resnet18_train"])]
    summary = {
        "speedup_vs_torchvision": min(statistics.median(v) for v in speedups.values()),
        "speedup_by_workers": {str(w): {"median": statistics.median(v), "min": min(v), "max": max(v)}
                               for w, v in speedups.items()},
        "loader_over_student_demand": statistics.median(demand),
        "loader_over_student_demand_range": [min(demand), max(demand)],
        "goals": {"speedup_vs_torchvision": 10, "loader_over_student_demand": 1.5},
    }
    result = {
        "benchmark": "loader", "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "data": "first n Fashion-MNIST train images, grey 28 px JPEG (quality 90)",
                     "loader_threads": 1, "student_threads": student_threads},
        "images_per_s": {k: {"median": med[k], "rounds": v} for k, v in rates.items()},
        "summary": summary, "provenance": provenance(vars(args)),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"{'variant':28s} {'img/s (median)':>15s}")
    for k in rates:
        print(f"{k:28s} {med[k]:15.0f}")
    print(f"speedup vs torchvision (worst worker count): {summary['speedup_vs_torchvision']:.1f}x   "
          f"loader / student demand: {summary['loader_over_student_demand']:.1f}x   -> {args.json}")


if __name__ == "__main__":
    main()
