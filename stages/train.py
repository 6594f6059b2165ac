"""Stage `train`: one trainer for every method; the method, the student and the teacher source are settings.

Reads top to bottom: config -> run folder and resume -> data -> networks -> optimiser and schedule -> loop ->
final model. The teacher is never run here (the default): its embeddings are rows of the Zarr cache, loaded
into memory once and indexed by the dataset indices every batch carries.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from pipeline.augment import render, sample_crops
from pipeline.checkpoint import restore_checkpoint, save_checkpoint
from pipeline.device import pick_device
from pipeline.errors import CompressError
from pipeline.imagestore import ImageStore
from pipeline.loader import BatchLoader
from pipeline.methods import build_method, method_needs_teacher
from pipeline.modelfile import default_preprocessing, save_model
from pipeline.models import build_backbone
from pipeline.provenance import provenance
from pipeline.run_log import RunLog
from pipeline.schedules import lr_schedule


@dataclass
class TrainConfig:
    data: Path
    out: Path
    cache: Path | None = None  # teacher cache (Zarr); required by methods that need a teacher
    student: str = "resnet18"
    small_input: bool = True  # 3x3 stride-1 stem without max-pool, for 8-64 px images
    method: str = "compress-2q"
    # optimisation (paper: SGD lr 0.01, momentum 0.9, wd 1e-4, batch 256, 130 epochs, x0.2 at 90 and 120)
    epochs: int = 130
    batch_size: int = 256  # per process
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  # step | cosine
    milestones: tuple[int, ...] = (90, 120)
    lr_gamma: float = 0.2
    warmup_epochs: float = 0.0
    # method hyper-parameters (paper: K 128,000, tau 0.04, m 0.999)
    bank_size: int = 128_000
    tau: float = 0.04
    ema: float = 0.999
    moco_dim: int = 128
    # augmentation: RandomResizedCrop + horizontal flip only, drawn per sample
    input_size: int = 224
    crop_scale_min: float = 0.2
    hflip: bool = True
    # execution
    seed: int = 0
    device: str = "auto"
    amp: str = "none"  # none | bf16 | fp16 (fp16 uses a GradScaler; GPU only)
    channels_last: bool = False
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at the end of every epoch
    tensorboard: bool = True
    extra: dict = field(default_factory=dict)

    # keys that may change between a run and its resumption without changing what is computed
    RESUMABLE_CHANGES = ("device", "checkpoint_every", "tensorboard")


def _step_generator(seed: int, step: int) -> torch.Generator:
    """Augmentation randomness is a function of (seed, step): nothing to save, identical after resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _check_or_write_config(cfg: TrainConfig, out: Path) -> None:
    path = out / "config.json"
    current = json.loads(json.dumps(asdict(cfg), default=str))
    if path.exists():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in current if k not in TrainConfig.RESUMABLE_CHANGES
                         and saved.get(k) != current[k])
        if changed:
            diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed[:4])
            raise CompressError(f"{out} holds a run with other settings ({diffs}); resume with the same "
                                f"settings or choose a new --out folder")
    else:
        path.write_text(json.dumps(current, indent=2) + "\n")


def _load_teacher_rows(cfg: TrainConfig, store: ImageStore, device: torch.device):
    """(embeddings (N, D) or (N, V, D) on the device, stored crops (N, V, 5) or None, cache attributes)."""
    if cfg.cache is None:
        raise CompressError(f"method {cfg.method!r} needs a teacher: pass --cache STORE.zarr "
                            f"(made by `compress-cache extract`)")
    from cache.load import load_crops, load_embeddings
    rows, attrs = load_embeddings(cfg.cache, expect_fingerprint=store.fingerprint, device=device)
    crops = load_crops(cfg.cache) if rows.ndim == 3 else None
    return rows, crops, attrs


