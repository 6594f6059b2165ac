"""The paper's claims at CPU scale on Fashion-MNIST (issue 8): one command per table.

    .venv/bin/python benchmarks/fmnist.py teacher     # once (~20 min): benchmarks/fmnist_teacher.pt, committed
    .venv/bin/python benchmarks/fmnist.py main        # benchmarks/results/fmnist_main.{json,md}
    .venv/bin/python benchmarks/fmnist.py ablations   # benchmarks/results/fmnist_ablations.{json,md}
    add --smoke to any of them for a few-minute run on 1,500 images that writes under the work folder only

Everything the study fixes is in SETTINGS below, chosen before any result was seen and not tuned after. Data,
caches, runs and per-run metrics go to --work (default artifacts/fmnist); every step whose output exists with the
same settings is reused, so an interrupted command continues when run again, and `ablations` reuses the
reference run that `main` trained (same folder, same settings - the trainer refuses anything else).

Scale, honestly: 2 CPU cores. The teacher is a half-width ResNet-18 (2.8 M parameters, small-input stem at 16 px)
pretrained with the project's `moco` method for 5 epochs on the 60k training images without labels. Students
see 16 px crops through the ImageNet stem and get ONE epoch (937 steps of 64) each - the paper's are 130.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.errors import CompressError  # noqa: E402
from pipeline.imagestore import ImageStore, write_image_store  # noqa: E402
from pipeline.protocols import evaluate_features  # noqa: E402
from pipeline.provenance import provenance, sha256_file  # noqa: E402
from stages.evaluate import METRICS, EvaluateConfig, evaluate  # noqa: E402
from stages.extract import ExtractConfig, extract  # noqa: E402
from stages.prepare import PrepareConfig, prepare  # noqa: E402
from stages.train import changed_settings, config_from_dict, train  # noqa: E402

TEACHER_FILE = REPO / "benchmarks" / "fmnist_teacher.pt"
RESULTS = REPO / "benchmarks" / "results"

SETTINGS = {
    # MoCo v2 on the 60k training images (labels unused), through `compress-cache teacher`: ~20 min here
    "teacher": ["--arch", "resnet18_w32", "--small-input", "--input-size", "16", "--epochs", "5",
                "--batch-size", "256", "--lr", "0.06", "--bank-size", "8192", "--tau", "0.2", "--ema", "0.99",
                "--crop-scale-min", "0.3", "--hflip", "--seed", "0", "--no-tensorboard"],
    # Both students are much cheaper than the teacher: ShuffleNetV2-0.5 (0.34 M parameters) and a quarter-width
    # ResNet-18 (0.70 M), both with the ImageNet stem on 16 px crops (the teacher keeps full resolution).
    "students": ["shufflenet_v2_x0_5", "resnet18_w16"],
    "methods": ["compress-2q", "compress-1q", "reg", "reg-bn", "crd", "cc", "seed", "moco", "supervised"],
    "distillation_baselines": ["reg", "reg-bn", "crd", "cc", "seed"],
    "seeds": [0, 1, 2],  # for compress-2q, compress-1q and the best distillation baseline of the first student
    # shared by every student run; method-specific values are each method's defaults (pipeline/methods/*.py)
    "train": {"small_input": False, "input_size": 16, "epochs": 1, "batch_size": 64, "lr": 0.05,
              "schedule": "cosine", "warmup_epochs": 0.0, "bank_size": 4096, "tau": 0.04, "ema": 0.99,
              "crd_negatives": 4096, "crop_scale_min": 0.5, "hflip": True},
    # a 16 px view of under half a garment rarely shows what it is, hence crop_scale_min 0.5 (paper: 0.2)
    "moco_tau": 0.2,  # MoCo from scratch uses MoCo's temperature, not CompRess's
    "multiview": {"views": 4, "view_scale": (0.5, 1.0)},  # the same crop distribution the students train on
    "ablations": {"tau": [0.02, 0.04, 0.07, 0.1, 1.0], "bank": [256, 1024, 4096, 16384, 60000]},
    "eval": {"knn_k": 20, "knn_tau": 0.07, "probe_epochs": 40, "seed": 0},
}
SMOKE = {"train": 1000, "val": 500, "teacher_epochs": 1, "probe_epochs": 5}


class Study:
    """Paths and cached steps of one work folder."""

    def __init__(self, work: Path, smoke: bool):
        self.work, self.smoke = Path(work), smoke
        self.data = self.work / "data"
        self.records: list[dict] = []
        self.extracted: set[Path] = set()

    # ---------------------------------------------------------------- data, teacher, caches
    def prepare(self) -> ImageStore:
        if not (self.data / "manifest.json").is_file():
            if self.smoke:  # the first images of each split, so the smoke run has a test split too
                full = self.work / "full"
                prepare(PrepareConfig(dataset="fashion-mnist", out=full))
                src = ImageStore(full)
                keep = np.concatenate([src.indices("train")[:SMOKE["train"]], src.indices("val")[:SMOKE["val"]]])
                images, ids = src.read(0, src.n)[keep], src.ids()
                split = np.r_[np.zeros(SMOKE["train"]), np.ones(SMOKE["val"])]
                write_image_store(self.data, images, src.labels[keep], split, [ids[i] for i in keep],
                                  dataset="fashion-mnist-smoke", classes=src.manifest.get("classes"),
                                  source=str(full))
            else:
                prepare(PrepareConfig(dataset="fashion-mnist", out=self.data))
        return ImageStore(self.data)

    def teacher_file(self) -> Path:
        if not self.smoke:
            return TEACHER_FILE
        made = self.work / "teacher" / "model.pt"
        if not made.exists():  # `main --smoke` alone works: the smoke teacher is made on first use
            self.make_teacher()
        return made

    def make_teacher(self) -> Path:
        from pipeline.cli import main as cli
        args = list(SETTINGS["teacher"])
        if self.smoke:
            args[args.index("--epochs") + 1] = str(SMOKE["teacher_epochs"])
        args = ["teacher", "--data", str(self.data), "--out", str(self.work / "teacher"), *args]
        cli.main(args, standalone_mode=False)  # the CLI's own defaults fill the rest (cosine, wd 5e-4)
        made = self.work / "teacher" / "model.pt"
        if not self.smoke:
            shutil.copyfile(made, TEACHER_FILE)
            epochs = [json.loads(line) for line in (self.work / "teacher" / "log.jsonl").read_text().splitlines()]
            record = {"file": str(TEACHER_FILE.relative_to(REPO)), "sha256": sha256_file(TEACHER_FILE),
                      "made_by": "python benchmarks/fmnist.py teacher", "cli": "compress-cache " + " ".join(args),
                      "epochs": [e for e in epochs if e["event"] == "epoch"], "provenance": provenance({})}
            TEACHER_FILE.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        return made

    def cache(self, views: int = 1) -> Path:
        teacher = self.teacher_file()
        if not teacher.is_file():
            raise CompressError(f"teacher {teacher} is missing; make it with `python benchmarks/fmnist.py teacher"
                                f"{' --smoke' if self.smoke else ''}`")
        out = self.work / f"teacher{'' if views == 1 else f'-{views}views'}.zarr"
        if out not in self.extracted:
            print(f"--- extract {out.name}", flush=True)
            extract(ExtractConfig(data=self.data, weights=teacher, out=out, views=views,
                                  view_scale=tuple(SETTINGS["multiview"]["view_scale"]), progress=False))
            self.extracted.add(out)  # written, resumed or found complete: once per command is enough
        return out

    # ---------------------------------------------------------------- one student run, one metrics row
    def run(self, student: str, method: str, seed: int = 0, tag: str = "", **over) -> dict:
        """Train (or reuse) one student and evaluate it. `tag` names the run's departure from SETTINGS["train"]
        (given in `over`); runs without one are shared between the commands."""
        name = f"{student}-{method}-s{seed}" + (f"-{tag}" if tag else "")
        out = self.work / "runs" / name
        hp = {**SETTINGS["train"], "student": student, "method": method, "seed": seed, "data": self.data,
              "out": out, "tensorboard": False}
        if method == "moco":
            hp["tau"] = SETTINGS["moco_tau"]
        if method not in ("moco", "supervised"):
            hp["cache"] = self.cache(1)
        hp.update(over)
        cfg = config_from_dict(hp)
        reused = (out / "model.pt").is_file()
        if reused:  # reuse a finished run only if it was trained with these settings
            changed = changed_settings(json.loads((out / "config.json").read_text()), cfg)
            if changed:
                raise CompressError(f"{out} was trained with other settings ({', '.join(changed)}); delete it or "
                                    f"use another --work folder")
        else:
            print(f"--- train {name}", flush=True)
            train(cfg)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        metrics = self.evaluate(name, model=out / "model.pt")
        row = {"method": method, "student": student, "seed": seed, **{k: metrics[k] for k in METRICS},
               "run": name, "train_seconds": round(sum(e["seconds"] for e in log if e["event"] == "epoch"), 1),
               "img_per_s": round(statistics.mean(e["img_per_s"] for e in log if e["event"] == "epoch"), 1),
               "reused": reused}
        print(f"    {name}: " + "  ".join(f"{k} {row[k]:.2f}" for k in METRICS)
              + f"  ({row['train_seconds']:.0f} s training)", flush=True)
        self.records.append(row)
        return row

    def evaluate(self, name: str, model: Path | None = None, cache: Path | None = None) -> dict:
        out = self.work / "metrics" / f"{name}.json"
        if out.is_file():  # reuse only the numbers of this very model file
            old = json.loads(out.read_text())
            same = (old["source"].get("model_sha256") == sha256_file(model) if model is not None else
                    old["source"]["teacher"]["weights_sha256"] == sha256_file(self.teacher_file()))
            if same:
                return old
        e = SETTINGS["eval"]
        probe_epochs = SMOKE["probe_epochs"] if self.smoke else e["probe_epochs"]
        return evaluate(EvaluateConfig(data=self.data, out=out, model=model, cache=cache, name=name,
                                       knn_k=e["knn_k"], knn_tau=e["knn_tau"], probe_epochs=probe_epochs,
                                       seed=e["seed"], features_dir=self.work / "features"))

    def pixels(self, store: ImageStore) -> dict:
        """The floor: the protocols on raw pixels (28 x 28 values in [0, 1])."""
        out = self.work / "metrics" / "pixels.json"
        if out.is_file():
            return json.loads(out.read_text())
        x = store.read(0, store.n).reshape(store.n, -1).astype(np.float32) / 255.0
        train_i, val_i = store.indices("train"), store.indices("val")
        e = SETTINGS["eval"]
        r = evaluate_features(x[train_i], store.labels[train_i], x[val_i], store.labels[val_i], store.num_classes,
                              knn_k=e["knn_k"], knn_tau=e["knn_tau"], seed=e["seed"],
                              probe_epochs=SMOKE["probe_epochs"] if self.smoke else e["probe_epochs"])
        result = {k: r[k] for k in METRICS} | {"protocols": r["protocols"]}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        return result


# -------------------------------------------------------------------- tables

def _row(m: dict) -> dict:
    return {k: round(float(m[k]), 2) for k in METRICS}


def _mean_std(rows: list[dict], key: str) -> str:
    v = [r[key] for r in rows]
    return f"{v[0]:.1f}" if len(v) == 1 else f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}"


def main_markdown(result: dict) -> str:
    lines = ["| student | method | seeds | NN | kNN-20 | linear | CA |", "|---|---|---|---|---|---|---|"]
    for name in ("teacher", "pixels"):
        label = "teacher (ResNet-18 w32, MoCo)" if name == "teacher" else "raw pixels (floor)"
        lines.append(f"| {label} | - | - | " + " | ".join(f"{result[name][k]:.1f}" for k in METRICS) + " |")
    groups: dict[tuple, list] = {}
    for r in result["rows"]:
        groups.setdefault((r["student"], r["method"]), []).append(r)
    for (student, method), rows in groups.items():
        lines.append(f"| {student} | {method} | {len(rows)} | "
                     + " | ".join(_mean_std(rows, k) for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def ablations_markdown(result: dict) -> str:
    lines = ["| ablation | setting | NN | kNN-20 | linear | CA |", "|---|---|---|---|---|---|"]
    for group in ("tau", "bank", "teacher_source", "momentum"):
        for setting, m in result[group].items():
            lines.append(f"| {group} | {setting} | " + " | ".join(f"{m[k]:.1f}" for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def write(result: dict, name: str, markdown: str, study: Study) -> None:
    folder = study.work if study.smoke else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    command, runs = result["command"], result["runs"]
    reused = [r for r in runs if r["reused"]]
    note = (f" (it reused {len(reused)} of its {len(runs)} finished student runs, made earlier by the same "
            f"command or by `main`; training all {len(runs)} took "
            f"{sum(r['train_seconds'] for r in runs) / 60:.0f} min)" if reused else "")
    (folder / f"{name}.md").write_text(f"Made by `{command}` in {result['wall_minutes']:.0f} min{note} on "
                                       f"{result['machine']}; accuracies in % on the 10k test images.\n\n"
                                       + markdown)
    print(markdown)
    print(f"wrote {folder / name}.json and .md")


# -------------------------------------------------------------------- the commands

def run_main(study: Study) -> dict:
    store = study.prepare()
    teacher = _row(study.evaluate("teacher", cache=study.cache(1)))
    pixels = _row(study.pixels(store))
    first = SETTINGS["students"][0]
    for student in SETTINGS["students"]:
        for method in SETTINGS["methods"]:
            study.run(student, method)
    base = [r for r in study.records if r["student"] == first and r["method"] in SETTINGS["distillation_baselines"]]
    best = max(base, key=lambda r: r["nn"])["method"]
    for method in ("compress-2q", "compress-1q", best):
        for seed in SETTINGS["seeds"][1:]:
            study.run(first, method, seed)
    rows = [{k: r[k] for k in ("method", "student", "seed", *METRICS)} for r in study.records]
    return {"teacher": teacher, "pixels": pixels, "rows": rows, "best_baseline": best, "runs": study.records}


def run_ablations(study: Study) -> dict:
    study.prepare()
    student, ab = SETTINGS["students"][0], SETTINGS["ablations"]
    ref = SETTINGS["train"]
    result: dict = {"student": student, "method": "compress-2q", "reference": {"tau": ref["tau"],
                                                                            "bank": ref["bank_size"]}}

    def one(**over) -> dict:
        return _row(study.run(student, "compress-2q", **over))

    result["tau"] = {str(t): one(**({} if t == ref["tau"] else {"tag": f"tau{t}", "tau": t})) for t in ab["tau"]}
    n_train = len(ImageStore(study.data).indices("train"))  # a bank never holds more anchors than images
    result["bank"] = {str(b): one(**({} if b == ref["bank_size"] else {"tag": f"bank{b}",
                                                                       "bank_size": min(b, n_train)}))
                      for b in ab["bank"]}
    result["teacher_source"] = {
        "cached": one(),
        "live": one(tag="live", teacher_source="live", teacher_weights=study.teacher_file()),
        "multiview": one(tag="multiview", cache=study.cache(SETTINGS["multiview"]["views"])),
    }
    result["momentum"] = {"with": one(), "without": _row(study.run(student, "compress-2q-nomomentum"))}
    return result | {"runs": list({r["run"]: r for r in study.records}.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["teacher", "main", "ablations"])
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "fmnist",
                        help="data, caches, runs and metrics (default: artifacts/fmnist)")
    parser.add_argument("--smoke", action="store_true", help="1,500 images, 1-epoch teacher; writes only to --work")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    study = Study(args.work if not args.smoke or args.work != parser.get_default("work")
                  else REPO / "artifacts" / "fmnist-smoke", args.smoke)
    t0 = time.perf_counter()
    try:
        if args.command == "teacher":
            study.prepare()
            print(f"teacher written to {study.make_teacher()}")
            return
        result = run_main(study) if args.command == "main" else run_ablations(study)
    except CompressError as e:
        sys.exit(f"Error: {e}")
    result |= {"command": "python benchmarks/fmnist.py " + args.command + (" --smoke" if args.smoke else ""),
               "wall_minutes": round((time.perf_counter() - t0) / 60, 1),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, no GPU",
               "settings": SETTINGS, "teacher_sha256": sha256_file(study.teacher_file()),
               "provenance": provenance(vars(args))}
    name = f"fmnist_{args.command}"
    write(result, name, main_markdown(result) if args.command == "main" else ablations_markdown(result), study)


if __name__ == "__main__":
    main()
