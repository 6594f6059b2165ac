"""Benchmark of stage `train`: what does caching the teacher buy per step, and how close is it to the floor?

One run, same data and same batches for every variant, alternating the order each round (A B C D E, E D C B A, ...):
  floor    student-only step: render the crops, the student's forward as the method trains it (backbone plus
           the training-only head of compress-1q), a trivial loss, backward, SGD step
  backbone_floor  the same without any head: the backbone alone (this benchmark's floor until 2026-11-26)
  cached   the trainer's own step (stages.train.Step) with teacher embeddings indexed from a cache in RAM
  live     the same step with the frozen teacher run on the same crops first (--teacher-source live)
  teacher  the teacher's forward alone on those crops (no_grad, eval mode)
Medians over rounds (--extra-rounds adds rounds of floor, cached and backbone_floor only). summary:
  cached_over_floor   cached / floor step time (goal <= 1.05)
  cached_over_backbone_floor  cached / backbone_floor: what the method costs over the bare backbone (1q's head too)
  speedup_over_bound  (live / cached) / ((teacher + floor) / floor): the measured gain of caching relative to
                      the gain a perfect cache would give (goal >= 0.9)
Teacher ResNet-50, students ResNet-18 and MobileNetV2, all with the small-input stem at --size px, or with
torchvision's ImageNet stem under --imagenet-stem (the paper's geometry at --size 224).

    .venv/bin/python benchmarks/train_step.py [--size 32] [--batch 64] [--rounds 3] [--method compress-1q]
    .venv/bin/python benchmarks/train_step.py --size 64 --batch 32 --rounds 5 --steps 2 --extra-rounds 15
    .venv/bin/python benchmarks/train_step.py --size 224 --imagenet-stem --batch 32 --rounds 5 --steps 2
    python benchmarks/train_step.py --device cuda --amp bf16 --batch 256 --steps 20 --rounds 5 \
        --out benchmarks/results/train_step_gpu.json      # on a GPU (timed with torch.cuda.synchronize)
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from dataclasses import asdict
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent

from pipeline.data.augment import render, sample_crops
from pipeline.methods import DataInfo, build_method
from pipeline.models.modelfile import default_preprocessing
from pipeline.models.backbones import build_backbone
from stages.train import LiveTeacher, Step
from stages.train_config import TrainConfig


def make_step(kind: str, student_arch: str, teacher, args, images, rows, device, calls: int):
    """A closure running one training step of `kind` on batch b; every kind owns fresh, identical networks.
    cached and live run the trainer's own step (stages.train.Step); the floors are this file's."""
    cfg = TrainConfig(data=Path("."), out=Path("."), student=student_arch, method=args.method, bank_size=args.bank,
                      amp=args.amp, input_size=args.size, batch_size=args.batch, small_input=not args.imagenet_stem,
                      channels_last=True)  # the trainer's defaults otherwise; under autocast, queues in its dtype
    student = build_backbone(student_arch, small_input=cfg.small_input, seed=0).to(device)
    pre = default_preprocessing(args.size)
    data = DataInfo(num_items=len(images), train_indices=torch.arange(len(images)).numpy(), num_classes=10)
    module = student if kind == "backbone_floor" else build_method(
        args.method, student, teacher_dim=rows.shape[1], data=data, hp=asdict(cfg),
        generator=torch.Generator().manual_seed(0))
    head = getattr(module, "head", None) if kind == "floor" else None  # compress-1q's Linear(Ds -> Dt)
    module.to(device).to(memory_format=torch.channels_last).train()
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)

    def batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(b * args.batch, (b + 1) * args.batch) % len(images)
        return idx, images[idx.to(device)]

    if kind in ("cached", "live"):
        live = (LiveTeacher.of(teacher, {"preprocessing": pre, "embed_dim": teacher.embed_dim}, device,
                               channels_last=True) if kind == "live" else None)
        trainer_step = Step(cfg, device, module, module, opt, scaler, np.full(calls, cfg.lr), (args.size, args.size),
                            torch.zeros(len(images), dtype=torch.long, device=device),
                            teacher_rows=rows if kind == "cached" else None, live=live)
        return lambda b: trainer_step(b, *batch(b))

    def autocast():
        return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def step(b: int) -> None:
        idx, x_u8 = batch(b)
        crops = sample_crops(args.batch, torch.Generator().manual_seed(b), (args.size, args.size)).to(device)
        x = render(x_u8, crops, args.size, pre["mean"], pre["std"]).contiguous(memory_format=torch.channels_last)
        if kind == "teacher":
            with torch.no_grad(), autocast():
                F.normalize(teacher(x).float(), dim=1)
            return
        with autocast():
            z = student(x)
            loss = (head(z) if head is not None else z).float().pow(2).mean()  # trivial loss
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--imagenet-stem", action="store_true", help="torchvision's stem (for 224 px) instead of the "
                   "small-input one")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bank", type=int, default=4096)
    p.add_argument("--steps", type=int, default=2, help="Steps per timed block.")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--extra-rounds", type=int, default=0,
                   help="Further rounds of the cheap kinds only (floor, cached, backbone_floor): cached_over_floor "
                        "judges a 5 %% difference, which needs more samples than the live/teacher ratios.")
    p.add_argument("--method", default="compress-1q")
    p.add_argument("--students", default="resnet18,mobilenet_v2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N.")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/train_step.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"Error: --device {args.device} but no CUDA GPU is visible; use --device cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # GPU work is asynchronous
    n = args.batch * 4
    images = torch.randint(0, 256, (n, args.size, args.size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    teacher = build_backbone("resnet50", small_input=not args.imagenet_stem, seed=1).eval().to(device).to(
        memory_format=torch.channels_last)
    for q in teacher.parameters():
        q.requires_grad_(False)
    rows = F.normalize(torch.randn(n, teacher.embed_dim, generator=torch.Generator().manual_seed(2)),
                       dim=1).half().to(device)
    kinds = ["floor", "cached", "live", "teacher", "backbone_floor"]
    results = {}
    for arch in args.students.split(","):
        calls = 2 + (args.rounds + args.extra_rounds) * args.steps
        steps = {k: make_step(k, arch, teacher, args, images, rows, device, calls) for k in kinds}
        for k in kinds:  # warm-up: allocator, oneDNN / cuDNN kernels
            for w in range(2):
                steps[k](w)
        sync()
        times = {k: [] for k in kinds}
        cheap = ["floor", "cached", "backbone_floor"]
        schedule = [kinds] * args.rounds + [cheap] * args.extra_rounds
        for r, round_kinds in enumerate(schedule):
            for k in (round_kinds if r % 2 == 0 else round_kinds[::-1]):
                sync()
                t0 = time.perf_counter()
                for s in range(args.steps):
                    steps[k](2 + r * args.steps + s)
                sync()
                times[k].append((time.perf_counter() - t0) / args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        bound = (med["teacher"] + med["floor"]) / med["floor"]
        results[arch] = {"seconds_per_step": med, "all_seconds": times,
                         "img_per_s": {k: args.batch / v for k, v in med.items()},
                         "cached_over_floor": med["cached"] / med["floor"],
                         "cached_over_floor_by_round": [c / f for c, f in zip(times["cached"], times["floor"])],
                         "cached_over_backbone_floor": med["cached"] / med["backbone_floor"],
                         "live_over_cached": med["live"] / med["cached"], "bound": bound,
                         "speedup_over_bound": (med["live"] / med["cached"]) / bound}
        print(f"{arch:14s} floor {med['floor']*1e3:7.1f} ms  cached {med['cached']*1e3:7.1f}  live "
              f"{med['live']*1e3:7.1f}  teacher fwd {med['teacher']*1e3:7.1f}  cached/floor "
              f"{results[arch]['cached_over_floor']:.3f} (backbone only "
              f"{results[arch]['cached_over_backbone_floor']:.3f})  speedup/bound "
              f"{results[arch]['speedup_over_bound']:.3f}")
    stem = "ImageNet" if args.imagenet_stem else "small-input"
    precision = "fp32" if args.amp == "none" else f"{args.amp} autocast"
    payload = {"command": " ".join([".venv/bin/python", "benchmarks/train_step.py", *sys.argv[1:]]),
               "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
                           "device": (torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")},
               "setup": {"teacher": f"resnet50 ({stem} stem)", "stem": stem, "students": args.students,
                         "size": args.size, "batch": args.batch, "bank": args.bank, "method": args.method,
                         "rounds": args.rounds, "extra_rounds": args.extra_rounds,
                         "steps_per_block": args.steps, "precision": f"{precision}, channels_last",
                         "order": "A B C D E / E D C B A alternating, medians"},
               "results": results,
               "summary": {arch: {"cached_over_floor": r["cached_over_floor"],
                                  "speedup_over_bound": r["speedup_over_bound"],
                                  "cached_over_backbone_floor": r["cached_over_backbone_floor"]}
                           for arch, r in results.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
