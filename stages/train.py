"""Stage `train`: one trainer for every method; the method, the student and the teacher source are settings.

Reads top to bottom: `train` -> `_set_up` (checks, run folder, data, networks, optimiser and schedule, resume)
-> `_train_epoch` until the budget is spent, each batch one `Step` -> `_finish` (the student alone, model.pt).
By default the teacher is never run here: its embeddings are rows of the Zarr cache, loaded into memory once
and indexed by the dataset indices every batch carries. `teacher_source="live"` runs a frozen teacher on the
student's own crop every step instead (the paper's setting, and the benchmark's comparison). The settings are
stages/train_config.py; the run folder's rules (what resumes, what is refused, one writer) stages/run_folder.py.

Under torchrun every process trains on its slice of each global batch (DDP, gloo on CPU, NCCL on GPU); only
rank 0 writes logs, checkpoints and the model. Everything random is a function of (seed, step) or restored
from the checkpoint, so a killed run continues to the same weights.
"""
from __future__ import annotations

import inspect
import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline.data.augment import RECIPES, render, sample_views
from pipeline.data.imagestore import ImageStore
from pipeline.data.loader import BatchLoader, memory_budget
from pipeline.data.nodecopy import node_of
from pipeline.methods import DataInfo, Method, build_method, method_needs_teacher
from pipeline.models.backbones import build_backbone, check_input_size
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.runtime import distributed, memory
from pipeline.runtime.checkpoint import restore_checkpoint, save_checkpoint
from pipeline.runtime.device import AMP_DTYPES, pick_device
from pipeline.runtime.errors import CompressError
from pipeline.runtime.provenance import provenance, sha256_file
from pipeline.runtime.run_identity import describe, run_identity
from pipeline.runtime.run_log import RunLog
from pipeline.runtime.schedules import lr_schedule
from pipeline.runtime.seeding import counter_generator
from stages.run_folder import check_config, clear_run, lock_run, write_config
from stages.train_config import TrainConfig, check_settings

