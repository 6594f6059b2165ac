"""Stage `train`: one trainer for every method; the method, the student and the teacher source are settings.

Reads top to bottom: config -> processes, run folder -> data -> networks -> optimiser and schedule -> resume ->
loop -> final model. By default the teacher is never run here: its embeddings are rows of the Zarr cache, loaded
into memory once and indexed by the dataset indices every batch carries. `teacher_source="live"` runs a frozen
teacher on the student's own crop every step instead (the paper's setting, and the benchmark's comparison).

Under torchrun every process trains on its slice of each global batch (DDP, gloo on CPU, NCCL on GPU); only
rank 0 writes logs, checkpoints and the model. Everything random is a function of (seed, step) or restored
from the checkpoint, so a killed run continues to the same weights.
"""
from __future__ import annotations

import inspect
import json
import math
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cache.errors import CacheError
from cache.lock import StoreLock
from pipeline.runtime import distributed

from pipeline.runtime.atomic import io_error, make_dir, remove_temporaries, write_text
from pipeline.data.augment import RECIPES, render, sample_views
from pipeline.runtime.checkpoint import restore_checkpoint, save_checkpoint
from pipeline.runtime.code_digest import code_digest
from pipeline.runtime.device import pick_device
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import ImageStore
from pipeline.data.loader import BatchLoader
from pipeline.methods import METHODS, DataInfo, build_method, method_class, method_needs_teacher
from pipeline.models.modelfile import default_preprocessing, save_model
from pipeline.models.backbones import build_backbone, check_input_size
from pipeline.runtime.provenance import provenance
from pipeline.runtime.run_identity import describe, run_identity
from pipeline.runtime.run_log import RunLog
from pipeline.runtime.schedules import lr_schedule
from pipeline.runtime.settings import setting


