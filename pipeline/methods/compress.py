"""CompRess (Abbasi Koohpayegani, Tejankar & Pirsiavash, NeurIPS 2020): compress a self-supervised teacher by
making the student reproduce the teacher's similarity distribution over a bank of anchor images.

Variants (one class, the variant is a setting):
    2q             student anchors = a second queue filled by a momentum (EMA) copy of the student
    2q-nomomentum  the same queue filled by the student itself (detached): the paper's no-momentum ablation
    1q             student anchors = the teacher queue; a Linear(Ds -> Dt) maps the student into the
                   teacher's space (training only: it is not part of the exported student)

Order inside one step (method.md): logits read the queues *before* this batch is written (a batch is never its
own anchor); after the optimiser step `after_step` enqueues the teacher rows and (2q) the momentum student's
rows at one shared pointer, then EMA-updates the momentum student.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.methods.losses import compress_loss
from pipeline.methods.base import BuildContext, Method, register
from pipeline.methods.bank import AnchorBank, batch_statistics_mode, momentum_copy, momentum_update

VARIANTS = ("2q", "1q", "2q-nomomentum")


@register
class CompRess(Method):
    """student: a Backbone (forward -> (B, Ds)); teacher_dim: Dt of the cached embeddings.

    K    number of anchors in the bank (paper 128,000)
    tau  temperature of both softmaxes (paper 0.04)
    m    EMA momentum of the momentum student (paper 0.999), 2q only
    queue_dtype  storage of the queues: the autocast dtype when training under autocast (see AnchorBank)
    """

    names = tuple(f"compress-{v}" for v in VARIANTS)

    @classmethod
    def build(cls, name: str, ctx: BuildContext) -> "CompRess":
        return cls(ctx.student, ctx.teacher_dim, variant=name.removeprefix("compress-"), K=ctx.hp["bank_size"],
                   tau=ctx.hp["tau"], m=ctx.hp["ema"], generator=ctx.generator, queue_dtype=ctx.queue_dtype)

    def __init__(self, student: nn.Module, teacher_dim: int, variant: str = "2q", K: int = 128_000,
                 tau: float = 0.04, m: float = 0.999, generator: torch.Generator | None = None,
                 queue_dtype: torch.dtype = torch.float32):
        super().__init__()
        assert variant in VARIANTS, f"unknown CompRess variant {variant!r}"
        self.variant, self.tau, self.m = variant, tau, m
        self.student = student
        ds = student.embed_dim
        if variant == "1q":
            self.head = nn.Linear(ds, teacher_dim)  # with bias, no BN/ReLU
            self.bank = AnchorBank(K, {"teacher": teacher_dim}, generator, {"teacher": queue_dtype})
        else:
            self.bank = AnchorBank(K, {"teacher": teacher_dim, "student": ds}, generator,
                                   {"teacher": queue_dtype, "student": queue_dtype})
        if variant == "2q":
            self.momentum_student = momentum_copy(student)
        self._pending: dict[str, torch.Tensor] = {}

    def forward(self, views: list[torch.Tensor], t: torch.Tensor, y=None, idx=None) -> tuple[torch.Tensor, dict]:
        x = views[0]
        s = self.student(x)  # B x Ds
        if self.variant == "1q":
            queue_t = self.bank.read("teacher")
            loss = compress_loss(t, self.head(s), queue_t, queue_t, self.tau)
            self._pending = {"teacher": t}
            return loss, {}
        loss = compress_loss(t, s, self.bank.read("teacher"), self.bank.read("student"), self.tau)
        if self.variant == "2q":
            with torch.no_grad():
                k = batch_statistics_mode(self.momentum_student)(x)
        else:
            k = s.detach()
        self._pending = {"teacher": t, "student": nn.functional.normalize(k.float(), dim=1)}
        return loss, {}

    @torch.no_grad()
    def after_step(self) -> None:
        """Enqueue this batch (one pointer for both queues), then EMA-update the momentum student."""
        self.bank.enqueue(**self._pending)
        self._pending = {}
        if self.variant == "2q":
            momentum_update(self.student, self.momentum_student, self.m)
