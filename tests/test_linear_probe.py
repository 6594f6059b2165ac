"""The linear probe learns separable data, follows the paper's schedule, and the frozen check catches changes."""
import numpy as np
import pytest
import torch

from pipeline.evaluation import linear_probe
from pipeline.runtime.errors import CompressError
from pipeline.evaluation.linear_probe import (ProbeConfig, ProbeHead, check_frozen, fit_head, probe_schedule, predictor,
                                   snapshot, standardiser, train_probe)


def _separable(seed=0, n=400, d=12, c=4):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, c))
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x @ w).argmax(1)  # linearly separable after l2-normalisation (argmax is scale-free)


@pytest.mark.parametrize("batch_size", [64, None])
def test_learns_separable_data(batch_size):
    x, y = _separable()
    predict, record = train_probe(x[:300], y[:300], 4, ProbeConfig(epochs=60, lr=0.5, batch_size=batch_size))
    assert np.mean(predict(x[:300]) == y[:300]) > 0.95
    assert np.mean(predict(x[300:]) == y[300:]) > 0.85
    assert record["protocol"].startswith("cached-features")
    assert record["iterations"] == 60 * (1 if batch_size is None else 5)


def test_chance_on_random_labels_and_seeded():
    x, _ = _separable(1)
    y = np.random.default_rng(5).integers(0, 4, len(x))
    p1, _ = train_probe(x[:300], y[:300], 4, ProbeConfig(epochs=5, seed=3))
    p2, _ = train_probe(x[:300], y[:300], 4, ProbeConfig(epochs=5, seed=3))
    np.testing.assert_array_equal(p1(x[300:]), p2(x[300:]))
    assert np.mean(p1(x[300:]) == y[300:]) < 0.5


def test_schedule_scales_the_paper_milestones():
    lr = probe_schedule(ProbeConfig(), iters_per_epoch=3)  # paper: 40 epochs, drops at 15 and 30
    assert len(lr) == 120
    assert lr[15 * 3 - 1] == pytest.approx(0.01) and lr[15 * 3] == pytest.approx(0.001)
    assert lr[30 * 3] == pytest.approx(0.0001) and lr[-1] == pytest.approx(0.0001)
    short = probe_schedule(ProbeConfig(epochs=8), iters_per_epoch=1)
    assert list(np.round(short / 0.01, 6)) == [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01]


def test_standardiser_is_fixed_from_train():
    x = torch.randn(50, 6) * 3 + 1
    mean, std = standardiser(x)
    z = torch.nn.functional.normalize(x, dim=1)
    torch.testing.assert_close((z - mean) / std, (z - z.mean(0)) / z.std(0, unbiased=False))


def test_check_frozen_catches_a_changed_backbone():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    before = snapshot(net)
    net.eval()
    with torch.no_grad():
        net(torch.randn(4, 3))
    check_frozen(net, before)  # eval mode leaves BN statistics alone
    net.train()
    net(torch.randn(4, 3))
    with pytest.raises(CompressError, match="changed"):
        check_frozen(net, before)


def test_fast_probe_uses_the_papers_weight_decay(monkeypatch):
    made = []
    real = torch.optim.SGD

    def recording_sgd(params, **kw):
        made.append(kw)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "SGD", recording_sgd)
    x, y = _separable()
    _, record = train_probe(x, y, 4, ProbeConfig(epochs=1))
    assert made == [{"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}]
    assert record["probe"] == "cached" and record["weight_decay"] == 1e-4
    # and it acts: the same run without decay ends with larger weights
    heads = []
    monkeypatch.setattr(linear_probe, "predictor", lambda head, device: heads.append(head))
    for wd in (1e-4, 0.0):
        train_probe(x, y, 4, ProbeConfig(epochs=3, lr=0.5, weight_decay=wd))
    assert heads[0].linear.weight.norm() < heads[1].linear.weight.norm()


def test_the_reported_head_is_the_last_epochs():
    """fit_head returns after the final epoch with no selection: a last epoch that teaches only class 2 leaves a
    head that predicts class 2 everywhere, however good the earlier epochs were."""
    x, y = _separable()
    x, y = torch.from_numpy(x), torch.from_numpy(y).long()
    head = ProbeHead(*standardiser(x), 4, seed=0)
    cfg = ProbeConfig(epochs=4, lr=1.0, milestones=())

    def batches(epoch):
        if epoch < cfg.epochs - 1:
            yield x, y
        else:
            for _ in range(50):
                yield x, torch.full_like(y, 2)
    steps, _ = fit_head(head, batches, 50, cfg)
    assert steps == 3 + 50
    assert (predictor(head, "cpu")(x) == 2).all()
    _, record = train_probe(x, y, 4, ProbeConfig(epochs=2))
    assert record["reported"].startswith("last epoch") and record["iterations"] == 2 * 2


class _Rows:
    """An fp16 feature matrix that records the most rows any single read asked for."""

    def __init__(self, x):
        self.x, self.shape, self.most = x, x.shape, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, rows):
        out = self.x[rows]
        self.most = max(self.most, len(out))
        return out


def _plain_probe(x, y, num_classes, cfg):
    """The reference: the whole train set as one float32 tensor, batches indexed from it."""
    x, y = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    z = torch.nn.functional.normalize(x, dim=1)
    head = ProbeHead(z.mean(0), z.std(0, unbiased=False).clamp_min(1e-6), num_classes, cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)

    def batches(epoch):
        order = torch.randperm(len(x), generator=g)
        for lo in range(0, len(x), cfg.batch_size):
            yield x[order[lo:lo + cfg.batch_size]], y[order[lo:lo + cfg.batch_size]]
    fit_head(head, batches, -(-len(x) // cfg.batch_size), cfg)
    return predictor(head, "cpu")


def test_streamed_fp16_probe_matches_the_plain_one(monkeypatch):
    from pipeline.evaluation import backend
    monkeypatch.setattr(backend, "CPU_BLOCK_BYTES", 4 * 12 * 64)  # the standardisation reads 64 rows at a time
    x, y = _separable(7, n=500)
    x16 = x.astype(np.float16)
    cfg = ProbeConfig(epochs=6, lr=0.3, batch_size=32, seed=2)
    rows = _Rows(x16[:400])
    streamed, _ = train_probe(rows, y[:400], 4, cfg)
    plain = _plain_probe(x16[:400], y[:400], 4, cfg)
    assert rows.most == 64  # batches and blocks: never the whole train set at once
    agree = np.mean(streamed(x16[400:]) == plain(x16[400:]))
    assert agree >= 0.99, agree  # the same batches and steps; only the standardisation's rounding differs
    assert abs(np.mean(streamed(x16[400:]) == y[400:]) - np.mean(plain(x16[400:]) == y[400:])) <= 0.01
