"""What a training run tells the world: a progress bar, one JSON line per epoch (`log.jsonl`), a CSV of the
curves for `dvc plots` (`curves.csv`) and TensorBoard events (`tb/`)."""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

_CURVE_FIELDS = ("epoch", "step", "loss", "lr", "img_per_s")


class RunLog:
    def __init__(self, out: Path, tensorboard: bool = True, rank: int = 0):
        self.out, self.rank = Path(out), rank
        self._bar = None
        self._tb = None
        if tensorboard and rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self._tb = None

    def _write(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record, default=str) + "\n")

    def event(self, kind: str, payload: dict) -> None:
        self._write({"event": kind, "time": time.time(), **payload})

    def progress(self, iterable, epoch: int, total: int, first: int):
        self._bar = tqdm(iterable, total=total, initial=first, desc=f"epoch {epoch}", leave=False,
                         disable=self.rank != 0, file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
        self._t0, self._n = time.perf_counter(), 0
        return self._bar

    def batch(self, step: int, loss: float, lr: float, extra: dict, batch_size: int = 0) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2g}", refresh=False)
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, step)
            self._tb.add_scalar("train/lr", lr, step)
            for k, v in extra.items():
                self._tb.add_scalar(f"train/{k}", v, step)

    def epoch(self, record: dict) -> None:
        self._write({"event": "epoch", **record})
        if self.rank != 0:
            return
        path = self.out / "curves.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_CURVE_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(record)
        loss = record["loss"]
        print(f"epoch {record['epoch']}: loss {loss:.4f}  lr {record['lr']:.3g}  "
              f"{record['img_per_s']:.0f} img/s  {record['seconds']:.1f} s", file=sys.stderr)
        if self._tb is not None:
            self._tb.add_scalar("epoch/img_per_s", record["img_per_s"], record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
