"""SEED (Fang et al., ICLR 2021): self-supervised distillation by soft cross-entropy over one queue of teacher
embeddings that also holds the image's own teacher embedding.

K          queue length (paper 65,536)
tau_s      student temperature (paper 0.2)
tau_t      teacher temperature, much smaller (paper 0.01): the target is nearly one-hot on the image itself
The student gets a training-only Linear(Ds -> Dt) so its query lives in the teacher's space (SEED used an MLP
projection; a linear layer keeps the comparison with CompRess-1q fair). The queue is read before this batch is
written and advances after the optimiser step, like CompRess.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.methods.losses import seed_loss
from pipeline.methods.bank import AnchorBank
from pipeline.methods.base import BuildContext, Method, register


@register
class SEED(Method):
    names = ("seed",)

    @classmethod
    def build(cls, name: str, ctx: BuildContext) -> "SEED":
        return cls(ctx.student, ctx.teacher_dim, K=ctx.hp["bank_size"], tau_s=ctx.hp["seed_tau_student"],
                   tau_t=ctx.hp["seed_tau_teacher"], generator=ctx.generator, queue_dtype=ctx.queue_dtype)

    def __init__(self, student: nn.Module, teacher_dim: int, K: int = 65_536, tau_s: float = 0.2,
                 tau_t: float = 0.01, generator: torch.Generator | None = None,
                 queue_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.tau_s, self.tau_t = tau_s, tau_t
        self.student = student
        self.head = nn.Linear(student.embed_dim, teacher_dim)
        self.bank = AnchorBank(K, {"teacher": teacher_dim}, generator, {"teacher": queue_dtype})
        self._pending = None

    def forward(self, views, t: torch.Tensor, y=None, idx=None) -> tuple[torch.Tensor, dict]:
        s = self.head(self.student(views[0]))  # B x Dt
        self._pending = t
        return seed_loss(s.float(), t, self.bank.read("teacher"), self.tau_s, self.tau_t), {}

    @torch.no_grad()
    def after_step(self) -> None:
        self.bank.enqueue(teacher=self._pending)
        self._pending = None
