"""Benchmark of CompRess-1q's loss alone (head, both logits over the queue, KL, backward) under autocast: does
storing the anchor queue in the autocast dtype, instead of float32, make it cheaper?

Under bf16/fp16 autocast every `z @ queue.t()` casts the float32 queue to the low dtype first - twice a step,
a K x Dt copy each - and the GEMM then sees exactly the rounded values a low-dtype queue would hold. So the two
storages give bitwise the same loss (checked here, every step); only the casts and the memory differ.

    python benchmarks/compress_loss.py --device cuda --amp bf16 --out benchmarks/results/compress_loss_gpu.json
    .venv/bin/python benchmarks/compress_loss.py --K 4096 --batch 32 --steps 5 --rounds 3   # the CPU, fp32 only
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent

from pipeline.methods.losses import compress_loss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--K", default="4096,128000", help="Comma-separated bank sizes.")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--teacher-dim", type=int, default=2048)
    p.add_argument("--student-dim", type=int, default=512)
    p.add_argument("--tau", type=float, default=0.04)
    p.add_argument("--steps", type=int, default=20, help="Steps per timed block.")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="Print torch.profiler's top operators per storage.")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/compress_loss.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    storages = {"float32": torch.float32, **({str(amp).removeprefix("torch."): amp} if amp else {})}
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(args.student_dim, args.teacher_dim).to(device)
    s = torch.randn(args.batch, args.student_dim, generator=g).to(device).requires_grad_(True)
    t = F.normalize(torch.randn(args.batch, args.teacher_dim, generator=g), dim=1).to(device)
    results = {}
    for K in map(int, args.K.split(",")):
        queue32 = F.normalize(torch.randn(K, args.teacher_dim, generator=g), dim=1).to(device)
        queues = {name: queue32.to(dt) for name, dt in storages.items()}

        def step(name: str) -> torch.Tensor:
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = compress_loss(t, head(s), queues[name], queues[name], args.tau)
            loss.backward()
            return loss.detach()

        losses = {name: step(name) for name in queues}  # warm-up, and the equality check
        equal = len({v.item() for v in losses.values()}) == 1 if len(losses) > 1 else None  # None: one storage
        sync()
        times = {name: [] for name in queues}
        for r in range(args.rounds):
            for name in (list(queues) if r % 2 == 0 else list(queues)[::-1]):
                sync()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(name)
                sync()
                times[name].append((time.perf_counter() - t0) / args.steps)
        med = {name: statistics.median(v) for name, v in times.items()}
        results[str(K)] = {"ms_per_step": {k: v * 1e3 for k, v in med.items()}, "all_seconds": times,
                           "loss_bitwise_equal": equal,
                           "queue_MB": {k: q.numel() * q.element_size() / 2**20 for k, q in queues.items()}}
        if amp:
            low = list(queues)[1]
            results[str(K)]["float32_over_" + low] = med["float32"] / med[low]
        if args.profile:
            for name in queues:
                with torch.profiler.profile() as prof:
                    step(name)
                    sync()
                print(f"K {K}, {name} queue:\n" + prof.key_averages().table(sort_by="self_device_time_total"
                      if device.type == "cuda" else "self_cpu_time_total", row_limit=8))
        print(f"K {K:7d}  " + "  ".join(f"{k} {v * 1e3:7.2f} ms" for k, v in med.items())
              + ("" if equal is None else f"  loss bitwise equal: {equal}"))
    payload = {"command": " ".join(["python", "benchmarks/compress_loss.py", *sys.argv[1:]]),
               "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
                           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
               "setup": {"batch": args.batch, "teacher_dim": args.teacher_dim, "student_dim": args.student_dim,
                         "amp": args.amp, "steps_per_block": args.steps, "rounds": args.rounds,
                         "what": "compress-1q loss: head, teacher and student logits over the queue, KL, backward"},
               "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
