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
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

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


def _tensor(x, device) -> torch.Tensor:
    return (x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))).to(device)


def standardiser(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per dimension of the l2-normalised train features; fixed afterwards."""
    z = F.normalize(train_x.float(), dim=1)
    return z.mean(0), z.std(0, unbiased=False).clamp_min(1e-6)


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
    @torch.no_grad()
    def predict(q) -> np.ndarray:
        return head(_tensor(q, device)).argmax(1).cpu().numpy()
    return predict


def train_probe(train_x, train_y, num_classes: int, cfg: ProbeConfig = ProbeConfig(),
                device: torch.device = torch.device("cpu")):
    """The fast probe on feature matrices; return (predict(features) -> labels, record)."""
    x, y = _tensor(train_x, device).float(), _tensor(train_y, device).long()
    if len(x) == 0:
        raise CompressError("linear probe: the train split is empty; check the image store's split")
    head = ProbeHead(*standardiser(x), num_classes, cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)  # the order of the batches
    bs = len(x) if cfg.batch_size is None else min(cfg.batch_size, len(x))

    def batches(epoch):
        order = torch.randperm(len(x), generator=g).to(device)
        for lo in range(0, len(x), bs):
            yield x[order[lo:lo + bs]], y[order[lo:lo + bs]]

    steps, loss = fit_head(head, batches, (len(x) + bs - 1) // bs, cfg)
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
