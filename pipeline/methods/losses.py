"""Losses as pure functions of tensors: no state, no queues, no modules. Property-tested in tests/test_losses.py.

Every function l2-normalises its embedding inputs itself, so each loss is invariant to rescaling them.
Shapes: B batch, K anchors, D widths (teacher Dt, student Ds).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_logits(z: torch.Tensor, anchors: torch.Tensor, tau: float) -> torch.Tensor:
    """(B, D) x (K, D) -> (B, K) cosine similarities over tau. Anchors are used as given: the queues start as
    un-normalised noise (method.md) and are filled with unit vectors afterwards."""
    return F.normalize(z, dim=1) @ anchors.t() / tau


def compress_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_teacher || p_student) summed over anchors, averaged over the batch. CompRess's objective.

    teacher_logits: (B, K), no gradient needed; student_logits: (B, K).
    """
    log_p_t = F.log_softmax(teacher_logits.float(), dim=1)
    log_p_s = F.log_softmax(student_logits.float(), dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()


def compress_loss(t: torch.Tensor, s: torch.Tensor, teacher_anchors: torch.Tensor,
                  student_anchors: torch.Tensor, tau: float) -> torch.Tensor:
    """CompRess: match the student's similarity distribution over its anchors to the teacher's.

    t: (B, Dt) teacher embeddings, s: (B, Ds) student embeddings; teacher_anchors (K, Dt) and
    student_anchors (K, Ds) describe the same K images row by row (2q), or are both the teacher queue (1q,
    with s already mapped to Dt). One temperature for both sides.
    """
    with torch.no_grad():
        teacher_logits = similarity_logits(t, teacher_anchors, tau)
    return compress_kl(teacher_logits, similarity_logits(s, student_anchors, tau))


def infonce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, tau: float,
            exclude: torch.Tensor | None = None) -> torch.Tensor:
    """MoCo's InfoNCE: q (B, D) must pick its positive k (B, D) out of k plus negatives (K, D).
    exclude: optional (B, K) bool, True where a negative is in fact the query's own image (dropped)."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    positive = (q * k).sum(1, keepdim=True)  # B x 1
    negative = q @ negatives.t()  # B x K
    if exclude is not None:
        negative = negative.masked_fill(exclude, float("-inf"))
    logits = torch.cat([positive, negative], dim=1) / tau
    return F.cross_entropy(logits.float(), torch.zeros(len(q), dtype=torch.long, device=q.device))


def regression_loss(s_projected: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Reg / Reg-BN baseline: squared error between the (projected) student and the teacher embedding, both
    l2-normalised, summed over dimensions and averaged over the batch."""
    return (F.normalize(s_projected, dim=1) - F.normalize(t, dim=1)).pow(2).sum(1).mean()


def crd_loss(s: torch.Tensor, t: torch.Tensor, student_positives: torch.Tensor, teacher_positives: torch.Tensor,
             student_negatives: torch.Tensor, teacher_negatives: torch.Tensor, tau: float,
             exclude: torch.Tensor | None = None) -> torch.Tensor:
    """CRD (Tian et al. 2020), symmetric: the student embedding s must pick its own image's teacher memory out of
    K teacher memories of other images, and the teacher embedding t its own image's student memory out of K
    student ones. s, t: (B, D) (the 128-d linear embeddings of both sides); *_positives: (B, D) the memories of
    the batch's own images; *_negatives: (K, D) memories of other images.

    Positives come from the memories as negatives do (CRD's ContrastMemory scores the memory of the positive
    index): scored against the other side's *current* embedding instead, both heads could lower the loss by
    drifting together away from what the lagging memories hold, without aligning anything new.
    The paper's NCE with a fixed normaliser is replaced by the exact softmax over 1 + K (InfoNCE), which CRD's
    authors report works as well; it needs no estimate of the partition function. exclude: (B, K) bool, True
    where negative j is image i itself (drawn from memory by chance).
    """
    return (infonce(s, teacher_positives, teacher_negatives, tau, exclude)
            + infonce(t, student_positives, student_negatives, tau, exclude))


def seed_loss(s: torch.Tensor, t: torch.Tensor, queue: torch.Tensor, tau_student: float,
              tau_teacher: float) -> torch.Tensor:
    """SEED (Fang et al. 2021): soft cross-entropy between the teacher's and the student's similarity
    distributions over [the image's own teacher embedding, the K queued teacher embeddings].

    s: (B, Dt) student mapped into the teacher's space; t: (B, Dt); queue: (K, Dt). The teacher temperature
    is much smaller (0.01 vs 0.2), so the target is close to one-hot on the image's own embedding. Returned
    as the cross-entropy (SEED's loss): it equals the teacher's entropy, not 0, when the distributions agree.
    """
    t = F.normalize(t, dim=1)
    s = F.normalize(s, dim=1)
    with torch.no_grad():
        teacher_logits = torch.cat([(t * t).sum(1, keepdim=True), t @ queue.t()], dim=1) / tau_teacher
        p_t = F.softmax(teacher_logits.float(), dim=1)
    student_logits = torch.cat([(s * t).sum(1, keepdim=True), s @ queue.t()], dim=1) / tau_student
    return -(p_t * F.log_softmax(student_logits.float(), dim=1)).sum(1).mean()


def cluster_classification_loss(logits: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """CC (Noroozi et al. 2018): cross-entropy of a classifier's logits (B, C) on the k-means cluster ids (B,)
    of the teacher's features."""
    return F.cross_entropy(logits.float(), clusters)