def train(cfg: TrainConfig) -> dict:
    # ------------------------------------------------------------------ run folder, device, provenance
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    store = ImageStore(cfg.data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_or_write_config(cfg, out)
    log = RunLog(out, tensorboard=cfg.tensorboard)
    log.event("start", provenance(asdict(cfg)))

    # ------------------------------------------------------------------ data
    labels = torch.from_numpy(store.labels).to(device)
    loader = BatchLoader(store, store.indices("train"), cfg.batch_size, seed=cfg.seed)
    if len(loader) == 0:
        raise CompressError(f"--batch-size {cfg.batch_size} is larger than the {len(store.indices('train'))} "
                            f"training images; use a smaller batch")
    image_hw = tuple(store.manifest["shape"][:2])
    preprocessing = default_preprocessing(cfg.input_size)

    # ------------------------------------------------------------------ networks
    student = build_backbone(cfg.student, cfg.small_input, seed=cfg.seed)
    teacher_rows = teacher_crops = teacher_attrs = None
    needs_teacher = method_needs_teacher(cfg.method)
    if needs_teacher:
        teacher_rows, teacher_crops, teacher_attrs = _load_teacher_rows(cfg, store, device)
    method = build_method(cfg.method, student, teacher_dim=teacher_rows.shape[-1] if needs_teacher else None,
                          num_classes=store.num_classes, hp=asdict(cfg),
                          generator=torch.Generator().manual_seed(cfg.seed))
    method.to(device)
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ optimiser and schedule
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    lrs = lr_schedule(cfg.lr, cfg.epochs, len(loader), cfg.schedule, cfg.milestones, cfg.lr_gamma,
                      cfg.warmup_epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]

    # ------------------------------------------------------------------ resume
    step = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = restore_checkpoint(ckpt, map_location=device, method=method, optimizer=optimizer, scaler=scaler)
        step = state["step"]
        log.event("resume", {"step": step, "restored": state["restored"]})

    # ------------------------------------------------------------------ loop
    total = cfg.epochs * len(loader)
    while step < total:
        epoch, first = divmod(step, len(loader))
        method.train()
        t0, seen, losses = time.perf_counter(), 0, []
        for idx, images in log.progress(loader.epoch(epoch, first), epoch, len(loader), first):
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
            gen = _step_generator(cfg.seed, step)
            idx_dev = idx.to(device)
            images = images.to(device, non_blocking=True)
            t = None
            if teacher_rows is not None and teacher_rows.ndim == 3:  # multi-view cache: train on a stored view
                v = torch.randint(teacher_rows.shape[1], (len(idx),), generator=gen)
                t = teacher_rows[idx_dev, v.to(device)].float()
                crops = [teacher_crops[idx, v]]
            else:
                if teacher_rows is not None:
                    t = teacher_rows[idx_dev].float()
                crops = [sample_crops(len(idx), gen, image_hw, (cfg.crop_scale_min, 1.0), flip=cfg.hflip)
                         for _ in range(method.views)]
            views = [render(images, c, cfg.input_size, preprocessing["mean"], preprocessing["std"])
                     for c in crops]
            if cfg.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss, extra = method(views, t, labels[idx_dev])
            if not torch.isfinite(loss):
                raise CompressError(f"non-finite loss {loss.item()} at step {step} (epoch {epoch}); the last "
                                    f"good checkpoint {ckpt} is intact - lower --lr or use --amp none")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            method.after_step()
            step += 1
            seen += len(idx)
            losses.append(loss.item())
            log.batch(step, loss.item(), float(lrs[step - 1]), extra)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint(ckpt, step=step, epoch=epoch, method=method, optimizer=optimizer, scaler=scaler)
        elapsed = time.perf_counter() - t0
        log.epoch({"epoch": epoch, "step": step, "loss": float(np.mean(losses)) if losses else None,
                   "lr": float(lrs[step - 1]), "img_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed})
        if not cfg.checkpoint_every:
            save_checkpoint(ckpt, step=step, epoch=epoch, method=method, optimizer=optimizer, scaler=scaler)

    # ------------------------------------------------------------------ the deliverable: the student alone
    meta = {"method": cfg.method, "data_fingerprint": store.fingerprint, "provenance": provenance(asdict(cfg))}
    if teacher_attrs is not None:
        meta["teacher"] = teacher_attrs.get("teacher")
    save_model(out / "model.pt", method.student, preprocessing, **meta)
    log.close()
    return {"out": str(out), "steps": step}


def config_from_dict(d: dict) -> TrainConfig:
    """Build a config from CLI/params keys, ignoring None (= keep the default)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CompressError(f"unknown training settings {unknown}")
    return TrainConfig(**{k: v for k, v in d.items() if v is not None})
