"""Supervised training of the student with labels: the reference ceiling of the paper's tables.
The linear classifier is training only; the exported student is the backbone."""
from __future__ import annotations

import torch
from torch import nn

from pipeline.methods.base import BuildContext, Method, register


@register
class Supervised(Method):
    names = ("supervised",)
    needs_teacher, needs_labels = False, True

    @classmethod
    def build(cls, name: str, ctx: BuildContext) -> "Supervised":
        return cls(ctx.student, ctx.data.num_classes)

    def __init__(self, student: nn.Module, num_classes: int):
        super().__init__()
        self.student = student
        self.classifier = nn.Linear(student.embed_dim, num_classes)

    def forward(self, views, t=None, y=None, idx=None) -> tuple[torch.Tensor, dict]:
        logits = self.classifier(self.student(views[0]))
        loss = nn.functional.cross_entropy(logits.float(), y)
        return loss, {"acc": (logits.argmax(1) == y).float().mean().item()}