@dataclass
class TrainConfig:
    """Every setting of `train`, with its default, help, range and the paper's value (pipeline/runtime/settings.py); the
    CLI's options are generated from these fields. The defaults are the paper's ImageNet recipe."""
    data: Path = setting(MISSING, "Image store (from `prepare`).")
    out: Path = setting(MISSING, "Run folder. Re-running the same command resumes from its checkpoint.")
    cache: Path | None = setting(None, "Teacher cache (from `extract`); needed by every distillation method "
                                       "unless --teacher-source live.", shown="none")
    student: str = setting("resnet18", "Student architecture: resnet18, resnet34, resnet50, mobilenet_v2, alexnet, "
                                       "the narrow resnet18_w16/w32, shufflenet_v2_x0_5 or any torchvision "
                                       "classification model name.")
    small_input: bool = setting(False, "3x3 stride-1 stem without max-pool, for 8-64 px images; the paper's "
                                       "network has the ImageNet stem.", flag="--small-input/--imagenet-stem")
    method: str = setting("compress-2q", "Training objective.", choices=tuple(METHODS))
    # optimisation
    epochs: int = setting(130, "Epochs over the training split.", low=1)
    steps: int | None = setting(None, "Budget in optimiser steps instead of --epochs (may end inside an epoch); "
                                      "the schedule spans it.", shown="none (use --epochs)", low=1)
    batch_size: int = setting(256, "Images per step, per process.", low=1)
    lr: float = setting(0.01, "SGD learning rate.", low=0, low_open=True)
    momentum: float = setting(0.9, "SGD momentum.", low=0, high=1, high_open=True)
    weight_decay: float = setting(1e-4, "SGD weight decay.", low=0)
    schedule: str = setting("step", "Learning-rate schedule, per iteration.", choices=("step", "cosine"))
    milestones: tuple[int, ...] = setting((90, 120), "Comma-separated epochs for the step schedule.")
    lr_gamma: float = setting(0.2, "Step-schedule factor.", low=0, high=1, low_open=True)
    warmup_epochs: float = setting(0.0, "Linear warm-up from 0, in epochs.", low=0)
    # method hyper-parameters
    bank_size: int = setting(128_000, "Anchors K in the queue(s) (MoCo: its queue).", low=1)
    tau: float = setting(0.04, "Temperature (MoCo v2 uses 0.2).", low=0, low_open=True)
    ema: float = setting(0.999, "Momentum of the EMA student / key encoder.", low=0, high=1)
    moco_dim: int = setting(128, "MoCo: width of the MLP projection head.", low=1)
    exclude_own_keys: bool = setting(False, "MoCo: drop negatives that are the query's own image, still queued "
                                            "from an earlier epoch (small data; MoCo keeps them).",
                                     flag="--exclude-own-keys/--keep-own-keys")
    # baselines (defaults: their papers'; see pipeline/methods/*.py)
    crd_dim: int = setting(128, "CRD: width of both linear embeddings.", low=1)
    crd_negatives: int = setting(16_384, "CRD: negatives drawn from memory per step.", low=1)
    crd_tau: float = setting(0.07, "CRD: temperature.", low=0, low_open=True)
    crd_memory_momentum: float = setting(0.5, "CRD: memory momentum.", low=0, high=1)
    seed_tau_student: float = setting(0.2, "SEED: student temperature.", low=0, low_open=True)
    seed_tau_teacher: float = setting(0.01, "SEED: teacher temperature.", low=0, low_open=True)
    clusters: int | None = setting(None, "CC: k-means clusters of the teacher features.", paper="16000",
                                   shown="10 x classes", low=2)
    # teacher: rows of the cache (default) or a frozen network run on every step's crops
    teacher_source: str = setting("cached", "cached: teacher embeddings are rows of --cache. live: run the frozen "
                                            "teacher of --teacher-weights on every step's crops (slower).",
                                  paper="live", choices=("cached", "live"))
    teacher_weights: Path | None = setting(None, "Teacher checkpoint for --teacher-source live (any format "
                                                 "`extract` reads).", shown="none")
    teacher_arch: str | None = setting(None, "Teacher architecture, when the weights do not tell it.",
                                       shown="from the weights")
    # augmentation, drawn per sample on the device (pipeline/data/augment.py RECIPES)
    augment: str | None = setting(None, "Augmentation recipe: crop-flip (RandomResizedCrop + flip, CompRess's) or "
                                        "mocov2 (+ colour jitter, grayscale, blur; MoCo v2's).",
                                  shown="mocov2 for --method moco, else crop-flip", choices=tuple(RECIPES))
    input_size: int = setting(224, "Side of the student's input crop in pixels.", low=8)
    crop_scale_min: float | None = setting(None, "RandomResizedCrop lower scale.", paper="0.08",
                                           shown="the recipe's: crop-flip 0.08, mocov2 0.2", low=0, high=1,
                                           low_open=True)
    hflip: bool = setting(True, "Random horizontal flips.")
    # execution
    seed: int = setting(0, "Seeds the student's initialisation, the data order and every augmentation.", low=0)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    amp: str = setting("none", "Mixed precision: bf16 autocast (CPU/GPU) or fp16 with a scaler (GPU).",
                       choices=("none", "bf16", "fp16"))
    channels_last: bool = setting(False, "channels_last memory format (helps MobileNetV2 on CPU).")
    bn_groups: int = setting(1, "BatchNorm statistics over N equal slices of the batch, as N DDP processes "
                                "compute them.", low=1)
    checkpoint_every: int = setting(0, "Steps between checkpoints; 0 = at the end of every epoch.", low=0)
    snapshot_every: int = setting(0, "Also keep the model after every Nth epoch as snapshots/model_epochNNN.pt (the "
                                     "points of a learning curve, e.g. a teacher's kNN); 0 = none.", low=0)
    tensorboard: bool = setting(True, "Also write TensorBoard logs.")
    restart: str = setting("never", "When --out holds a run: never (resume it if its settings and code are these, "
                                    "else refuse), if-changed (start it over when they differ; dvc.yaml's "
                                    "choice), always.", choices=("never", "if-changed", "always"))

    # keys that may change between a run and its resumption without changing what is computed
    RESUMABLE_CHANGES = ("device", "checkpoint_every", "snapshot_every", "tensorboard", "restart")

    def __post_init__(self):
        # Resolve the recipe here, so config.json records the values the run used, not "default".
        if self.augment is None:
            self.augment = "mocov2" if self.method == "moco" else "crop-flip"
        if self.augment not in RECIPES:
            raise CompressError(f"unknown --augment {self.augment!r}; use one of {', '.join(RECIPES)}")
        if self.crop_scale_min is None:
            self.crop_scale_min = RECIPES[self.augment].crop_scale_min

    def augmentation(self) -> dict:
        """The recipe and every parameter it draws with: recorded in config.json and the run log."""
        return RECIPES[self.augment].describe(self.crop_scale_min, self.hflip)


