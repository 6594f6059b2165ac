"""The settings of stage `train`: one dataclass holds every default, its help, its range and the paper's value
(pipeline/runtime/settings.py); the CLI's options are generated from it, presets are data beside it, and the
checks below hold for a config built in code as for one from the command line."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch

from pipeline.data.augment import RECIPES
from pipeline.data.loader import memory_budget
from pipeline.methods import METHODS, method_class, method_needs_teacher
from pipeline.runtime.errors import CompressError
from pipeline.runtime.memory import parse_size
from pipeline.runtime.settings import outside, setting


@dataclass
class TrainConfig:
    """Every setting of `train`, with its default, help, range and the paper's value (pipeline/runtime/settings.py); the
    CLI's options are generated from these fields. The defaults are the paper's ImageNet recipe."""
    data: Path = setting(MISSING, "Image store (from `prepare`).")
    out: Path = setting(MISSING, "Run folder. Re-running the same command resumes from its checkpoint.")
    cache: Path | None = setting(None, "Teacher cache (from `extract`); needed by every distillation method "
                                       "unless --teacher-source live.", shown="none")
    student: str = setting("resnet18", "The network trained (`teacher`: the one pretrained): resnet18, resnet34, resnet50, mobilenet_v2, alexnet, "
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
    cache_memory: str = setting("auto", "Budget for the cached teacher rows in memory: auto (a quarter of the GPU's "
                                        "memory, or of RAM on the CPU), a size such as 16G, or 0. Above it the rows "
                                        "stay in a memory-mapped copy beside the cache, shared by the node's "
                                        "processes (always so on the CPU under torchrun).")
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
    loader_memory: str = setting("auto", "RAM per node for the one in-RAM copy of the training images, shared by "
                                         "the node's processes: auto (a quarter of the node's RAM), a size such as "
                                         "8G, or 0; a larger store is read in pages from disk in the background.")
    loader_io: str = setting("direct", "How the loader reads the store: direct (O_DIRECT, past the page cache: "
                                       "no kernel copy, and the cache is left to the rest of the node) or buffered "
                                       "(through the page cache: a store that fits in free RAM is served from it "
                                       "after the first epoch).", choices=("direct", "buffered"))
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
    RESUMABLE_CHANGES = ("device", "checkpoint_every", "snapshot_every", "tensorboard", "restart", "cache_memory",
                         "loader_io")

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
    # `compress-cache teacher` without --weights: MoCo v2 pretraining of a teacher on a few thousand small images
    "moco-pretrain": {"method": "moco", "epochs": 100, "batch_size": 256, "lr": 0.06, "weight_decay": 5e-4,
                      "schedule": "cosine", "bank_size": 4096, "tau": 0.2, "ema": 0.99, "input_size": 32},
    # the unit tests and benchmarks: seconds
    "tiny": {"epochs": 1, "batch_size": 32, "bank_size": 64, "input_size": 8, "small_input": True,
             "crd_negatives": 64},
}


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


def check_values(cfg: TrainConfig) -> None:
    """The ranges of the settings (pipeline/runtime/settings.py) hold for a config built in code as well as on the command
    line (where they are usage errors): a non-finite or out-of-range number stops the run before it writes."""
    for f in fields(TrainConfig):
        v = getattr(cfg, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        low, high, low_open, high_open = rng = f.metadata.get("range", (None, None, False, False))
        if outside(v, *rng):
            bounds = [f"{'>' if low_open else '>='} {low}" if low is not None else "",
                      f"{'<' if high_open else '<='} {high}" if high is not None else ""]
            raise CompressError(f"--{f.name.replace('_', '-')} {v!r} is out of range: use a finite number "
                                f"{' and '.join(b for b in bounds if b)}".rstrip())


def check_settings(cfg: TrainConfig, device: torch.device) -> None:
    """Settings that cannot go together, or not on this device: one line each, before anything is written."""
    check_values(cfg)
    memory_budget(cfg.loader_memory)
    parse_size(cfg.cache_memory, "--cache-memory")
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
