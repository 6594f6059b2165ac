"""Linear probe on frozen features: the paper's head and schedule, trained on (cached) feature matrices.

Head (CompRess): l2-normalise -> fixed per-dimension standardisation, computed once over the train features
(a BatchNorm without affine, frozen) -> Linear. Optimiser: SGD lr 0.01, momentum 0.9; the paper runs 40 epochs
with lr x0.1 at epochs 15 and 30. The milestones are kept as fractions of the run (15/40, 30/40), so a shorter
run on small data keeps the same shape; the schedule is precomputed per iteration and indexed by the step.

What this is not: the paper trained on augmented images through the frozen backbone. Here the features are
computed once on centre crops (`protocol` in the record says so), which is far cheaper and deterministic.
`check_frozen` is MoCo's sanity check: the backbone must be bit-identical after probing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import CompressError

PROTOCOL = "cached-features: frozen centre-crop features, l2-normalise, fixed standardisation, Linear"


@dataclass
class ProbeConfig:
    epochs: int = 40
    milestones: tuple[float, ...] = (15 / 40, 30 / 40)  # fractions of the run where lr drops
    gamma: float = 0.1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
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


def lr_schedule(cfg: ProbeConfig, iters_per_epoch: int) -> np.ndarray:
    """Learning rate of every iteration: step decay at the milestone epochs."""
    epoch = np.arange(cfg.epochs * iters_per_epoch) / iters_per_epoch
    drops = sum((epoch >= round(m * cfg.epochs)).astype(int) for m in cfg.milestones)
    return cfg.lr * cfg.gamma ** drops


def train_probe(train_x, train_y, num_classes: int, cfg: ProbeConfig = ProbeConfig(),
                device: torch.device = torch.device("cpu")):
    """Train the head; return (predict(x) -> labels, record)."""
    x, y = _tensor(train_x, device).float(), _tensor(train_y, device).long()
    if len(x) == 0:
        raise CompressError("linear probe: the train split is empty; check the image store's split")
    mean, std = standardiser(x)
    z = head_inputs(x, mean, std)
    g = torch.Generator().manual_seed(cfg.seed)
    linear = torch.nn.Linear(z.shape[1], num_classes).to(device)
    with torch.no_grad():  # seeded init, independent of the global RNG
        bound = 1 / z.shape[1] ** 0.5
        linear.weight.copy_(torch.empty_like(linear.weight, device="cpu").uniform_(-bound, bound, generator=g))
        linear.bias.zero_()
    opt = torch.optim.SGD(linear.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    bs = len(z) if cfg.batch_size is None else min(cfg.batch_size, len(z))
    iters = (len(z) + bs - 1) // bs
    schedule = lr_schedule(cfg, iters)
    step, loss = 0, torch.tensor(float("nan"))
    for _ in range(cfg.epochs):
        order = torch.randperm(len(z), generator=g).to(device)
        for lo in range(0, len(z), bs):
            for group in opt.param_groups:
                group["lr"] = float(schedule[step])
            idx = order[lo:lo + bs]
            loss = F.cross_entropy(linear(z[idx]), y[idx])
            if not torch.isfinite(loss):
                raise CompressError(f"linear probe: loss became {loss.item()} at step {step}; lower the lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1

    @torch.no_grad()
    def predict(q) -> np.ndarray:
        return linear(head_inputs(_tensor(q, device), mean, std)).argmax(1).cpu().numpy()

    record = {"protocol": PROTOCOL, **asdict(cfg), "milestone_epochs": [round(m * cfg.epochs)
                                                                       for m in cfg.milestones],
              "batch_size": bs, "iterations": step, "schedule": "per-iteration step decay",
              "final_loss": loss.item()}
    record["milestones"] = list(cfg.milestones)
    return predict, record


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