# Named starting points; options given explicitly override them. The config defaults ARE the paper's ImageNet
# settings (K 128,000, tau 0.04, m 0.999, SGD 0.01/0.9/1e-4, 130 epochs, x0.2 at 90 and 120, batch 256, 224 px,
# the ImageNet stem, RandomResizedCrop 0.08-1 + flip, no dropout).
PRESETS = {
    "paper-imagenet": {},
    # a starting point for a few thousand images at 16-32 px, minutes on 2 CPU cores (the demo and the
    # Fashion-MNIST study set every option explicitly instead)
    "small": {"epochs": 30, "batch_size": 64, "lr": 0.05, "schedule": "cosine", "bank_size": 4096,
              "input_size": 32, "small_input": True, "crd_negatives": 1024, "warmup_epochs": 1.0},
    # the unit tests and benchmarks: seconds
    "tiny": {"epochs": 1, "batch_size": 32, "bank_size": 64, "input_size": 8, "small_input": True,
             "crd_negatives": 64},
}


def _step_generator(seed: int, step: int) -> torch.Generator:
    """Augmentation randomness is a function of (seed, step): nothing to save, identical after resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _record(cfg: TrainConfig) -> dict:
    """The run's identity as config.json keeps it: every setting and the digest of the code that trains."""
    return {**json.loads(json.dumps(asdict(cfg), default=str)), "code": code_digest()}


def changed_settings(saved: dict, cfg: TrainConfig) -> list[str]:
    """Keys whose value in a run's saved config.json differs from `cfg` (or the code), ignoring the resumable ones.
    A key the saved file lacks (a run older than the option) counts as that option's default."""
    current = _record(cfg)
    defaults = {f.name: f.default for f in fields(TrainConfig) if isinstance(f.default, (int, float, str, bool))}
    return sorted(k for k in current if k not in TrainConfig.RESUMABLE_CHANGES and k not in PATH_SETTINGS
                  and saved.get(k, defaults.get(k)) != current[k])


# Paths are compared by what they hold (the run's identity, pipeline/runtime/run_identity.py), never by how they are
# spelled: the same data by another path resumes, another teacher at the same path is refused.
PATH_SETTINGS = ("data", "cache", "out", "teacher_weights")


def _read_config(out: Path) -> dict | None:
    """The run's saved config.json; None when there is none, or when it is unreadable and nothing was trained
    under it (no checkpoint): it is written again once the inputs are checked."""
    path = out / "config.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError) as e:
        if (out / "checkpoint.pt").exists():
            raise CompressError(f"{path} is unreadable ({type(e).__name__}) but {out} holds a checkpoint; restore "
                                f"the file, or start over with --restart always or a new --out folder") from None
        return None


def _check_or_write_config(cfg: TrainConfig, out: Path, identity: dict) -> str | None:
    """None when `out` is new or holds a run with these settings, code and identity; else the message to stop
    with. Writes nothing: config.json is written by `_write_config` once the inputs have been checked."""
    path = out / "config.json"
    current = {**_record(cfg), "identity": identity}
    saved = _read_config(out)
    if saved is not None:
        # identity: a config.json older than it counts as the same; its checkpoint then refuses (no identity)
        changed = changed_settings(saved, cfg) + (["identity"] if saved.get("identity", identity) != identity
                                                  else [])
        if cfg.restart == "always" or (changed and cfg.restart == "if-changed"):
            _clear_run(out)
        elif changed:
            diffs = ", ".join(f"{k}: {saved.get(k, '(default)')!r} -> {current[k]!r}" for k in changed[:4]
                              if k != "identity")
            if "identity" in changed:  # both named, by content: which data, which teacher
                diffs = "; ".join(filter(None, [diffs, f"trained on {describe(saved['identity'])}, this command "
                                                       f"gives {describe(identity)}"]))
            return (f"{out} holds a run with other settings, code or data ({diffs}); resume with the same "
                    f"settings and inputs, start it over with --restart if-changed, or choose a new --out folder")
    return None


def _write_config(cfg: TrainConfig, out: Path, identity: dict) -> None:
    """Pin the run's settings, code and identity, once its inputs have been checked (a refused start pins
    nothing); atomic, so a full disk leaves no empty config.json behind."""
    if _read_config(out) is None:
        write_text(out / "config.json", json.dumps({**_record(cfg), "identity": identity,
                                                    "augmentation": cfg.augmentation()}, indent=2) + "\n")


