"""CRD (Tian, Krishnan & Isola, ICLR 2020): contrastive representation distillation, compact version.

Both sides get a training-only linear embedding into `dim` dimensions (l2-normalised). Two memories hold, for
every training image (indexed by its dataset index), a momentum average of its student and teacher embeddings.
Each step draws K images from the training set; the student embedding must pick its own image's teacher
memory against those K teacher memories, and vice versa (pipeline/methods/losses.py crd_loss). As in CRD, a
memory row is written only when its image is visited, so in the first epoch an image's positive is still the
random initial row.

dim   embedding width (128)
K     negatives per step (CRD: 16,384; clip to the data for small sets)
tau   temperature (0.07)
m     memory momentum: memory <- normalise(m * memory + (1 - m) * new) (CRD: 0.5)

Simplifications, stated: InfoNCE over 1 + K instead of NCE with an estimated normaliser; one set of K negatives
shared by the whole batch (not K per sample), a negative that is the query's own image is masked out. Negatives
are drawn from a generator seeded by (seed, number of draws so far), a buffer: a resumed run draws the same ones.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.runtime import distributed
from pipeline.methods.losses import crd_loss
from pipeline.methods.base import BuildContext, Method, register
from pipeline.runtime.seeding import counter_generator


@register
class CRD(Method):
    names = ("crd",)

    @classmethod
    def build(cls, name: str, ctx: BuildContext) -> "CRD":
        hp = ctx.hp
        return cls(ctx.student, ctx.teacher_dim, ctx.data.num_items, torch.from_numpy(ctx.data.train_indices),
                   dim=hp["crd_dim"], K=hp["crd_negatives"], tau=hp["crd_tau"], m=hp["crd_memory_momentum"],
                   seed=hp["seed"], generator=ctx.generator)

    def __init__(self, student: nn.Module, teacher_dim: int, num_items: int, train_indices: torch.Tensor,
                 dim: int = 128, K: int = 16_384, tau: float = 0.07, m: float = 0.5, seed: int = 0,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.K, self.tau, self.m, self.seed = K, tau, m, seed
        self.student = student
        self.embed_s = nn.Linear(student.embed_dim, dim)
        self.embed_t = nn.Linear(teacher_dim, dim)
        init = nn.functional.normalize(torch.randn(2, num_items, dim, generator=generator), dim=2)
        self.register_buffer("memory_s", init[0].clone())
        self.register_buffer("memory_t", init[1].clone())
        self.register_buffer("train_indices", torch.as_tensor(train_indices, dtype=torch.long))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        self._pending = None

    def _negatives(self) -> torch.Tensor:
        g = counter_generator(self.seed, int(self.draws))
        pick = torch.randint(len(self.train_indices), (self.K,), generator=g)
        return self.train_indices[pick.to(self.train_indices.device)]

    def forward(self, views, t: torch.Tensor, y=None, idx=None) -> tuple[torch.Tensor, dict]:
        zs = nn.functional.normalize(self.embed_s(self.student(views[0])).float(), dim=1)  # B x dim
        zt = nn.functional.normalize(self.embed_t(t.float()).float(), dim=1)  # B x dim
        neg = self._negatives()  # K dataset indices
        exclude = idx.view(-1, 1) == neg.view(1, -1)  # B x K: the query's own image is no negative
        loss = crd_loss(zs, zt, self.memory_s[idx], self.memory_t[idx], self.memory_s[neg], self.memory_t[neg],
                        self.tau, exclude)
        self._pending = (idx, zs.detach(), zt.detach())
        return loss, {}

    @torch.no_grad()
    def after_step(self) -> None:
        """Momentum-update the memories of this (global) batch, then advance the negative draws."""
        idx, zs, zt = (distributed.all_gather(x) for x in self._pending)
        for memory, z in ((self.memory_s, zs), (self.memory_t, zt)):
            memory[idx] = nn.functional.normalize(self.m * memory[idx] + (1 - self.m) * z, dim=1)
        self.draws += 1
        self._pending = None
