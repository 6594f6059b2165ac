"""What a training run tells the world: a progress bar, one JSON line per epoch (`log.jsonl`), a CSV of the
curves for `dvc plots` (`curves.csv`) and TensorBoard events (`tb/`).

A failed write (no space, read-only) stops the run with one line naming the file and the cause, like every
other write of a run: a run whose log cannot be written is not one to trust."""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from pipeline.runtime.atomic import io_error

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
            except OSError as e:
                raise io_error(self.out / "tb", e) from None

    def _write(self, record: dict) -> None:
        if self.rank == 0:
            try:
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record, default=str) + "\n")
            except OSError as e:
                raise io_error(self.out / "log.jsonl", e) from None

    def _tensorboard(self, call, *args) -> None:
        try:
            call(*args)
        except Exception as e:  # its writer thread reports a failed write on the next call
            raise io_error(self.out / "tb", e) from None

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
            self._tensorboard(self._tb.add_scalar, "train/loss", loss, step)
            self._tensorboard(self._tb.add_scalar, "train/lr", lr, step)
            for k, v in extra.items():
                self._tensorboard(self._tb.add_scalar, f"train/{k}", v, step)

    def epoch(self, record: dict) -> None:
        self._write({"event": "epoch", **record})
        if self.rank != 0:
            return
        path = self.out / "curves.csv"
        new = not path.exists()
        try:
            with open(path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=_CURVE_FIELDS, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(record)
        except OSError as e:
            raise io_error(path, e) from None
        loss = record["loss"]
        print(f"epoch {record['epoch']}: loss {loss:.4f}  lr {record['lr']:.3g}  "
              f"{record['img_per_s']:.0f} img/s  {record['seconds']:.1f} s", file=sys.stderr)
        if self._tb is not None:
            self._tensorboard(self._tb.add_scalar, "epoch/img_per_s", record["img_per_s"], record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tensorboard(self._tb.close)