def _clear_run(out: Path) -> None:
    """Remove what a run writes in its folder (nothing else), so it starts over."""
    import shutil
    for name in ("config.json", "checkpoint.pt", "model.pt", "curves.csv", "log.jsonl"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "tb", ignore_errors=True)
    shutil.rmtree(out / "snapshots", ignore_errors=True)


def _check_values(cfg: TrainConfig) -> None:
    """The ranges of the settings (pipeline/runtime/settings.py) hold for a config built in code as well as on the command
    line (where they are usage errors): a non-finite or out-of-range number stops the run before it writes."""
    for f in fields(TrainConfig):
        v = getattr(cfg, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        low, high, low_open, high_open = f.metadata.get("range", (None, None, False, False))
        if (not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low))
                or (high is not None and (v >= high if high_open else v > high))):
            bounds = [f"{'>' if low_open else '>='} {low}" if low is not None else "",
                      f"{'<' if high_open else '<='} {high}" if high is not None else ""]
            raise CompressError(f"--{f.name.replace('_', '-')} {v!r} is out of range: use a finite number "
                                f"{' and '.join(b for b in bounds if b)}".rstrip())


def _check_settings(cfg: TrainConfig, device: torch.device) -> None:
    _check_values(cfg)
    if cfg.teacher_source not in ("cached", "live"):
        raise CompressError(f"unknown --teacher-source {cfg.teacher_source!r}; use cached or live")
    if cfg.bn_groups < 1 or cfg.batch_size % cfg.bn_groups:
        raise CompressError(f"--bn-groups {cfg.bn_groups} must be >= 1 and divide --batch-size {cfg.batch_size}")
    if cfg.amp == "fp16" and device.type != "cuda":
        raise CompressError(f"--amp fp16 needs a CUDA device (its gradient scaler), but the device is {device}; "
                            f"use --amp bf16 on the CPU")
    if cfg.teacher_source == "live" and method_needs_teacher(cfg.method):
        if cfg.teacher_weights is None:
            raise CompressError("--teacher-source live needs --teacher-weights PATH (a teacher checkpoint)")
        if method_class(cfg.method).needs_cache:
            raise CompressError(f"method {cfg.method!r} clusters the teacher's features of the whole training "
                                f"set up front; use --teacher-source cached with --cache STORE.zarr")


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
        self.net, self.identity = load_teacher(cfg.teacher_weights, arch=cfg.teacher_arch)
        self.net.to(device).eval()
        if cfg.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.mean, self.std = self.identity["preprocessing"]["mean"], self.identity["preprocessing"]["std"]
        self.dim = self.identity["embed_dim"]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()  # whatever a caller did to the modes, BN keeps its running statistics
        return torch.nn.functional.normalize(self.net(x).float(), dim=1)


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
    # ------------------------------------------------------------------ processes, run folder, provenance
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    world = distributed.init(device)  # a no-op without torchrun
    lock = None
    try:
        lock = _lock_run(cfg, world)
        return _train(cfg, device, world)
    finally:
        if lock is not None:
            lock.release()
        if world.world_size > 1:
            distributed.cleanup()


def _lock_run(cfg: TrainConfig, world: distributed.World) -> StoreLock | None:
    """One writer per run folder: rank 0 holds an flock on the sibling `OUT.lock` (dropped by the kernel when the
    process dies, even by SIGKILL) and removes temporaries a killed run left; every rank learns the outcome."""
    lock, problem = None, None
    if world.is_main:
        try:
            make_dir(cfg.out, "--out")
            lock = StoreLock(cfg.out).acquire()
            remove_temporaries(cfg.out)
        except (CompressError, CacheError) as e:
            problem = str(e)
        except OSError as e:  # a read-only place, no space for the lock file
            problem = str(io_error(f"{cfg.out} (its lock)", e, "lock"))
    problem = distributed.broadcast_object(problem)
    if problem is not None:
        if lock is not None:
            lock.release()
        raise CompressError(problem)
    return lock