_READ_LOSSES_EVERY = 50  # steps between reads of the losses from a GPU (each read waits for the device)


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any rank: all processes stop together, none waits forever."""
    if not distributed.active():
        return flag
    x = torch.tensor([float(flag)], device=device)
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return bool(x.item())


class LiveTeacher:
    """A frozen teacher run on the student's crops every step: same crop, the teacher's own normalisation.
    Not part of the trained module: never optimised, never checkpointed, always in eval mode."""

    def __init__(self, cfg: TrainConfig, device: torch.device):
        from pipeline.models.teachers import load_teacher
        net, identity = load_teacher(cfg.teacher_weights, arch=cfg.teacher_arch)
        self._hold(net, identity, device, cfg.channels_last)

    @classmethod
    def of(cls, net: nn.Module, identity: dict, device: torch.device, channels_last: bool = False) -> "LiveTeacher":
        """A live teacher around a network already built (the train-step benchmark's)."""
        live = cls.__new__(cls)
        live._hold(net, identity, device, channels_last)
        return live

    def _hold(self, net: nn.Module, identity: dict, device: torch.device, channels_last: bool) -> None:
        self.net, self.identity = net.to(device).eval(), identity
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.mean, self.std = identity["preprocessing"]["mean"], identity["preprocessing"]["std"]
        self.dim = identity["embed_dim"]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()  # whatever a caller did to the modes, BN keeps its running statistics
        return torch.nn.functional.normalize(self.net(x).float(), dim=1)


def _load_teacher_rows(cfg: TrainConfig, store: ImageStore, device: torch.device, world: distributed.World):
    """(embeddings (N, D) or (N, V, D), stored crops (N, V, 5) or None, cache attributes).

    The rows go to the device when they fit --cache-memory. Above it, and on the CPU under torchrun, they stay
    in the read-only memory-mapped copy beside the cache (cache/load.py), built once per node by its first
    process and then shared by all of the node's processes through the page cache; Step gathers each batch's rows
    on the host."""
    if cfg.cache is None:
        raise CompressError(f"method {cfg.method!r} needs a teacher: pass --cache STORE.zarr "
                            f"(made by `compress-cache extract`)")
    from cache.load import embeddings_bytes, load_crops, load_embeddings, open_complete
    _, attrs = open_complete(cfg.cache, expect_fingerprint=store.fingerprint)
    mapped = ((device.type == "cpu" and world.world_size > 1)
              or embeddings_bytes(attrs) > memory.budget(cfg.cache_memory, "--cache-memory", device))
    if mapped:
        rows, attrs = distributed.node_leader_first(lambda leader: load_embeddings(
            cfg.cache, expect_fingerprint=store.fingerprint, mmap=True, build=leader))
    else:
        rows, attrs = load_embeddings(cfg.cache, expect_fingerprint=store.fingerprint, device=device)
    crops = load_crops(cfg.cache) if rows.ndim == 3 else None
    return rows, crops, attrs


@dataclass
class Step:
    """One optimiser step of the trainer, with everything it reads: `step(i, idx, images) -> (loss, logs)`.
    The train-step benchmark builds one around its own networks, so it times exactly this code."""
    cfg: TrainConfig
    device: torch.device
    method: Method
    model: nn.Module  # the method, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lrs: np.ndarray
    image_hw: tuple[int, int]
    labels: torch.Tensor  # (N,) on the device
    teacher_rows: torch.Tensor | None = None  # (N, Dt) or (N, V, Dt) on the device
    teacher_crops: torch.Tensor | None = None  # (N, V, 5): the stored views of a multi-view cache
    live: LiveTeacher | None = None
    rank: int = 0
    world_size: int = 1
    checkpoint_path: Path | None = None  # named in the error when the loss is not finite
    regions: torch.Tensor | None = None  # (N, 4) valid regions (y0, x0, h, w) of a letterboxed store; None: whole
    preprocessing: dict = field(init=False)

    def __post_init__(self):
        self.preprocessing = default_preprocessing(self.cfg.input_size)
        self.recipe = RECIPES[self.cfg.augment]
        self.amp_dtype = AMP_DTYPES[self.cfg.amp]
        self.mine = slice(self.rank * self.cfg.batch_size, (self.rank + 1) * self.cfg.batch_size)

    def _views(self, gen: torch.Generator, idx: torch.Tensor, idx_dev: torch.Tensor):
        """(teacher rows or None, [(crops, colours or None)] per student view). Random draws are made for the
        whole global batch and sliced, so N processes see the same crops as one with the same global batch."""
        cfg, rows = self.cfg, self.teacher_rows
        if rows is not None and rows.ndim == 3:  # multi-view cache: train on a stored view
            v = torch.randint(rows.shape[1], (cfg.batch_size * self.world_size,), generator=gen)[self.mine]
            return self._rows(idx, idx_dev, v), [(self.teacher_crops[idx, v], None)]
        drawn = [sample_views(self.recipe, cfg.batch_size * self.world_size, gen, self.image_hw,
                              cfg.crop_scale_min, cfg.hflip, regions=self._regions(idx), share=self.mine)
                 for _ in range(self.method.views)]
        return (self._rows(idx, idx_dev) if rows is not None else None), drawn

    def _rows(self, idx: torch.Tensor, idx_dev: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's teacher rows (of views `v`) on the device, as float. Rows kept on the host (a memory-mapped
        cache above --cache-memory) are gathered there with the host indices, and only the batch is copied."""
        rows = self.teacher_rows
        i = idx if rows.device.type == "cpu" else idx_dev
        t = rows[i] if v is None else rows[i, v.to(i.device)]
        return t.to(self.device, non_blocking=True).float()

    def _regions(self, idx: torch.Tensor) -> torch.Tensor | None:
        """The batch's valid regions (crops are drawn and rendered inside them), None for whole images."""
        return None if self.regions is None else self.regions[idx]

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def __call__(self, i: int, idx: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cfg, pre = self.cfg, self.preprocessing
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.lrs[i])
        idx_dev = idx.to(self.device, non_blocking=True)  # pinned by the loader on CUDA: no wait for the device
        images = images.to(self.device, non_blocking=True)
        t, drawn = self._views(counter_generator(cfg.seed, i), idx, idx_dev)  # augmentations: f(seed, step)
        regions = self._regions(idx)
        views = [self._channels(render(images, c, cfg.input_size, pre["mean"], pre["std"], color=k,
                                       regions=regions)) for c, k in drawn]
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            if self.live is not None:  # the same crop, with the teacher's own normalisation
                t = self.live(self._channels(render(images, drawn[0][0], cfg.input_size, self.live.mean,
                                                    self.live.std, color=drawn[0][1], regions=regions)))
            y = self.labels[idx_dev] if self.method.needs_labels else None
            loss, logs = self.model(views, t, y, idx_dev)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step()
        return loss.detach(), logs

    def check_losses(self, steps: list[int], losses: list[float]) -> None:
        """Stop every rank when a loss of `steps` (0-based) is not finite. The trainer reads losses from the device
        in groups (a read waits for the device), and always before a checkpoint: the steps after a bad one may have
        run, but nothing is written after it - the last good checkpoint stays, and no model.pt."""
        bad = next((k for k, v in enumerate(losses) if not np.isfinite(v)), None)
        if _any_rank(bad is not None, self.device):
            kept = (f"the last good checkpoint {self.checkpoint_path} is intact"
                    if self.checkpoint_path is not None and self.checkpoint_path.exists() else "no checkpoint was written")
            what = f"{losses[bad]} at step {steps[bad]}" if bad is not None else f"on another rank by step {steps[-1]}"
            raise CompressError(f"non-finite loss {what}; {kept}, no model.pt - lower --lr or use --amp none")


@dataclass
class Run:
    """A training run once set up: what the epochs and the finish read, and the step counter."""
    cfg: TrainConfig
    world: distributed.World
    out: Path
    store: ImageStore
    identity: dict
    log: RunLog
    loader: BatchLoader
    step_fn: Step
    teacher: dict | None  # the teacher's description for model.pt (the cache's, or the live one's identity)
    step: int = 0

    @property
    def total(self) -> int:
        return len(self.step_fn.lrs)


def train(cfg: TrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    world = distributed.init(device)  # a no-op without torchrun
    lock = None
    try:
        lock = lock_run(cfg, world)
        run = _set_up(cfg, device, world)
        while run.step < run.total:
            _train_epoch(run)
        return _finish(run)
    finally:
        if lock is not None:
            lock.release()
        if world.world_size > 1:
            distributed.cleanup()


def _set_up(cfg: TrainConfig, device: torch.device, world: distributed.World) -> Run:
    # ------------------------------------------------------------------ checks, identity, run folder
    check_settings(cfg, device)
    with distributed.stop_together():  # a process that cannot read its inputs stops every process
        store = ImageStore(cfg.data)
        teacher_needed = method_needs_teacher(cfg.method)
        identity = run_identity(store.fingerprint, cfg.cache if teacher_needed and cfg.teacher_source == "cached"
                                else None, cfg.teacher_weights if teacher_needed and cfg.teacher_source == "live"
                                else None)
    # every node trains on what rank 0 does (node-local paths may hold other files), checked before any write
    distributed.require_same({"data fingerprint": identity["data"],
                              "teacher": describe(identity).partition(", ")[2] or "none"},
                             "give every node identical copies of --data and of the teacher (--cache or "
                             "--teacher-weights)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    problem, start_over = distributed.broadcast_object(check_config(cfg, out, identity) if world.is_main else None)
    if problem:
        raise CompressError(problem)

    # ------------------------------------------------------------------ data
    train_indices = store.indices("train")
    loader = BatchLoader(store, train_indices, cfg.batch_size, seed=cfg.seed, rank=world.rank,
                         world_size=world.world_size, memory_limit=memory_budget(cfg.loader_memory),
                         pin_memory=device.type == "cuda", node=node_of(world), uncached=cfg.loader_io == "direct")
    if len(loader) == 0:
        raise CompressError(f"--batch-size {cfg.batch_size} x {world.world_size} processes is larger than the "
                            f"{len(train_indices)} training images; use a smaller batch")

    # ------------------------------------------------------------------ networks
    student = build_backbone(cfg.student, cfg.small_input, seed=cfg.seed)
    check_input_size(student, cfg.input_size, f"student {cfg.student}")
    student.bn_groups = cfg.bn_groups  # set before the method copies it (momentum student)
    rows = crops = live = teacher = None
    if teacher_needed and cfg.teacher_source == "live":
        live = LiveTeacher(cfg, device)
        teacher = live.identity
    elif teacher_needed:
        rows, crops, attrs = _load_teacher_rows(cfg, store, device, world)
        teacher = attrs.get("teacher")
    ckpt = out / "checkpoint.pt"
    # rank 0 decides whether the run resumes, for every rank; a run started over ignores the folder's checkpoint
    resume = None if start_over else _rank0_checkpoint(ckpt, world)
    data = DataInfo(num_items=len(store.labels), train_indices=train_indices, num_classes=store.num_classes,
                    teacher_rows=rows)
    method = build_method(cfg.method, student, teacher_dim=live.dim if live else (rows.shape[-1] if rows is not None
                                                                                  else None),
                          data=data, hp=asdict(cfg), generator=torch.Generator().manual_seed(cfg.seed),
                          resuming=resume is not None)
    method.to(device)
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ optimiser and schedule
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # with --steps the schedule spans the budget as one "epoch"; milestones and warm-up stay in real epochs
    epochs, per_epoch = (1, cfg.steps) if cfg.steps else (cfg.epochs, len(loader))
    scale = len(loader) / per_epoch
    lrs = lr_schedule(cfg.lr, epochs, per_epoch, cfg.schedule, tuple(m * scale for m in cfg.milestones),
                      cfg.lr_gamma, cfg.warmup_epochs * scale)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    # ------------------------------------------------------------------ resume, then DDP around restored weights
    state = None if resume is None else restore_checkpoint(resume, expect_identity=identity, method=method,
                                                           optimizer=optimizer, scaler=scaler)
    step = 0 if state is None else state["step"]

    # ------------------------------------------------------------------ every input has been read and checked:
    # only now does the run write to its folder (a refused run leaves no log, no TensorBoard file, no config,
    # and a run it was to replace untouched)
    if start_over and world.is_main:
        clear_run(out)
    log = RunLog(out, tensorboard=cfg.tensorboard, rank=world.rank)
    log.event("start", {**provenance(asdict(cfg)), "augmentation": cfg.augmentation(),
                        "world_size": world.world_size})
    log.event("loader", loader.describe())
    if state is not None:
        log.event("resume", {"step": step, "restored": state["restored"]})
    if world.is_main:  # the folder is pinned to this run
        write_config(cfg, out, identity)
    step_fn = Step(cfg, device, method, _distributed(method, device, world), optimizer, scaler, lrs,
                   tuple(store.manifest["shape"][:2]), torch.from_numpy(store.labels).to(device), rows, crops,
                   live, world.rank, world.world_size, ckpt,
                   regions=None if store.regions() is None else torch.from_numpy(store.regions()))
    return Run(cfg, world, out, store, identity, log, loader, step_fn, teacher, step)


def _rank0_checkpoint(ckpt: Path, world: distributed.World) -> Path | io.BytesIO | None:
    """What every rank resumes from: rank 0's checkpoint, or None when rank 0 has none (a start, even where a
    node-local --out holds an old file). A rank whose --out lacks rank 0's file, or holds another, receives its
    bytes, so every rank restores the same state before DDP wraps the model."""
    if world.world_size == 1:
        return ckpt if ckpt.exists() else None
    digest = sha256_file(ckpt) if ckpt.exists() else None
    every = distributed.all_gather_object(digest)
    if every[0] is None:
        return None
    if all(d == every[0] for d in every):
        return ckpt
    payload = distributed.broadcast_object(ckpt.read_bytes() if world.is_main else None)
    return ckpt if digest == every[0] else io.BytesIO(payload)


def _distributed(method: Method, device: torch.device, world: distributed.World) -> nn.Module:
    """The method itself, or under torchrun its DDP wrapper. Momentum copies have requires_grad=False, so DDP
    leaves them alone. Buffers (queues, memories, cluster ids, BN statistics) are copied from rank 0 once at start
    and then not broadcast every step: the queues stay equal because every rank writes the same all-gathered rows."""
    if world.world_size == 1:
        return method
    ddp = torch.nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})  # the older name, same meaning
    return ddp(method, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def _train_epoch(run: Run) -> None:
    """The rest of the current epoch (a resumed run starts inside one), then its log line, checkpoint, snapshot.

    Losses stay on the device and are read every `_READ_LOSSES_EVERY` steps on a GPU (every step on the CPU,
    where nothing runs ahead), before each checkpoint and at the end: one wait for the device per read, not one
    per step. Every step's loss is still logged, with its own step number."""
    cfg, step_fn, loader = run.cfg, run.step_fn, run.loader
    epoch, first = divmod(run.step, len(loader))
    step_fn.method.train()
    every = 1 if step_fn.device.type == "cpu" else _READ_LOSSES_EVERY
    t0, seen, losses, pending = time.perf_counter(), 0, [], []

    def read_losses() -> None:  # at the same steps on every rank: check_losses is a collective
        if not pending:
            return
        values = torch.stack([loss for _, loss, _ in pending]).float().tolist()
        step_fn.check_losses([s - 1 for s, _, _ in pending], values)
        for (s, _, logs), v in zip(pending, values):
            losses.append(v)
            run.log.batch(s, v, float(step_fn.lrs[s - 1]), logs)
        pending.clear()

    batches = loader.epoch(epoch, first)
    try:
        for idx, images in run.log.progress(batches, epoch, len(loader), first):
            loss, logs = step_fn(run.step, idx, images)
            run.step += 1
            seen += len(idx) * run.world.world_size
            pending.append((run.step, loss, logs))
            checkpoint_due = cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0
            if checkpoint_due or len(pending) >= every:
                read_losses()
            if checkpoint_due:
                _checkpoint(run, epoch)
            if run.step == run.total:  # a --steps budget can end inside an epoch
                break
        read_losses()
    finally:
        batches.close()  # stops the loader's read-ahead thread, also when a step raised
    elapsed = time.perf_counter() - t0
    run.log.epoch({"epoch": epoch, "step": run.step, "loss": float(np.mean(losses)) if losses else None,
                   "lr": float(step_fn.lrs[run.step - 1]), "img_per_s": seen / max(elapsed, 1e-9),
                   "seconds": elapsed})
    if not cfg.checkpoint_every:
        _checkpoint(run, epoch)
    if cfg.snapshot_every and (epoch + 1) % cfg.snapshot_every == 0 and run.world.is_main:
        # a learning curve's point; written after the checkpoint, so a kill in between loses only this file
        save_model(run.out / "snapshots" / f"model_epoch{epoch + 1:03d}.pt", step_fn.method.student,
                   step_fn.preprocessing, method=cfg.method, data_fingerprint=run.store.fingerprint,
                   identity=run.identity, epoch=epoch + 1)


def _checkpoint(run: Run, epoch: int) -> None:
    """Rank 0 writes; only finite checkpoints are written (else CompressError); every rank stops when it cannot."""
    _on_main(run, lambda: save_checkpoint(run.step_fn.checkpoint_path, step=run.step, epoch=epoch,
                                          identity=run.identity, method=run.step_fn.method,
                                          optimizer=run.step_fn.optimizer, scaler=run.step_fn.scaler))


def _on_main(run: Run, write) -> None:
    """Run `write` on rank 0; a CompressError there stops every rank with its message."""
    problem = None
    if run.world.is_main:
        try:
            write()
        except CompressError as e:
            problem = str(e)
    problem = distributed.broadcast_object(problem)
    if problem:
        raise CompressError(problem)


def _finish(run: Run) -> dict:
    """The deliverable: the student alone, refused (nothing written) when a weight is not finite."""
    cfg = run.cfg
    meta = {"method": cfg.method, "data_fingerprint": run.store.fingerprint, "identity": run.identity,
            "provenance": provenance(asdict(cfg))}
    if run.teacher is not None:
        meta["teacher"] = run.teacher
    _on_main(run, lambda: save_model(run.out / "model.pt", run.step_fn.method.student, run.step_fn.preprocessing,
                                     **meta))
    run.log.close()
    distributed.barrier()  # no process leaves (and tears the group down) before model.pt is written
    return {"out": str(run.out), "steps": run.step, "rank": run.world.rank}
