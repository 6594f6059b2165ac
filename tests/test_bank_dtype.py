"""Under bf16 autocast the anchor queues are stored in bf16: the same training, bitwise, in half the memory.

Autocast rounds a float32 queue to bf16 before every product that reads it, so a queue stored rounded must give
exactly the same losses and weights. Queues that are not read by products (MoCo's image ids) stay float32.
"""
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.methods import DataInfo, build_method
from stages.train_config import TrainConfig
from tests.tiny_student import TinyStudent


def _train(method_name: str, amp: str, steps: int = 4, b: int = 8, **extra):
    """A few SGD steps under CPU bf16 autocast; the queues are stored as `amp` says. Returns losses, method."""
    hp = {**asdict(TrainConfig(data=Path("."), out=Path("."))), "bank_size": 10, "amp": amp, **extra}
    data = DataInfo(num_items=40, train_indices=np.arange(40), num_classes=10)
    torch.manual_seed(0)  # MoCo's key shuffle draws from the global generator
    method = build_method(method_name, TinyStudent(), teacher_dim=10, data=data, hp=hp,
                          generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):  # 32 rows through a 10-row bank: the pointer wraps
        views = [torch.randn(b, 3, 2, 2, generator=g) for _ in range(method.views)]
        t = nn.functional.normalize(torch.randn(b, 10, generator=g), dim=1)
        idx = torch.arange(step * b, (step + 1) * b) % 12  # images come back: MoCo meets its own keys
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = method(views, t, None, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step()
        losses.append(loss.item())
    return losses, method


@pytest.mark.parametrize("name,extra", [("compress-2q", {}), ("compress-1q", {}), ("seed", {}),
                                        ("moco", {"exclude_own_keys": True})])
def test_bf16_queues_train_bitwise_like_float32_queues(name, extra):
    losses32, m32 = _train(name, "none", **extra)
    losses16, m16 = _train(name, "bf16", **extra)
    queues = {k: v for k, v in m16.bank.state_dict().items() if k.startswith("queue_")}
    for k, v in queues.items():
        assert v.dtype == (torch.float32 if k == "queue_ids" else torch.bfloat16), k
        assert m32.bank.state_dict()[k].dtype == torch.float32
    assert losses16 == losses32
    a, b = m32.student.state_dict(), m16.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    for k, v in queues.items():  # the stored rows are the float32 rows, rounded
        assert torch.equal(v, m32.bank.state_dict()[k].to(v.dtype)), k


def test_without_autocast_the_queues_stay_float32():
    _, method = _train("compress-2q", "none", steps=1)
    assert {v.dtype for k, v in method.state_dict().items() if k.startswith("bank.queue_")} == {torch.float32}
