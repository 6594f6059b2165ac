"""Property tests of the pure loss functions (pipeline/methods/losses.py)."""
import pytest
import torch
import torch.nn.functional as F

from pipeline.methods.losses import (cluster_classification_loss, compress_kl, compress_loss, crd_loss, infonce,
                             regression_loss, seed_loss, similarity_logits)


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("seed", range(5))
def test_compress_kl_is_non_negative(seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(8, 50, generator=g) * 5, torch.randn(8, 50, generator=g) * 5
    assert compress_kl(a, b).item() >= 0


def test_compress_kl_is_zero_when_distributions_agree():
    a = torch.randn(8, 50)
    assert compress_kl(a, a).item() == pytest.approx(0, abs=1e-6)
    # softmax ignores a constant shift per row: still the same distribution
    assert compress_kl(a, a + torch.randn(8, 1)).item() == pytest.approx(0, abs=1e-5)


def test_compress_loss_is_zero_when_student_equals_teacher():
    t, bank = _unit(16, 32, seed=1), _unit(100, 32, seed=2)
    assert compress_loss(t, t, bank, bank, 0.04).item() == pytest.approx(0, abs=1e-5)


def test_compress_loss_is_invariant_to_scaling_before_normalisation():
    t, s = _unit(16, 32, seed=1), torch.randn(16, 24)
    qt, qs = _unit(100, 32, seed=2), _unit(100, 24, seed=3)
    base = compress_loss(t, s, qt, qs, 0.04)
    scaled = compress_loss(t * 7.0, s * 0.01, qt, qs, 0.04)
    assert scaled.item() == pytest.approx(base.item(), rel=1e-5)


def test_compress_loss_gives_no_gradient_to_the_teacher():
    t = _unit(4, 8).requires_grad_()
    s = torch.randn(4, 6, requires_grad=True)
    compress_loss(t, s, _unit(20, 8, seed=4), _unit(20, 6, seed=5), 0.1).backward()
    assert t.grad is None and s.grad is not None


def test_compress_loss_decreases_under_gradient_steps():
    t, qt, qs = _unit(16, 32, seed=1), _unit(200, 32, seed=2), _unit(200, 32, seed=2)
    s = torch.randn(16, 32, requires_grad=True)
    opt = torch.optim.SGD([s], lr=20.0)
    history = []
    for _ in range(50):
        loss = compress_loss(t, s, qt, qs, 0.1)
        history.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert history[-1] < 0.5 * history[0]


def test_similarity_logits_shape_and_temperature():
    z, bank = torch.randn(3, 5), _unit(7, 5)
    a, b = similarity_logits(z, bank, 1.0), similarity_logits(z, bank, 0.5)
    assert a.shape == (3, 7) and torch.allclose(b, 2 * a)


def test_infonce_properties():
    q, negatives = _unit(8, 16, seed=1), _unit(64, 16, seed=2)
    assert infonce(q, q, negatives, 0.2).item() >= 0
    # the positive being the query itself is easier than a random key
    assert infonce(q, q, negatives, 0.2) < infonce(q, _unit(8, 16, seed=3), negatives, 0.2)
    assert infonce(q * 3, q * 0.1, negatives, 0.2).item() == pytest.approx(infonce(q, q, negatives, 0.2).item(), rel=1e-5)


def test_regression_loss_zero_and_scale_invariant():
    t = torch.randn(8, 16)
    assert regression_loss(t * 3, t).item() == pytest.approx(0, abs=1e-6)
    s = torch.randn(8, 16)
    assert regression_loss(s * 5, t).item() == pytest.approx(regression_loss(s, t).item(), rel=1e-5)
    assert regression_loss(s, t).item() > 0


def _descends(loss_of, s, steps=50, lr=5.0):
    s = s.clone().requires_grad_()
    opt = torch.optim.SGD([s], lr=lr)
    history = []
    for _ in range(steps):
        loss = loss_of(s)
        history.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return history


def test_regression_loss_decreases_under_gradient_steps():
    t = torch.randn(8, 16)
    history = _descends(lambda s: regression_loss(s, t), torch.randn(8, 16))
    assert history[-1] < 0.2 * history[0]


def test_crd_loss_properties():
    s, t = _unit(8, 16, seed=1), _unit(8, 16, seed=2)
    ps, pt = _unit(8, 16, seed=5), _unit(8, 16, seed=6)  # the memories of the batch's own images
    ms, mt = _unit(64, 16, seed=3), _unit(64, 16, seed=4)
    assert crd_loss(s, t, ps, pt, ms, mt, 0.07).item() >= 0
    # a query that matches its own image's memory on the other side is easier than one that does not
    assert crd_loss(pt, ps, ps, pt, ms, mt, 0.07) < crd_loss(s, t, ps, pt, ms, mt, 0.07)
    assert crd_loss(s * 4, t * 0.3, ps, pt, ms, mt, 0.07).item() == pytest.approx(
        crd_loss(s, t, ps, pt, ms, mt, 0.07).item(), rel=1e-5)
    # the student's term descends (t matches its positive, so the teacher's term is small and fixed)
    history = _descends(lambda x: crd_loss(x, ps, ps, pt, ms, mt, 0.07), torch.randn(8, 16), lr=0.5)
    assert history[-1] < 0.5 * history[0]


def test_crd_loss_gives_nothing_for_drifting_away_from_the_memories():
    """Both heads aligned, the memories caught up with them, all in a narrow cone as real embeddings are. Rotating
    both current embeddings together away from the cone: with positives taken from the memories (CRD's), the loss
    rises; with the other side's current embedding as the positive it would collapse (the pair stays aligned
    while every negative looks unlike the query), a reward for drifting rather than for aligning."""
    gen = torch.Generator().manual_seed(0)
    cone = torch.nn.functional.normalize(torch.ones(1, 16) + 0.3 * torch.randn(256, 16, generator=gen), dim=1)
    memory_s = memory_t = cone
    idx, neg = torch.arange(8), torch.arange(8, 256)
    s = t = cone[idx]
    rotation = torch.linalg.qr(torch.randn(16, 16, generator=gen))[0]
    args = (memory_s[idx], memory_t[idx], memory_s[neg], memory_t[neg], 0.07)
    assert crd_loss(s @ rotation, t @ rotation, *args) > crd_loss(s, t, *args)
    drifted = infonce(s @ rotation, t @ rotation, memory_t[neg], 0.07)  # the other side's current embedding
    assert drifted < 0.1 * infonce(s, t, memory_t[neg], 0.07)


def test_crd_loss_masks_a_negative_that_is_the_query_itself():
    t, ms = _unit(4, 16, seed=2), _unit(10, 16, seed=3)
    mt = _unit(10, 16, seed=4).clone()
    mt[0] = t[0]  # memory row 0 is image 0 itself
    exclude = torch.zeros(4, 10, dtype=torch.bool)
    exclude[0, 0] = True
    masked = crd_loss(t, t, t, t, ms, mt, 0.07, exclude)
    other = mt.clone()
    other[0] = _unit(1, 16, seed=9)[0]
    assert masked < crd_loss(t, t, t, t, ms, mt, 0.07)
    column = torch.zeros(4, 10, dtype=torch.bool)
    column[:, 0] = True  # masked for every query: its content no longer matters
    assert crd_loss(t, t, t, t, ms, mt, 0.07, column).item() == pytest.approx(
        crd_loss(t, t, t, t, ms, other, 0.07, column).item(), rel=1e-6)


def _entropy_of_teacher(t, queue, tau):
    t = F.normalize(t, dim=1)
    p = F.softmax(torch.cat([(t * t).sum(1, keepdim=True), t @ queue.t()], 1) / tau, 1)
    return -(p * p.log()).sum(1).mean()


def test_seed_loss_properties():
    t, queue, s = _unit(8, 16, seed=1), _unit(50, 16, seed=2), torch.randn(8, 16)
    # soft cross-entropy >= the teacher's entropy, with equality when the distributions agree
    h = _entropy_of_teacher(t, queue, 0.2).item()
    assert seed_loss(s, t, queue, 0.2, 0.2).item() >= h - 1e-6
    assert seed_loss(t, t, queue, 0.2, 0.2).item() == pytest.approx(h, abs=1e-5)
    assert seed_loss(s * 9, t * 0.5, queue, 0.2, 0.01).item() == pytest.approx(
        seed_loss(s, t, queue, 0.2, 0.01).item(), rel=1e-5)
    history = _descends(lambda x: seed_loss(x, t, queue, 0.2, 0.01), s, lr=0.5)
    assert history[-1] < 0.5 * history[0]


def test_seed_loss_gives_no_gradient_to_the_teacher():
    t = _unit(4, 8).requires_grad_()
    s = torch.randn(4, 8, requires_grad=True)
    seed_loss(s, t.detach(), _unit(20, 8, seed=3), 0.2, 0.01).backward()
    assert s.grad is not None and t.grad is None


def test_cluster_classification_loss_properties():
    ids = torch.tensor([0, 2, 1, 2])
    sharp = F.one_hot(ids, 3).float() * 50
    assert cluster_classification_loss(sharp, ids).item() == pytest.approx(0, abs=1e-6)
    logits = torch.randn(4, 3)
    assert cluster_classification_loss(logits, ids).item() > 0
    history = _descends(lambda x: cluster_classification_loss(x, ids), logits, lr=1.0)
    assert history[-1] < 0.5 * history[0]
