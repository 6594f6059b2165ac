"""CompRess as a module: queue order, the shared pointer, the three variants."""
import pytest
import torch
from torch import nn

from pipeline.methods.losses import compress_loss
from pipeline.methods.bank import AnchorBank
from pipeline.methods.compress import CompRess
from tests.tiny_student import TinyStudent


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 2, 2, generator=g)
    t = nn.functional.normalize(torch.randn(b, 10, generator=g), dim=1)
    return x, t


def test_logits_use_the_queues_from_before_the_write():
    method = CompRess(TinyStudent(), teacher_dim=10, variant="2q", K=16, tau=0.1, m=0.9)
    x, t = _batch()
    qt, qs = method.bank.read("teacher").clone(), method.bank.read("student").clone()
    loss, _ = method([x], t)
    expected = compress_loss(t, method.student(x), qt, qs, 0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the batch is not in the bank while its loss is computed
    assert not torch.isclose(qt, t[:1]).all(1).any()


def test_both_queues_advance_with_one_shared_pointer():
    method = CompRess(TinyStudent(), teacher_dim=10, variant="2q", K=10, tau=0.1, m=0.9)
    for step in range(4):  # 4 x 4 rows into 10 slots: wraps around
        x, t = _batch(seed=step)
        method([x], t)
        start = int(method.bank.ptr)
        method.after_step()
        slots = [(start + i) % 10 for i in range(4)]
        assert torch.allclose(method.bank.read("teacher")[slots], t)
        with torch.no_grad():
            k = nn.functional.normalize(method.momentum_student(x), dim=1)
        # student row j was written together with teacher row j (momentum student before its EMA update
        # differs slightly from after, so compare directions loosely)
        assert nn.functional.cosine_similarity(method.bank.read("student")[slots], k).min() > 0.9
        assert int(method.bank.ptr) == (start + 4) % 10


def test_momentum_student_is_ema_of_the_student_and_gets_no_gradient():
    method = CompRess(TinyStudent(), teacher_dim=10, variant="2q", K=16, tau=0.1, m=0.5)
    assert all(not p.requires_grad for p in method.momentum_student.parameters())
    before = [p.clone() for p in method.momentum_student.parameters()]
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1.0)
    x, t = _batch()
    loss, _ = method([x], t)
    opt.zero_grad()
    loss.backward()
    opt.step()
    method.after_step()
    for b, p_m, p in zip(before, method.momentum_student.parameters(), method.student.parameters()):
        assert torch.allclose(p_m, 0.5 * b + 0.5 * p)


def test_1q_maps_the_student_into_the_teacher_space_and_keeps_one_queue():
    method = CompRess(TinyStudent(), teacher_dim=10, variant="1q", K=16, tau=0.1)
    assert method.head.in_features == 6 and method.head.out_features == 10 and method.head.bias is not None
    assert method.bank.names == ("teacher",)
    assert not hasattr(method, "momentum_student")
    x, t = _batch()
    loss, _ = method([x], t)
    loss.backward()
    method.after_step()
    assert torch.allclose(method.bank.read("teacher")[:4], t)


def test_nomomentum_fills_the_student_queue_with_the_student_itself():
    method = CompRess(TinyStudent(), teacher_dim=10, variant="2q-nomomentum", K=16, tau=0.1)
    assert not hasattr(method, "momentum_student")
    x, t = _batch()
    method([x], t)
    method.after_step()
    method.student.eval()  # BN in eval would differ from the batch statistics used in training
    method.student.train()
    with torch.no_grad():
        s = nn.functional.normalize(method.student(x), dim=1)
    assert torch.allclose(method.bank.read("student")[:4], s, atol=1e-5)


def test_bank_pointer_and_queues_survive_a_state_dict_round_trip():
    bank = AnchorBank(8, {"a": 3, "b": 5}, torch.Generator().manual_seed(0))
    bank.enqueue(a=torch.ones(3, 3), b=torch.ones(3, 5))
    other = AnchorBank(8, {"a": 3, "b": 5}, torch.Generator().manual_seed(1))
    other.load_state_dict(bank.state_dict())
    assert int(other.ptr) == 3 and torch.equal(other.read("a"), bank.read("a"))


def test_initial_queue_rows_are_noise_of_about_unit_norm():
    bank = AnchorBank(4096, {"t": 512}, torch.Generator().manual_seed(0))
    norms = bank.read("t").norm(dim=1)
    assert 0.9 < norms.mean().item() < 1.1
    assert bank.read("t").abs().max().item() <= (3 / 512) ** 0.5 + 1e-6


def test_every_registered_method_keeps_the_contract():
    from pipeline.methods import METHODS, REGISTRY, Method, build_method
    from pipeline.methods.base import DataInfo
    import numpy as np
    assert set(METHODS) == set(REGISTRY) and len(REGISTRY) == 10
    data = DataInfo(num_items=64, train_indices=np.arange(48), num_classes=4,
                    teacher_rows=torch.nn.functional.normalize(torch.randn(64, 8), dim=1))
    hp = {"bank_size": 16, "tau": 0.04, "ema": 0.9, "crd_dim": 8, "crd_negatives": 8, "crd_tau": 0.07,
          "crd_memory_momentum": 0.5, "seed": 0, "clusters": 4, "seed_tau_student": 0.2, "seed_tau_teacher": 0.01,
          "moco_dim": 8, "exclude_own_keys": False, "amp": "none"}
    for name, cls in REGISTRY.items():
        assert issubclass(cls, Method) and name in cls.names
        method = build_method(name, TinyStudent(d_in=3 * 8 * 8), teacher_dim=8, data=data, hp=hp)
        assert isinstance(method, cls) and isinstance(method.student, TinyStudent)
        views = [torch.randn(8, 3, 8, 8) for _ in range(cls.views)]  # MoCo encodes keys in 4 BN groups
        t = data.teacher_rows[:8] if cls.needs_teacher else None
        y = torch.arange(8) % 4 if cls.needs_labels else None
        loss, logs = method(views, t, y, torch.arange(8))
        assert loss.ndim == 0 and torch.isfinite(loss) and isinstance(logs, dict), name
        method.after_step()
    assert [n for n, c in REGISTRY.items() if c.needs_labels] == ["supervised"]
    assert [n for n, c in REGISTRY.items() if c.needs_cache] == ["cc"]
    assert sorted(n for n, c in REGISTRY.items() if not c.needs_teacher) == ["moco", "supervised"]
