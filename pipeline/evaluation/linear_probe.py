"""Linear probe: the paper's head and schedule, here trained on (cached) feature matrices - the fast probe.

Head (CompRess): l2-normalise -> fixed per-dimension standardisation, computed once over the centre-crop train
features (a BatchNorm without affine, frozen) -> Linear. Optimiser (paper): SGD lr 0.01, momentum 0.9, weight
decay 1e-4, batch 256, 40 epochs with lr x0.1 at epochs 15 and 30. The milestones are kept as fractions of the
run (15/40, 30/40), so a shorter run keeps the same shape; the schedule is precomputed per iteration and
indexed by the step. The reported number is the head after the last epoch: nothing is selected on val.

This module's `train_probe` trains on features computed once on the evaluation view (`probe: "cached"` in the
record): far cheaper than the paper and deterministic. The paper's own protocol, augmented views rendered every
epoch through the frozen backbone, is pipeline/evaluation/augmented_probe.py; both share the head, optimiser and schedule
defined here. `check_frozen` is MoCo's sanity check: the backbone must be bit-identical after probing.

Memory: the features stay as given (the evaluation's fp16 matrix); the standardisation is accumulated block by
block, every mini-batch is gathered from them and widened to float32 on the device, and prediction runs in
blocks, so neither the host nor the device ever holds a float32 copy of the train or val features (unless
`batch_size` is None: full-batch training holds the whole train set as one float32 batch, by request).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.evaluation import backend as backends
from pipeline.evaluation.features import float_block, unit_block
from pipeline.runtime.errors import CompressError
from pipeline.runtime.schedules import lr_schedule

PROTOCOL = "cached-features: frozen evaluation-view features, l2-normalise, fixed standardisation, Linear"
REPORTED = "last epoch (the head after the final epoch; no selection on val)"


@dataclass
class ProbeConfig:
    epochs: int = 40
    milestones: tuple[float, ...] = (15 / 40, 30 / 40)  # fractions of the run where lr drops
    gamma: float = 0.1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int | None = 256  # None: full batch
    seed: int = 0


PREDICT_ROWS = 8192  # rows per forward pass when predicting


def standardiser(train_x, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per dimension of the l2-normalised train features (numpy or torch, any float dtype), on
    `device` (default: train_x's, or the CPU); fixed afterwards. Accumulated in float64, one block at a time."""
    device = torch.device(device or (train_x.device if isinstance(train_x, torch.Tensor) else "cpu"))
    rows = backends.choose(device).block_rows(train_x.shape[1])
    total = torch.zeros(train_x.shape[1], dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    for lo in range(0, len(train_x), rows):
        z = unit_block(train_x, lo, min(lo + rows, len(train_x)), device)
        total += z.sum(0, dtype=torch.float64)
        squares += z.mul_(z).sum(0, dtype=torch.float64)  # in place: no second block
    mean = total / len(train_x)
    var = (squares / len(train_x) - mean ** 2).clamp_min(0)
    return mean.float(), var.sqrt().float().clamp_min(1e-6)


def head_inputs(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (F.normalize(x.float(), dim=1) - mean) / std


class ProbeHead(torch.nn.Module):
    """l2-normalise -> fixed standardisation (buffers, never trained) -> Linear, initialised from `seed`."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int, seed: int):
        super().__init__()
        self.register_buffer("mean", mean.detach().float())
        self.register_buffer("std", std.detach().float())
        dim = len(mean)
        self.linear = torch.nn.Linear(dim, num_classes, device=mean.device)
        g = torch.Generator().manual_seed(seed)  # independent of the global RNG
        with torch.no_grad():
            bound = 1 / dim ** 0.5
            self.linear.weight.copy_(torch.empty(num_classes, dim).uniform_(-bound, bound, generator=g))
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(head_inputs(x, self.mean, self.std))


def gather(x, rows: torch.Tensor, device) -> torch.Tensor:
    """Rows of `x` (numpy or torch) as float32 on `device`, gathered in their own dtype first."""
    block = x[rows.to(x.device)] if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x[rows.numpy()]))
    return block.to(device).float()


def probe_schedule(cfg: ProbeConfig, iters_per_epoch: int) -> np.ndarray:
    """Learning rate of every iteration: step decay at the milestones (fractions of the epochs, e.g. 15 and 30
    of 40), the trainer's own per-iteration schedule."""
    milestones = tuple(round(m * cfg.epochs) for m in cfg.milestones)
    return lr_schedule(cfg.lr, cfg.epochs, iters_per_epoch, "step", milestones, cfg.gamma)


Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # epoch -> (head input, labels) batches


def fit_head(head: ProbeHead, batches: Batches, iters_per_epoch: int, cfg: ProbeConfig) -> tuple[int, float]:
    """SGD over `cfg.epochs` epochs of `batches(epoch)` on the per-iteration schedule; (steps, last loss)."""
    opt = torch.optim.SGD(head.linear.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    schedule = probe_schedule(cfg, iters_per_epoch)
    step, loss = 0, torch.tensor(float("nan"))
    for epoch in range(cfg.epochs):
        for x, y in batches(epoch):
            for group in opt.param_groups:
                group["lr"] = float(schedule[step])
            loss = F.cross_entropy(head(x), y)
            if not torch.isfinite(loss):
                raise CompressError(f"linear probe: loss became {loss.item()} at step {step}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return step, loss.item()


def probe_record(kind: str, protocol: str, cfg: ProbeConfig, batch_size: int, steps: int, loss: float) -> dict:
    """What the metrics file says about a probe: which one ran, every setting, and which epoch is reported."""
    return {"probe": kind, "protocol": protocol, **asdict(cfg), "milestones": list(cfg.milestones),
            "milestone_epochs": [round(m * cfg.epochs) for m in cfg.milestones], "batch_size": batch_size,
            "iterations": steps, "schedule": "per-iteration step decay", "reported": REPORTED,
            "standardisation": "fixed: mean/std of the l2-normalised evaluation-view train features",
            "final_loss": loss}


def predictor(head: ProbeHead, device) -> Callable[[object], np.ndarray]:
    """predict(features (Q, D), numpy or torch) -> (Q,) labels, in blocks of PREDICT_ROWS rows."""
    @torch.no_grad()
    def predict(q) -> np.ndarray:
        out = [head(float_block(q, lo, min(lo + PREDICT_ROWS, len(q)), device)).argmax(1).cpu()
               for lo in range(0, len(q), PREDICT_ROWS)]
        return torch.cat(out).numpy() if out else np.empty(0, dtype=np.int64)
    return predict


def train_probe(train_x, train_y, num_classes: int, cfg: ProbeConfig = ProbeConfig(),
                device: torch.device = torch.device("cpu")):
    """The fast probe on feature matrices (numpy or torch, fp16 or float32, on any device); return
    (predict(features) -> labels, record). Each mini-batch is gathered from `train_x` and widened on `device`."""
    n = len(train_x)
    if n == 0:
        raise CompressError("linear probe: the train split is empty; check the image store's split")
    y = (train_y if isinstance(train_y, torch.Tensor) else torch.from_numpy(np.asarray(train_y))).to(device).long()
    head = ProbeHead(*standardiser(train_x, device), num_classes, cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)  # the order of the batches
    bs = n if cfg.batch_size is None else min(cfg.batch_size, n)

    def batches(epoch):
        order = torch.randperm(n, generator=g)
        for lo in range(0, n, bs):
            rows = order[lo:lo + bs]
            # the head l2-normalises its input, so the raw rows are enough: only this batch is widened
            yield gather(train_x, rows, device), y[rows.to(device)]

    steps, loss = fit_head(head, batches, (n + bs - 1) // bs, cfg)
    return predictor(head, device), probe_record("cached", PROTOCOL, cfg, bs, steps, loss)


def snapshot(module: torch.nn.Module) -> dict:
    """A copy of every parameter and buffer, for `check_frozen`."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def check_frozen(module: torch.nn.Module, before: dict) -> None:
    """MoCo's sanity check: the frozen backbone is bit-identical to what was loaded (BN stats included)."""
    after = module.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k].detach().cpu().to(v.device))]
    if changed:
        raise CompressError(f"the frozen backbone changed during evaluation ({changed[:5]}); "
                            f"it must run in eval mode without gradients")
