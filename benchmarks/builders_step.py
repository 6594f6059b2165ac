"""Does the in-RAM loader's second builder thread slow a CPU training step? One builder against two, same step.

On a 2-core machine the loader's second builder (pipeline/data/loader.py, `builders`, default 2 with 2 or more
cores per process) could take the core the training step's second torch thread uses. This times training
steps (a ResNet-18 at 32 px, batch 64, SGD, torch on 2 threads) fed by the in-RAM loader over the embedded
digits store with 1 and with 2 builders, rounds alternated A B B A, medians; the loader's own rate is
scale_loader.py's business. Ratio `two_over_one` of images/s: 1.0 means the second builder costs the step
nothing.

    .venv/bin/python benchmarks/builders_step.py --data artifacts/data   # the demo's store (make demo); ~3 min
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
from pipeline.data.imagestore import ImageStore  # noqa: E402
from pipeline.data.loader import BatchLoader  # noqa: E402
from pipeline.runtime.provenance import provenance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "builders_step.json"


def steps_per_second(store: ImageStore, builders: int, steps: int, batch: int, warmup: int = 3) -> float:
    """Images/s of `steps` training steps after `warmup`, fed by a loader with `builders` builders."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(store.shape[-1], 64, 3, 1, 1, bias=False)  # small images: no stride, no pool
    model.maxpool = torch.nn.Identity()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = BatchLoader(store, store.indices("train"), batch, seed=0, in_memory=True, pin_memory=False,
                         builders=builders)
    done, start = 0, None
    for epoch in range(1 << 20):
        for _, images in loader.epoch(epoch):
            if done == warmup:
                start = time.perf_counter()
            x = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2).float() / 255, size=32)
            loss = model(x).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == warmup + steps:
                return steps * batch / (time.perf_counter() - start)
    raise AssertionError("unreachable")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("artifacts/data"), help="a prepared store (make demo's)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", type=Path, default=RESULTS)
    a = ap.parse_args()
    torch.set_num_threads(2)
    store = ImageStore(a.data)
    rates: dict[int, list[float]] = {1: [], 2: []}
    for r in range(a.rounds):
        for b in ((1, 2) if r % 2 == 0 else (2, 1)):
            rates[b].append(steps_per_second(store, b, a.steps, a.batch))
        print(f"round {r}: one builder {rates[1][-1]:.1f} img/s, two {rates[2][-1]:.1f}", flush=True)
    per_round = [t / o for t, o in zip(rates[2], rates[1])]
    result = {
        "images_per_s": {str(b): {"median": statistics.median(v), "rounds": v} for b, v in rates.items()},
        "two_over_one": statistics.median(per_round), "two_over_one_rounds": per_round,
        "torch_threads": torch.get_num_threads(), "batch": a.batch, "steps": a.steps, "store": str(a.data),
        "provenance": provenance(vars(a)),
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("two_over_one", "two_over_one_rounds")}, indent=1))


if __name__ == "__main__":
    main()
