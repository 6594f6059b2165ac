"""MoCo v2 (He et al. 2020; Chen et al. 2020): self-supervised training from scratch, no teacher.

Used twice in this project: to pretrain the demo's teacher (no weights can be downloaded here) and as the
"MoCo from scratch" baseline a distilled student must beat.

dim  width of the MLP projection head (128); training only, dropped at export
K    queue length (65,536 on ImageNet)
tau  InfoNCE temperature (0.2 for v2)
m    momentum of the key encoder (0.999)
exclude_own_keys  drop the negatives that are the query's own image: its key from an earlier epoch still in the
     queue. Off by default, as in MoCo: on ImageNet a queue holds 5 % of the images; on a small dataset it can
     hold most of them, and the query is then pushed away from itself.
queue_dtype  storage of the key queue: the autocast dtype when training under autocast (see AnchorBank); the
     image ids beside it stay float32, where they are exact
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.methods.losses import infonce
from pipeline.methods.bank import AnchorBank, batch_statistics_mode, momentum_copy, momentum_update
from pipeline.methods.base import BuildContext, Method, register

_BN_SPLITS = 4  # keys are encoded in shuffled sub-batches: a single-process stand-in for shuffle-BN


@register
class MoCo(Method):
    names = ("moco",)
    needs_teacher, views = False, 2

    @classmethod
    def build(cls, name: str, ctx: BuildContext) -> "MoCo":
        hp = ctx.hp
        return cls(ctx.student, dim=hp["moco_dim"], K=hp["bank_size"], tau=hp["tau"], m=hp["ema"],
                   generator=ctx.generator, exclude_own_keys=hp["exclude_own_keys"], queue_dtype=ctx.queue_dtype)

    def __init__(self, student: nn.Module, dim: int = 128, K: int = 65_536, tau: float = 0.2, m: float = 0.999,
                 generator: torch.Generator | None = None, exclude_own_keys: bool = False,
                 queue_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.tau, self.m, self.exclude_own_keys = tau, m, exclude_own_keys
        self.student = student
        d = student.embed_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, dim))
        self.momentum_student = momentum_copy(student)
        self.momentum_head = momentum_copy(self.head)
        self.bank = AnchorBank(K, {"keys": dim, **({"ids": 1} if exclude_own_keys else {})}, generator,
                               {"keys": queue_dtype})
        if exclude_own_keys:
            self.bank.queue_ids.fill_(-1)  # the initial noise rows belong to no image
        self._pending: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _encode_keys(self, x: torch.Tensor) -> torch.Tensor:
        # BN statistics of one whole batch would let queries find their keys through the batch mean (the
        # "cheating" MoCo's shuffle-BN prevents); shuffled sub-batches give each key different statistics.
        perm = torch.randperm(len(x), device=x.device)
        batch_statistics_mode(self.momentum_student)
        batch_statistics_mode(self.momentum_head)
        chunks = [self.momentum_head(self.momentum_student(c)) for c in x[perm].chunk(_BN_SPLITS)]
        k = torch.empty_like(torch.cat(chunks))
        k[perm] = torch.cat(chunks)
        return nn.functional.normalize(k.float(), dim=1)

    def forward(self, views: list[torch.Tensor], t=None, y=None, idx=None) -> tuple[torch.Tensor, dict]:
        q = self.head(self.student(views[0]))  # B x dim
        k = self._encode_keys(views[1])  # B x dim, no gradient
        exclude = None
        self._pending = {"keys": k}
        if self.exclude_own_keys:
            ids = idx.to(torch.float32).unsqueeze(1)  # image ids are exact in float32 below 2**24
            exclude = ids == self.bank.read("ids").t()  # B x K
            self._pending["ids"] = ids
        loss = infonce(q, k, self.bank.read("keys"), self.tau, exclude)
        return loss, {}

    @torch.no_grad()
    def after_step(self) -> None:
        self.bank.enqueue(**self._pending)
        momentum_update(self.student, self.momentum_student, self.m)
        momentum_update(self.head, self.momentum_head, self.m)
