"""Reg and Reg-BN, the paper's simplest baselines: regress the student's embedding, through a linear layer, onto
the teacher's embedding (MSE between the two after l2-normalisation).

    reg      Linear(Ds -> Dt) with bias
    reg-bn   the same followed by BatchNorm1d(Dt) on the student side, before the loss (CompRess's Reg-BN)

No hyper-parameters besides the optimiser's. The head is training only; the exported student is the backbone.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.methods.losses import regression_loss
from pipeline.methods.base import BuildContext, Method, register


@register
class Regression(Method):
    names = ("reg", "reg-bn")

    @classmethod
    def build(cls, name: str, ctx: BuildContext) -> "Regression":
        return cls(ctx.student, ctx.teacher_dim, bn=name == "reg-bn")

    def __init__(self, student: nn.Module, teacher_dim: int, bn: bool = False):
        super().__init__()
        self.student = student
        layers = [nn.Linear(student.embed_dim, teacher_dim)]
        if bn:
            layers.append(nn.BatchNorm1d(teacher_dim))
        self.head = nn.Sequential(*layers)

    def forward(self, views, t: torch.Tensor, y=None, idx=None) -> tuple[torch.Tensor, dict]:
        return regression_loss(self.head(self.student(views[0])).float(), t), {}