def _train(cfg: TrainConfig, device: torch.device, world: distributed.World) -> dict:
    _check_settings(cfg, device)
    store = ImageStore(cfg.data)
    uses_cache = method_needs_teacher(cfg.method) and cfg.teacher_source == "cached"
    uses_live = method_needs_teacher(cfg.method) and cfg.teacher_source == "live"
    identity = run_identity(store.fingerprint, cfg.cache if uses_cache else None,
                            cfg.teacher_weights if uses_live else None)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    problem = distributed.broadcast_object(_check_or_write_config(cfg, out, identity) if world.is_main else None)
    if problem:
        raise CompressError(problem)
    log = RunLog(out, tensorboard=cfg.tensorboard, rank=world.rank)
    log.event("start", {**provenance(asdict(cfg)), "augmentation": cfg.augmentation(),
                        "world_size": world.world_size})

    # ------------------------------------------------------------------ data
    labels = torch.from_numpy(store.labels).to(device)
    train_indices = store.indices("train")
    loader = BatchLoader(store, train_indices, cfg.batch_size, seed=cfg.seed, rank=world.rank,
                         world_size=world.world_size)
    if len(loader) == 0:
        raise CompressError(f"--batch-size {cfg.batch_size} x {world.world_size} processes is larger than the "
                            f"{len(train_indices)} training images; use a smaller batch")
    image_hw = tuple(store.manifest["shape"][:2])
    recipe = RECIPES[cfg.augment]
    preprocessing = default_preprocessing(cfg.input_size)
    mine = slice(world.rank * cfg.batch_size, (world.rank + 1) * cfg.batch_size)  # this rank's rows of a batch

    # ------------------------------------------------------------------ networks
    student = build_backbone(cfg.student, cfg.small_input, seed=cfg.seed)
    check_input_size(student, cfg.input_size, f"student {cfg.student}")
    student.bn_groups = cfg.bn_groups  # set before the method copies it (momentum student)
    teacher_rows = teacher_crops = teacher_attrs = live = None
    teacher_dim = None
    if method_needs_teacher(cfg.method):
        if cfg.teacher_source == "live":
            live = LiveTeacher(cfg, device)
            teacher_dim = live.dim
        else:
            teacher_rows, teacher_crops, teacher_attrs = _load_teacher_rows(cfg, store, device)
            teacher_dim = teacher_rows.shape[-1]
    data = DataInfo(num_items=len(store.labels), train_indices=train_indices, num_classes=store.num_classes,
                    teacher_rows=teacher_rows)
    method = build_method(cfg.method, student, teacher_dim=teacher_dim, data=data, hp=asdict(cfg),
                          generator=torch.Generator().manual_seed(cfg.seed),
                          resuming=(out / "checkpoint.pt").exists())
    method.to(device)
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    model = method
    if world.world_size > 1:
        # Momentum copies have requires_grad=False, so DDP leaves them alone. Buffers (queues, memories, cluster
        # ids, BN statistics) are copied from rank 0 once at start and then not broadcast every step: the
        # queues stay equal because every rank writes the same all-gathered rows.
        ddp = torch.nn.parallel.DistributedDataParallel
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                   else {"broadcast_buffers": False})  # the older name, same meaning
        model = ddp(method, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)

    # ------------------------------------------------------------------ optimiser and schedule
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # with --steps the schedule spans the budget as one "epoch"; milestones and warm-up stay in real epochs
    epochs, per_epoch = (1, cfg.steps) if cfg.steps else (cfg.epochs, len(loader))
    scale = len(loader) / per_epoch
    lrs = lr_schedule(cfg.lr, epochs, per_epoch, cfg.schedule, tuple(m * scale for m in cfg.milestones),
                      cfg.lr_gamma, cfg.warmup_epochs * scale)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]

    # ------------------------------------------------------------------ resume
    step = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = restore_checkpoint(ckpt, expect_identity=identity, method=method, optimizer=optimizer,
                                   scaler=scaler)
        step = state["step"]
        log.event("resume", {"step": step, "restored": state["restored"]})
    if world.is_main:  # every input has been read and checked: now the folder is pinned to this run
        _write_config(cfg, out, identity)

    def checkpoint(epoch: int) -> None:
        # only finite checkpoints are written (else CompressError); every rank stops when rank 0 cannot write
        problem = None
        if world.is_main:
            try:
                save_checkpoint(ckpt, step=step, epoch=epoch, identity=identity, method=method,
                                optimizer=optimizer, scaler=scaler)
            except CompressError as e:
                problem = str(e)
        problem = distributed.broadcast_object(problem)
        if problem:
            raise CompressError(problem)

    # ------------------------------------------------------------------ loop
    total = len(lrs)
    global_batch = cfg.batch_size * world.world_size
    while step < total:
        epoch, first = divmod(step, len(loader))
        method.train()
        t0, seen, losses = time.perf_counter(), 0, []
        for idx, images in log.progress(loader.epoch(epoch, first), epoch, len(loader), first):
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[step])
            # Random draws are made for the whole global batch and sliced, so N processes see the same crops
            # as one process with the same global batch.
            gen = _step_generator(cfg.seed, step)
            idx_dev = idx.to(device)
            images = images.to(device, non_blocking=True)
            t = None
            if teacher_rows is not None and teacher_rows.ndim == 3:  # multi-view cache: train on a stored view
                v = torch.randint(teacher_rows.shape[1], (global_batch,), generator=gen)[mine]
                t = teacher_rows[idx_dev, v.to(device)].float()
                drawn = [(teacher_crops[idx, v], None)]  # the teacher's own view, as it was cached
            else:
                if teacher_rows is not None:
                    t = teacher_rows[idx_dev].float()
                drawn = [sample_views(recipe, global_batch, gen, image_hw, cfg.crop_scale_min, cfg.hflip)
                         for _ in range(method.views)]
                drawn = [(c[mine], None if k is None else k[mine]) for c, k in drawn]
            views = [render(images, c, cfg.input_size, preprocessing["mean"], preprocessing["std"], color=k)
                     for c, k in drawn]
            if cfg.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                if live is not None:  # the same crop, with the teacher's own normalisation
                    x_t = render(images, drawn[0][0], cfg.input_size, live.mean, live.std, color=drawn[0][1])
                    t = live(x_t.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x_t)
                loss, extra = model(views, t, labels[idx_dev], idx_dev)
            if _any_rank(not bool(torch.isfinite(loss.detach())), device):
                kept = f"the last good checkpoint {ckpt} is intact" if ckpt.exists() else "no checkpoint was written"
                raise CompressError(f"non-finite loss {loss.item()} at step {step} (epoch {epoch}); {kept}, no "
                                    f"model.pt - lower --lr or use --amp none")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            method.after_step()
            step += 1
            seen += len(idx) * world.world_size
            losses.append(loss.item())
            log.batch(step, loss.item(), float(lrs[step - 1]), extra)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoint(epoch)
            if step == total:  # a --steps budget can end inside an epoch
                break
        elapsed = time.perf_counter() - t0
        log.epoch({"epoch": epoch, "step": step, "loss": float(np.mean(losses)) if losses else None,
                   "lr": float(lrs[step - 1]), "img_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed})
        if not cfg.checkpoint_every:
            checkpoint(epoch)
        if cfg.snapshot_every and (epoch + 1) % cfg.snapshot_every == 0 and world.is_main:
            # a learning curve's point; written after the checkpoint, so a kill in between loses only this file
            save_model(out / "snapshots" / f"model_epoch{epoch + 1:03d}.pt", method.student, preprocessing,
                       method=cfg.method, data_fingerprint=store.fingerprint, identity=identity, epoch=epoch + 1)

    # ------------------------------------------------------------------ the deliverable: the student alone
    problem = None
    if world.is_main:
        meta = {"method": cfg.method, "data_fingerprint": store.fingerprint, "identity": identity,
                "provenance": provenance(asdict(cfg))}
        if teacher_attrs is not None:
            meta["teacher"] = teacher_attrs.get("teacher")
        if live is not None:
            meta["teacher"] = live.identity
        try:  # refused (nothing written) when a weight is not finite; one line when the disk is full
            save_model(out / "model.pt", method.student, preprocessing, **meta)
        except CompressError as e:
            problem = str(e)
    problem = distributed.broadcast_object(problem)
    if problem:
        raise CompressError(problem)
    log.close()
    distributed.barrier()  # no process leaves (and tears the group down) before model.pt is written
    return {"out": str(out), "steps": step, "rank": world.rank}


def config_from_dict(d: dict) -> TrainConfig:
    """Build a config from CLI/params keys, ignoring None (= keep the default). `preset` names a starting point
    from PRESETS; explicit keys override it."""
    d = dict(d)
    preset = d.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise CompressError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CompressError(f"unknown training settings {unknown}")
    given = {k: v for k, v in d.items() if v is not None}
    return TrainConfig(**{**PRESETS.get(preset or "paper-imagenet", {}), **given})
