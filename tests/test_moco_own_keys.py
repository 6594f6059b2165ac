"""MoCo's optional mask of the query's own image among the queued negatives (--exclude-own-keys)."""
import pytest
import torch

import pipeline.methods.moco as moco_module
from pipeline.methods.moco import MoCo
from pipeline.models.backbones import build_backbone


@pytest.fixture
def seen(monkeypatch):
    """The `exclude` mask of every InfoNCE call MoCo makes, in order."""
    masks = []
    real = moco_module.infonce
    monkeypatch.setattr(moco_module, "infonce", lambda q, k, neg, tau, exclude=None: (
        masks.append(exclude), real(q, k, neg, tau, exclude))[1])
    return masks


def _moco(exclude: bool) -> MoCo:
    student = build_backbone("resnet18_w16", small_input=True, seed=0)
    return MoCo(student, dim=8, K=16, tau=0.2, m=0.9, generator=torch.Generator().manual_seed(0),
                exclude_own_keys=exclude).train()


def _step(model, idx, seen):
    x = torch.randn(len(idx), 3, 8, 8, generator=torch.Generator().manual_seed(int(idx[0])))
    model([x, x.flip(-1)], None, None, torch.tensor(idx))
    model.after_step()
    return seen[-1]


def test_own_earlier_keys_are_masked_and_nothing_else(seen):
    model = _moco(exclude=True)
    assert _step(model, list(range(8)), seen).sum() == 0  # the queue holds only initial noise (id -1)
    exclude = _step(model, list(range(4, 12)), seen)  # slots 0-7 now hold images 0-7
    expected = torch.zeros(8, 16, dtype=torch.bool)
    for j in range(4):
        expected[j, 4 + j] = True  # images 4-7 meet their earlier keys in slots 4-7; 8-11 are new
    assert torch.equal(exclude, expected)
    exclude = _step(model, [5, 0, 11, 20, 21, 22, 23, 24], seen)  # slots 8-15 now hold images 4-11
    expected = torch.zeros(8, 16, dtype=torch.bool)
    expected[0, 5] = expected[0, 9] = expected[1, 0] = expected[2, 15] = True  # image 5 is queued twice
    assert torch.equal(exclude, expected)


def test_off_by_default_keeps_the_bank_and_checkpoint_layout(seen):
    model = _moco(exclude=False)
    assert _step(model, list(range(8)), seen) is None and _step(model, list(range(4, 12)), seen) is None
    assert sorted(k for k in model.state_dict() if k.startswith("bank.")) == ["bank.ptr", "bank.queue_keys"]
