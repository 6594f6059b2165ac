"""The Fashion-MNIST study (issue 18): does CompRess work, with a teacher worth distilling and enough seeds to
tell methods apart, on a 2-core CPU. The plan, the time estimate and the reasons are in docs/fmnist.md.

    .venv/bin/python benchmarks/fmnist.py teacher ssl          # once: MoCo v2 teacher, <= 2 h (stops early when
                                                               #   it passes raw pixels); kNN curve every 3 epochs
    .venv/bin/python benchmarks/fmnist.py teacher supervised   # once: the same network trained with labels
    .venv/bin/python benchmarks/fmnist.py run --max-minutes 50 # the student runs still missing, in plan order
    .venv/bin/python benchmarks/fmnist.py tables               # every table and verdict from the committed results
    .venv/bin/python benchmarks/fmnist.py status               # done / missing runs, time left by the estimate
    .venv/bin/python benchmarks/fmnist.py estimate             # time short runs of everything, project the study
    add --smoke to any command: 1,000 + 300 images, tiny budgets, everything under artifacts/fmnist-smoke

Every setting is in SETTINGS below, fixed before any result of this study was seen. Each finished run writes
benchmarks/results/fmnist_runs/NAME.json at once (commit them as they come); a re-run skips every run whose
file holds the same settings, so the study spans as many sittings as it needs. Data, caches, run folders and
features live under --work (default artifacts/fmnist) and are rebuilt when missing.
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import fmnist_tables as tables  # noqa: E402
from pipeline.runtime.errors import CompressError  # noqa: E402
from pipeline.data.imagestore import ImageStore, write_image_store  # noqa: E402
from pipeline.runtime.provenance import provenance, sha256_file  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TEACHERS = REPO / "benchmarks" / "fmnist_teachers"

SETTINGS = {
    "data": {"dataset": "fashion-mnist"},  # 60k train / 10k test at 28 x 28, the native split
    # Every network sees 40 px renders (bilinear from 28 px) through the ImageNet stem (the paper's): the last
    # feature map is 2 x 2 for ResNet-18 and ShuffleNetV2 (checked in `check_geometry`). Cheaper per image than
    # the small-input stem at 16 px here, and no pixel of the 28 px images is lost.
    "input_size": 40, "small_input": False,
    "teachers": {
        "ssl": {"student": "resnet18_w32", "method": "moco", "augment": "mocov2", "epochs": 40, "batch_size": 256,
                "lr": 0.06, "schedule": "cosine", "weight_decay": 5e-4, "bank_size": 16384, "tau": 0.2,
                "ema": 0.99, "moco_dim": 128, "seed": 0},
        "supervised": {"student": "resnet18_w32", "method": "supervised", "augment": "crop-flip",
                       "crop_scale_min": 0.2, "epochs": 12, "batch_size": 256, "lr": 0.1, "schedule": "cosine",
                       "weight_decay": 5e-4, "seed": 0},
    },
    # the SSL teacher stops at the first curve point that beats raw pixels on both NN and kNN-20 (measured by this
    # study on the same split), or before its training time would pass 2 hours; `epochs` sizes its cosine schedule
    "teacher_stop": {"ssl": {"max_train_seconds": 7200, "stop_when_past_pixels": True},
                     "supervised": {"max_train_seconds": None, "stop_when_past_pixels": False}},
    "teacher_curve_every": 3,  # epochs between kNN points of a teacher's curve (and the last epoch)
    "supervised_teacher_min_knn20": 90.0,
    # students: the first gets 3 seeds of everything; CPU order (resnet18_w16 trains faster here than ShuffleNet)
    "students": ["resnet18_w16", "shufflenet_v2_x0_5"],
    "student_train": {"epochs": 2, "batch_size": 128, "lr": 0.05, "schedule": "cosine", "warmup_epochs": 0.0,
                      "momentum": 0.9, "weight_decay": 1e-4, "bank_size": 16384, "tau": 0.04, "ema": 0.99,
                      "crd_negatives": 16384, "augment": "crop-flip", "crop_scale_min": 0.2, "hflip": True},
    "moco": {"tau": 0.2, "augment": "mocov2"},  # MoCo from scratch: its own temperature and augmentations
    "distill": ["compress-2q", "compress-1q", "reg", "reg-bn", "crd", "cc", "seed"],
    "references": ["moco", "supervised"],
    "seeds": [0, 1, 2],
    "ablations": {"tau": [0.02, 0.04, 0.07, 0.1, 0.2], "bank": [1024, 4096, 16384, 60000],
                  "source": ["cached", "live", "multiview"], "momentum": ["with", "without"]},
    "multiview": {"views": 4, "view_scale": [0.2, 1.0]},  # the students' crop distribution
    "eval": {"knn_k": 20, "knn_tau": 0.07, "probe": "cached", "probe_epochs": 40, "seed": 0},
}

# --smoke: the same code on 1,000 training and 300 test images with budgets of seconds; banks fit the data
SMOKE = {"data": {"train": 1000, "val": 300},
         "teachers": {"ssl": {"epochs": 2, "batch_size": 64, "bank_size": 512},
                      "supervised": {"epochs": 2, "batch_size": 64}},
         "teacher_curve_every": 1,
         "student_train": {"epochs": 1, "batch_size": 64, "bank_size": 512, "crd_negatives": 256},
         "seeds": [0, 1],
         "ablations": {"tau": [0.02, 0.04, 0.2], "bank": [128, 512, 1000]},
         "eval": {"probe_epochs": 5}}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


# ==================================================================== the plan: which runs, in which order

@dataclass(frozen=True)
class Run:
    """One student run. `teacher` None: a reference (MoCo from scratch, supervised) that needs none.
    `variant`: its departure from the shared student settings, for the ablations (tau, bank_size,
    teacher_source=live, views=4)."""
    student: str
    method: str
    seed: int
    teacher: str | None
    variant: tuple = ()

    @property
    def name(self) -> str:
        tag = "".join(f"-{k}{v}" for k, v in self.variant)
        return f"{self.teacher or 'ref'}-{self.student}-{self.method}-s{self.seed}{tag}"

    def ablations(self, s: dict) -> list[tuple[str, object]]:
        """The (ablation, setting) rows this run fills: the reference run fills one in every group."""
        if self.teacher != "ssl" or self.student != s["students"][0]:
            return []
        v = dict(self.variant)
        if self.method == "compress-2q-nomomentum" and not v:
            return [("momentum", "without")]
        if self.method != "compress-2q":
            return []
        ref = s["student_train"]
        if not v:
            return [("tau", ref["tau"]), ("bank", ref["bank_size"]), ("source", "cached"), ("momentum", "with")]
        if set(v) == {"tau"}:
            return [("tau", v["tau"])]
        if set(v) == {"bank_size"}:
            return [("bank", v["bank_size"])]
        if v == {"teacher_source": "live"}:
            return [("source", "live")]
        if v == {"views": s["multiview"]["views"]}:
            return [("source", "multiview")]
        return []


def plan(s: dict, done: dict[str, dict]) -> list[Run]:
    """Every run of the study, most informative first, so a study cut short still answers the most: seed 0 of
    the main table, the second student, seeds 1-2, the ablations, then the ablation seeds that `done` (finished
    results by name) shows are needed."""
    first, second = s["students"]
    seeds, teachers = s["seeds"], list(s["teachers"])

    def main_runs(student: str, seed: int) -> list[Run]:
        runs = [Run(student, m, seed, t) for t in teachers for m in s["distill"]]
        return runs + [Run(student, m, seed, None) for m in s["references"]]

    runs = main_runs(first, seeds[0]) + main_runs(second, seeds[0])
    for seed in seeds[1:]:
        runs += main_runs(first, seed)
    ref = s["student_train"]

    def ablation_runs(seed: int, groups=("tau", "bank", "source", "momentum")) -> list[Run]:
        out = []
        if "tau" in groups:
            out += [Run(first, "compress-2q", seed, "ssl", (("tau", t),)) for t in s["ablations"]["tau"]
                    if t != ref["tau"]]
        if "bank" in groups:
            out += [Run(first, "compress-2q", seed, "ssl", (("bank_size", b),)) for b in s["ablations"]["bank"]
                    if b != ref["bank_size"]]
        if "source" in groups:
            out += [Run(first, "compress-2q", seed, "ssl", (("teacher_source", "live"),)),
                    Run(first, "compress-2q", seed, "ssl", (("views", s["multiview"]["views"]),))]
        if "momentum" in groups:
            out.append(Run(first, "compress-2q-nomomentum", seed, "ssl"))
        return out

    runs += ablation_runs(seeds[0])
    for seed in seeds[1:]:  # claims 3, 4 and 7 are paired differences: every seed
        runs += ablation_runs(seed, ("source", "momentum"))
    runs += extra_ablation_seeds(s, done, first)
    return list(dict.fromkeys(runs))  # the reference runs are shared; keep the first place


def extra_ablation_seeds(s: dict, done: dict[str, dict], first: str) -> list[Run]:
    """Seeds 1.. for a tau or bank setting whose seed-0 NN is within the seed spread (std over seeds of the
    reference run) of a neighbouring setting's: where one seed cannot order them. Decided once seed 0 of the
    group and every seed of the reference are done."""
    ref = s["student_train"]
    reference = [done.get(Run(first, "compress-2q", seed, "ssl").name) for seed in s["seeds"]]
    if None in reference or len(reference) < 2:
        return []
    spread = statistics.stdev(r["metrics"]["nn"] for r in reference)
    out = []
    for group, key, ref_value in (("tau", "tau", ref["tau"]), ("bank", "bank_size", ref["bank_size"])):
        values = sorted(s["ablations"][group])
        run0 = {v: Run(first, "compress-2q", 0, "ssl", () if v == ref_value else ((key, v),)) for v in values}
        nn = {v: done[r.name]["metrics"]["nn"] for v, r in run0.items() if r.name in done}
        if len(nn) < len(values):
            continue
        close = {v for a, b in zip(values, values[1:]) if abs(nn[a] - nn[b]) <= spread for v in (a, b)}
        out += [Run(first, "compress-2q", seed, "ssl", () if v == ref_value else ((key, v),))
                for v in values if v in close for seed in s["seeds"][1:]]
    return out


# ==================================================================== the study's files and steps

def check_geometry(s: dict) -> dict:
    """The last feature map of every network at the study's input: must be larger than 1 x 1 (the issue)."""
    from pipeline.models.backbones import build_backbone
    found = {}
    for arch in sorted({*s["students"], *(t["student"] for t in s["teachers"].values())}):
        net = build_backbone(arch, s["small_input"], seed=0).eval()
        shapes = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape)))
                 for m in net.modules() if not list(m.children()) and not isinstance(m, torch.nn.AdaptiveAvgPool2d)]
        with torch.no_grad():
            net(torch.zeros(1, 3, s["input_size"], s["input_size"]))
        for h in hooks:
            h.remove()
        last = [sh for sh in shapes if len(sh) == 4][-1][2:]
        if min(last) < 2:
            raise CompressError(f"{arch} at {s['input_size']} px ends in a {last[0]}x{last[1]} feature map; the "
                                f"study needs more than 1x1 (raise input_size or use the small-input stem)")
        found[arch] = list(last)
    return found


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _cli_args(hp: dict) -> list[str]:
    """`compress-cache train` options for a settings dict (booleans as their switch)."""
    from dataclasses import fields as dc_fields
    from stages.train_config import TrainConfig
    meta = {f.name: f.metadata for f in dc_fields(TrainConfig)}
    args = []
    for k, v in hp.items():
        name = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            on, off = (meta[k].get("flag") or f"{name}/--no-{k.replace('_', '-')}").split("/")
            args.append(on if v else off)
        elif isinstance(v, (tuple, list)):
            args += [name, ",".join(str(x) for x in v)]
        elif v is not None:
            args += [name, str(v)]
    return args


class Study:
    def __init__(self, work: Path, smoke: bool):
        self.smoke = smoke
        self.s = _merge(SETTINGS, SMOKE) if smoke else copy.deepcopy(SETTINGS)
        self.work = Path(work)
        self.data = self.work / "data"
        self.results = (self.work / "results") if smoke else RESULTS
        self.runs_dir = self.results / "fmnist_runs"
        self.teachers_dir = (self.work / "teachers-made") if smoke else TEACHERS
        self._caches: dict = {}
        self._fingerprint: str | None = None
        self.excluded: list[str] = []  # result files made with other settings, left out of the tables

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = ImageStore(self.data).fingerprint
        return self._fingerprint

    # ---------------------------------------------------------------- data
    def prepare(self) -> ImageStore:
        from stages.prepare import PrepareConfig, prepare
        if not (self.data / "manifest.json").is_file():
            if self.smoke:  # the first images of each split, so the smoke run has a test split too
                full = self.work / "full"
                if not (full / "manifest.json").is_file():
                    prepare(PrepareConfig(dataset=self.s["data"]["dataset"], out=full))
                src = ImageStore(full)
                keep = np.concatenate([src.indices("train")[:self.s["data"]["train"]],
                                       src.indices("val")[:self.s["data"]["val"]]])
                ids = src.ids()
                split = np.r_[np.zeros(self.s["data"]["train"]), np.ones(self.s["data"]["val"])]
                write_image_store(self.data, src.read(0, src.n)[keep], src.labels[keep], split,
                                  [ids[i] for i in keep], dataset="fashion-mnist-smoke",
                                  classes=src.manifest.get("classes"), source=str(full))
            else:
                prepare(PrepareConfig(dataset=self.s["data"]["dataset"], out=self.data))
        return ImageStore(self.data)

    # ---------------------------------------------------------------- raw pixels (the floor)
    def pixels(self) -> dict:
        """NN / kNN-20 / linear / CA on the raw 28 x 28 pixels, and their agreement with each teacher made."""
        from pipeline.evaluation.agreement import teacher_agreement
        from pipeline.evaluation.scoring import evaluate_features
        path = self.runs_dir / "pixels.json"
        store = self.prepare()
        old = json.loads(path.read_text()) if path.is_file() else None
        if old is not None and old.get("data_fingerprint") != store.fingerprint:
            old = None
        x = store.read(0, store.n).reshape(store.n, -1).astype(np.float32) / 255.0
        train, val = store.indices("train"), store.indices("val")
        if old is None:
            e = self.s["eval"]
            r = evaluate_features(x[train], store.labels[train], x[val], store.labels[val], store.num_classes,
                                  knn_k=e["knn_k"], knn_tau=e["knn_tau"], seed=e["seed"],
                                  probe_epochs=e["probe_epochs"])
            old = {"metrics": {k: r[k] for k in tables.METRICS}, "protocols": r["protocols"], "agreement": {},
                   "data_fingerprint": store.fingerprint}
        for name in self.s["teachers"]:
            record = self.teacher_record(name)
            if record is None or old["agreement"].get(name, {}).get("teacher_sha256") == record["sha256"]:
                continue
            z = self.teacher_features(name)
            a = teacher_agreement(x[train], x[val], z[train], z[val])
            old["agreement"][name] = {"agree10": a["agree10"], "agree1": a["agree1"],
                                      "teacher_sha256": record["sha256"]}
        _write_json(path, old)
        return old

    # ---------------------------------------------------------------- teachers
    def teacher_file(self, name: str) -> Path:
        return self.teachers_dir / f"{name}.pt"

    def teacher_record(self, name: str) -> dict | None:
        path = self.teachers_dir / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def teacher_settings(self, name: str) -> dict:
        return {**self.s["teachers"][name], "input_size": self.s["input_size"],
                "small_input": self.s["small_input"], "snapshot_every": 1, "tensorboard": False}

    def make_teacher(self, name: str) -> dict:
        """Train teacher `name` in a child process (`compress-cache train ... --snapshot-every 1`), score a kNN
        curve point every few epochs while it trains, stop it by the study's rule, keep the chosen snapshot."""
        if name not in self.s["teachers"]:
            raise CompressError(f"unknown teacher {name!r}; use one of {', '.join(self.s['teachers'])}")
        if self.teacher_record(name) is not None:
            print(f"teacher {name} already made: {self.teacher_file(name)} ({self.teachers_dir / name}.json)")
            return self.teacher_record(name)
        store = self.prepare()
        pixels = self.pixels()["metrics"]
        out = self.work / "teachers" / name
        hp = self.teacher_settings(name)
        args = ["train", "--data", str(self.data), "--out", str(out), *_cli_args(hp)]
        rule = self.s["teacher_stop"][name]
        curve_path = out / "curve.json"
        curve = json.loads(curve_path.read_text()) if curve_path.is_file() else []
        # a teacher stopped or finished in an earlier sitting gets its last point here, and is not restarted
        ended = (out / "model.pt").is_file() or self._time_up(name, out)
        self._score_snapshots(name, out, store, curve, curve_path, final=ended)
        stop, chosen = self._stop_reason(name, out, curve, pixels)
        if stop is None:
            out.mkdir(parents=True, exist_ok=True)
            print(f"--- teacher {name}: compress-cache {' '.join(args)}", flush=True)
            with open(out / "child.log", "a") as log:
                child = subprocess.Popen([sys.executable, "-m", "stages", *args], cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
            try:
                while stop is None:
                    finished = child.poll() is not None
                    self._score_snapshots(name, out, store, curve, curve_path, final=finished)
                    stop, chosen = self._stop_reason(name, out, curve, pixels)
                    if finished and stop is None:
                        tail = (out / "child.log").read_text()[-2000:]
                        raise CompressError(f"teacher {name} training ended (exit {child.returncode}) before its "
                                            f"rule stopped it; see {out / 'child.log'}: ...{tail[-300:]}")
                    if stop is None:
                        time.sleep(10)
            finally:
                if child.poll() is None:  # our own child: stopped by the rule, or we were interrupted
                    child.send_signal(signal.SIGTERM)
                    child.wait()
        return self._finish_teacher(name, out, hp, args, curve, stop, chosen, pixels, rule)

    def _epochs(self, out: Path) -> list[dict]:
        path = out / "log.jsonl"
        if not path.is_file():
            return []
        return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("event") == "epoch"]

    @staticmethod
    def _snapshots(out: Path) -> dict[int, Path]:
        folder = out / "snapshots"
        found = sorted(folder.glob("model_epoch*.pt")) if folder.is_dir() else []
        return {int(p.stem.removeprefix("model_epoch")): p for p in found}

    def _score_snapshots(self, name: str, out: Path, store, curve: list, curve_path: Path, final: bool) -> None:
        """Add a curve point for every `teacher_curve_every`-th snapshot not yet scored, and for the latest one
        once training has ended (`final`) or must stop for time: NN and kNN-20 on the test images."""
        every, total = self.s["teacher_curve_every"], self.s["teachers"][name]["epochs"]
        scored = {p["epoch"] for p in curve}
        snaps = self._snapshots(out)
        latest = max(snaps, default=None)
        for epoch, snap in snaps.items():
            ending = epoch == latest and (final or self._time_up(name, out))
            if epoch in scored or not (epoch % every == 0 or epoch == total or ending):
                continue
            t0 = time.perf_counter()
            point = {"epoch": epoch, **knn_scores(snap, store, self.s["eval"]), "file": snap.name,
                     "train_seconds": round(sum(e["seconds"] for e in self._epochs(out)[:epoch]), 1)}
            point["eval_seconds"] = round(time.perf_counter() - t0, 1)
            curve.append(point)
            curve.sort(key=lambda p: p["epoch"])
            _write_json(curve_path, curve)
            print(f"    {name} teacher, epoch {epoch}: NN {point['nn']:.2f}  kNN-20 {point['knn20']:.2f}", flush=True)

    def _time_up(self, name: str, out: Path) -> bool:
        """True when one more epoch would take the teacher's training past its time limit."""
        cap = self.s["teacher_stop"][name]["max_train_seconds"]
        epochs = self._epochs(out)
        if cap is None or not epochs:
            return False
        spent = sum(e["seconds"] for e in epochs)
        return spent + spent / len(epochs) > cap

    def _stop_reason(self, name: str, out: Path, curve: list, pixels: dict) -> tuple[str | None, dict | None]:
        rule = self.s["teacher_stop"][name]
        if rule["stop_when_past_pixels"]:
            for p in curve:
                if p["nn"] > pixels["nn"] and p["knn20"] > pixels["knn20"]:
                    return f"passed raw pixels at epoch {p['epoch']}", p
        epochs = self._epochs(out)
        last = curve[-1] if curve else None
        if last is not None and epochs and last["epoch"] == max(self._snapshots(out)):
            if len(epochs) >= self.s["teachers"][name]["epochs"]:
                return f"finished its {len(epochs)} epochs", last
            if self._time_up(name, out):
                return f"stopped before its training time would pass {rule['max_train_seconds']} s", last
        return None, None

    def _finish_teacher(self, name, out, hp, args, curve, stop, chosen, pixels, rule) -> dict:
        target = self.teacher_file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "snapshots" / chosen["file"], target)
        epochs = self._epochs(out)
        record = {"teacher": name, "file": str(target.relative_to(REPO) if not self.smoke else target),
                  "sha256": sha256_file(target), "made_by": f"python benchmarks/fmnist.py teacher {name}"
                                                            + (" --smoke" if self.smoke else ""),
                  "train_command": "compress-cache " + " ".join(args), "settings": hp, "rule": rule,
                  "stopped": stop, "chosen_epoch": chosen["epoch"], "chosen": chosen, "pixels": pixels,
                  "curve": curve, "epochs": epochs[:chosen["epoch"]],
                  "train_seconds": round(sum(e["seconds"] for e in epochs[:chosen["epoch"]]), 1),
                  "provenance": provenance({"teacher": name})}
        if name == "supervised":
            record["meets_min_knn20"] = chosen["knn20"] >= self.s["supervised_teacher_min_knn20"]
        _write_json(self.teachers_dir / f"{name}.json", record)
        print(f"teacher {name}: {stop}; epoch {chosen['epoch']} NN {chosen['nn']:.2f} kNN-20 {chosen['knn20']:.2f} "
              f"(pixels {pixels['nn']:.2f} / {pixels['knn20']:.2f}) -> {target}", flush=True)
        return record

    def require_teacher(self, name: str) -> dict:
        record = self.teacher_record(name)
        if record is None or not self.teacher_file(name).is_file():
            raise CompressError(f"teacher {name!r} is not made yet; run `python benchmarks/fmnist.py teacher {name}"
                                f"{' --smoke' if self.smoke else ''}` first")
        if sha256_file(self.teacher_file(name)) != record["sha256"]:
            raise CompressError(f"{self.teacher_file(name)} does not match its record {name}.json (sha256); "
                                f"restore the committed file")
        return record

    def cache(self, name: str, views: int = 1) -> Path:
        """The teacher's cache: reused when complete and made from this teacher file, else extracted."""
        from cache.errors import CacheError
        from cache.load import open_complete
        from stages.extract import ExtractConfig, extract
        key = (name, views)
        if key in self._caches:
            return self._caches[key]
        record = self.require_teacher(name)
        out = self.work / f"teacher-{name}{'' if views == 1 else f'-{views}views'}.zarr"
        store = ImageStore(self.data)
        try:
            _, attrs = open_complete(out, expect_fingerprint=store.fingerprint)
            fresh = attrs["teacher"]["weights_sha256"] != record["sha256"]
        except (CacheError, KeyError):
            fresh = True
        if fresh:
            print(f"--- extract {out.name}", flush=True)
            extract(ExtractConfig(data=self.data, weights=self.teacher_file(name), out=out, views=views,
                                  view_scale=tuple(self.s["multiview"]["view_scale"]), progress=False,
                                  rebuild_if_changed=True))
        self._caches[key] = out
        return out

    def teacher_features(self, name: str) -> np.ndarray:
        from cache.load import load_embeddings
        z, _ = load_embeddings(self.cache(name), expect_fingerprint=ImageStore(self.data).fingerprint)
        return z.float().numpy()

    def teacher_row(self, name: str) -> dict:
        """The teacher's own metrics, from its cache (the view every student is compared with)."""
        from stages.evaluate import EvaluateConfig, evaluate
        record = self.require_teacher(name)
        path = self.runs_dir / f"teacher-{name}.json"
        if path.is_file() and json.loads(path.read_text()).get("teacher_sha256") == record["sha256"]:
            return json.loads(path.read_text())
        e = self.s["eval"]
        m = evaluate(EvaluateConfig(data=self.data, out=self.work / "metrics" / f"teacher-{name}.json",
                                    cache=self.cache(name), knn_k=e["knn_k"], knn_tau=e["knn_tau"],
                                    probe=e["probe"], probe_epochs=e["probe_epochs"], seed=e["seed"]))
        row = {"teacher": name, "teacher_sha256": record["sha256"], "arch": record["settings"]["student"],
               "metrics": {k: m[k] for k in tables.METRICS}, "protocols": m["protocols"]}
        _write_json(path, row)
        return row

    # ---------------------------------------------------------------- student runs
    def run_settings(self, run: Run) -> dict:
        s = self.s
        hp = {**s["student_train"], "student": run.student, "method": run.method, "seed": run.seed,
              "input_size": s["input_size"], "small_input": s["small_input"]}
        if run.method == "moco":
            hp.update(s["moco"])
        v = dict(run.variant)
        hp.update({k: val for k, val in v.items() if k not in ("views",)})
        return hp

    def identity(self, run: Run) -> dict:
        """What a finished result must match to be reused: the settings, the teacher file, the eval settings."""
        hp = self.run_settings(run)
        return {"settings": hp, "views": dict(run.variant).get("views", 1), "eval": self.s["eval"],
                "teacher_sha256": (self.teacher_record(run.teacher) or {}).get("sha256") if run.teacher else None,
                "data": self.fingerprint()}

    def finished(self) -> dict[str, dict]:
        if not self.runs_dir.is_dir():
            return {}
        out = {}
        for path in self.runs_dir.glob("*.json"):
            r = json.loads(path.read_text())
            if "run" in r:
                out[r["run"]["name"]] = r
        return out

    def train_and_evaluate(self, run: Run) -> dict:
        from pipeline.evaluation.agreement import teacher_agreement
        from pipeline.runtime.code_digest import code_digest
        from stages.evaluate import EvaluateConfig, evaluate
        from stages.train import train
        from stages.train_config import config_from_dict
        out = self.work / "runs" / run.name
        hp = self.run_settings(run)
        teacher = run.teacher or "ssl"  # references are compared with the SSL teacher's cache (and below, both)
        if hp.get("teacher_source") == "live":
            hp["teacher_weights"] = self.teacher_file(run.teacher)
        elif run.teacher is not None:
            hp["cache"] = self.cache(run.teacher, dict(run.variant).get("views", 1))
        cfg = config_from_dict({**hp, "data": self.data, "out": out, "tensorboard": True, "restart": "if-changed"})
        print(f"--- train {run.name}", flush=True)
        t0 = time.perf_counter()
        train(cfg)
        train_wall = time.perf_counter() - t0
        e = self.s["eval"]
        t0 = time.perf_counter()
        m = evaluate(EvaluateConfig(data=self.data, out=self.work / "metrics" / f"{run.name}.json",
                                    model=out / "model.pt", compare_cache=self.cache(teacher), name=run.name,
                                    knn_k=e["knn_k"], knn_tau=e["knn_tau"], probe=e["probe"],
                                    probe_epochs=e["probe_epochs"], seed=e["seed"],
                                    features_dir=self.work / "features"))
        agreement = {teacher: {"agree10": m["agree10"], "agree1": m["agree1"],
                               "against": m["agreement"]["against"]}}
        store = ImageStore(self.data)
        train_i, val_i = store.indices("train"), store.indices("val")
        x = np.load(self.work / "features" / f"{run.name}.features.npy").astype(np.float32)
        for other in self.s["teachers"]:
            if other not in agreement and self.teacher_record(other) is not None:
                z = self.teacher_features(other)
                a = teacher_agreement(x[train_i], x[val_i], z[train_i], z[val_i])
                agreement[other] = {"agree10": a["agree10"], "agree1": a["agree1"],
                                    "teacher_sha256": self.teacher_record(other)["sha256"]}
        eval_wall = time.perf_counter() - t0
        epochs = self._epochs(out)
        result = {"run": {"name": run.name, "student": run.student, "method": run.method, "seed": run.seed,
                          "teacher": run.teacher, "variant": dict(run.variant)},
                  "identity": self.identity(run), "metrics": {k: m[k] for k in tables.METRICS},
                  "agreement": agreement, "loss_curve": loss_curve(out), "epochs": epochs,
                  "train_seconds": round(sum(ep["seconds"] for ep in epochs), 1),
                  "train_wall_seconds": round(train_wall, 1), "eval_seconds": round(eval_wall, 1),
                  "img_per_s": round(statistics.mean(ep["img_per_s"] for ep in epochs), 1),
                  "model_sha256": sha256_file(out / "model.pt"), "code_digest": code_digest(),
                  "load_average": os.getloadavg(), "provenance": provenance({"run": run.name})}
        _write_json(self.runs_dir / f"{run.name}.json", result)
        print(f"    {run.name}: " + "  ".join(f"{k} {m[k]:.2f}" for k in tables.METRICS)
              + f"  agree10 {m['agree10']:.3f}  ({result['train_seconds']:.0f} s training, {eval_wall:.0f} s eval)",
              flush=True)
        return result

    def pending(self, runs: list[Run], done: dict[str, dict]) -> list[Run]:
        """The runs without a finished result; a result made with other settings or another teacher stops the
        study (delete it to redo the run)."""
        todo = []
        for run in runs:
            r = done.get(run.name)
            if r is None:
                todo.append(run)
            elif r["identity"] != self.identity(run):
                diff = [k for k in r["identity"] if r["identity"][k] != self.identity(run).get(k)]
                raise CompressError(f"{self.runs_dir / run.name}.json was made with other {', '.join(diff)}; "
                                    f"delete it to redo the run with the current settings, or restore SETTINGS")
        return todo


# ==================================================================== measurements shared by the commands

def knn_scores(model_file: Path, store: ImageStore, e: dict) -> dict:
    """NN and kNN-20 (%) of a model file's features on the test images: a teacher curve's point."""
    from pipeline.runtime.device import pick_device
    from pipeline.evaluation.embed import embed_all
    from pipeline.evaluation.knn import KNNConfig, knn_classify
    from pipeline.models.modelfile import load_model
    backbone, meta = load_model(model_file)
    z = embed_all(backbone, store, meta["preprocessing"], 256, pick_device("cpu")).numpy()
    train, val = store.indices("train"), store.indices("val")
    nn, knn = knn_classify(z[train], store.labels[train], z[val], store.num_classes,
                           KNNConfig(k=e["knn_k"], tau=e["knn_tau"]))
    y = store.labels[val]
    return {"nn": float(100 * np.mean(nn == y)), "knn20": float(100 * np.mean(knn == y))}


def loss_curve(out: Path, bins: int = 40) -> dict:
    """The training loss of a run in `bins` equal slices of its steps (means), from its TensorBoard events, and
    `last_quarter_drop`: the relative fall of the loss over the last quarter of training (flat: near 0)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        steps = {e.step: e.value for e in acc.Scalars("train/loss")}  # a resumed run repeats no step
    except Exception as e:  # tensorboard absent or no events: the per-epoch means are all there is
        return {"source": f"none ({type(e).__name__})", "values": []}
    values = [steps[k] for k in sorted(steps)]
    if len(values) < 8:
        return {"source": "tensorboard train/loss", "values": values, "last_quarter_drop": None}
    chunks = np.array_split(np.array(values), min(bins, len(values)))
    means = [float(c.mean()) for c in chunks]
    n = len(values)
    before, last = np.mean(values[int(0.65 * n):int(0.75 * n)]), np.mean(values[int(0.9 * n):])
    return {"source": "tensorboard train/loss", "steps": n, "bins": means,
            "last_quarter_drop": float((before - last) / abs(before)) if before else None}


# ==================================================================== tables

def collect(study: Study) -> tuple[list[dict], list[dict], dict]:
    """Rows of fmnist_main.json and fmnist_ablations.json from every finished result made with the current
    settings and teachers (others are left out and named in `status`), teacher and pixel rows."""
    s = study.s
    done, study.excluded = {}, []
    for name, r in study.finished().items():
        spec = r["run"]
        run = Run(spec["student"], spec["method"], spec["seed"], spec["teacher"], tuple(spec["variant"].items()))
        teacher = (study.teacher_record(run.teacher) or {}).get("sha256") if run.teacher else None
        same = (r["identity"]["settings"] == study.run_settings(run) and r["identity"]["eval"] == s["eval"]
                and r["identity"]["teacher_sha256"] == teacher)
        if same:
            done[name] = r
        else:
            study.excluded.append(name)
    main_rows, ablation_rows = [], []
    pixels_path = study.runs_dir / "pixels.json"
    pixels = json.loads(pixels_path.read_text()) if pixels_path.is_file() else None
    for name in s["teachers"]:
        path = study.runs_dir / f"teacher-{name}.json"
        if path.is_file():
            t = json.loads(path.read_text())
            main_rows.append({"teacher": name, "method": "teacher", "student": t["arch"], "seed": 0,
                              **t["metrics"], "agree10": None, "agree1": None})
        if pixels is not None:
            a = pixels["agreement"].get(name, {})
            main_rows.append({"teacher": name, "method": "pixels", "student": "-", "seed": 0, **pixels["metrics"],
                              "agree10": a.get("agree10"), "agree1": a.get("agree1")})
    for r in done.values():
        spec = r["run"]
        run = Run(spec["student"], spec["method"], spec["seed"], spec["teacher"], tuple(spec["variant"].items()))
        if not spec["variant"] and spec["method"] != "compress-2q-nomomentum":
            for teacher in ([spec["teacher"]] if spec["teacher"] else list(s["teachers"])):
                a = r["agreement"].get(teacher, {})
                main_rows.append({"teacher": teacher, "method": spec["method"], "student": spec["student"],
                                  "seed": spec["seed"], **r["metrics"], "agree10": a.get("agree10"),
                                  "agree1": a.get("agree1")})
        for ablation, setting in run.ablations(s):
            ablation_rows.append({"ablation": ablation, "setting": setting, "seed": spec["seed"], **r["metrics"],
                                  "agree10": r["agreement"].get("ssl", {}).get("agree10")})
    main_rows = [{k: row[k] for k in tables.MAIN_KEYS} for row in main_rows]
    key = lambda r: tuple(str(r[k]) for k in ("teacher", "student", "method", "seed"))  # noqa: E731
    return sorted(main_rows, key=key), sorted(ablation_rows, key=lambda r: (
        r["ablation"], tables.setting_order(r["setting"]), r["seed"])), done


def write_tables(study: Study) -> dict:
    s = study.s
    main_rows, ablation_rows, done = collect(study)
    planned = plan(s, done)
    finished = [r for r in planned if r.name in done]
    found = tables.claims(main_rows, ablation_rows, s["students"])
    teachers = {name: {k: rec[k] for k in ("file", "sha256", "stopped", "chosen_epoch", "train_seconds", "curve",
                                            "train_command") if k in rec} | (
                    {"meets_min_knn20": rec["meets_min_knn20"]} if "meets_min_knn20" in rec else {})
                for name in s["teachers"] if (rec := study.teacher_record(name)) is not None}
    digests = sorted({r["code_digest"] for r in done.values()})
    status = {"runs_planned": len(planned), "runs_done": len(finished), "complete": len(finished) == len(planned),
              "excluded_other_settings": study.excluded,
              "code_digests": digests,
              "train_hours": round(sum(r["train_seconds"] for r in done.values()) / 3600, 2),
              "eval_hours": round(sum(r["eval_seconds"] for r in done.values()) / 3600, 2)}
    command = "python benchmarks/fmnist.py tables" + (" --smoke" if study.smoke else "")
    common = {"command": command, "status": status, "teachers": teachers, "settings": s,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    main = {"rows": main_rows, "claims": found, **common}
    ablations = {"rows": ablation_rows, **common}
    _write_json(study.results / "fmnist_main.json", main)
    _write_json(study.results / "fmnist_ablations.json", ablations)
    head = (f"Made by `{command}` from {status['runs_done']} of {status['runs_planned']} planned runs"
            f"{'' if status['complete'] else ' (INCOMPLETE: the study is still running)'}; "
            f"{status['train_hours']} h of training and {status['eval_hours']} h of evaluation, on "
            f"{len(digests)} version(s) of the code; accuracies in % on the test images, agree10/agree1 as fractions "
            f"against the row's teacher; mean ± std over seeds.\n\n")
    curve = "".join(f"- {name} teacher: {t.get('stopped')}; kNN curve (epoch: NN / kNN-20): "
                    + ", ".join(f"{p['epoch']}: {p['nn']:.1f} / {p['knn20']:.1f}" for p in t.get("curve", []))
                    + "\n" for name, t in teachers.items())
    flat = flatness_lines(done, s)
    (study.results / "fmnist_main.md").write_text(head + curve + "\n" + tables.main_markdown(main_rows)
                                                  + "\n**Claims** (paired differences over shared seeds, mean ± "
                                                    "standard error):\n\n" + tables.claims_markdown(found)
                                                  + "\n**Training loss, relative fall over the last quarter "
                                                    "(flat: near 0)**, seed 0:\n\n" + flat)
    (study.results / "fmnist_ablations.md").write_text(head + tables.ablations_markdown(ablation_rows))
    plot_losses(done, s, study.results / "fmnist_loss_curves.png")
    print(tables.main_markdown(main_rows))
    print(tables.claims_markdown(found))
    print(f"wrote {study.results}/fmnist_main.{{json,md}}, fmnist_ablations.{{json,md}}, fmnist_loss_curves.png")
    return main


def flatness_lines(done: dict, s: dict) -> str:
    lines = []
    for r in sorted(done.values(), key=lambda r: r["run"]["name"]):
        spec, drop = r["run"], r["loss_curve"].get("last_quarter_drop")
        if spec["seed"] == 0 and not spec["variant"] and drop is not None:
            lines.append(f"- {spec['teacher'] or 'ref'} / {spec['student']} / {spec['method']}: {100 * drop:+.1f} %")
    return "\n".join(lines) + "\n"


def plot_losses(done: dict, s: dict, path: Path) -> None:
    """One panel per method: the seed-0 loss curves of each student and teacher, scaled by their first bin."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = [*s["distill"], *s["references"]]
    fig, axes = plt.subplots(2, (len(methods) + 1) // 2, figsize=(16, 6), squeeze=False)
    for ax, method in zip(axes.flat, methods):
        for r in done.values():
            spec, bins = r["run"], r["loss_curve"].get("bins")
            if spec["method"] == method and spec["seed"] == 0 and not spec["variant"] and bins:
                ax.plot(np.linspace(0, 1, len(bins)), np.array(bins) / bins[0],
                        label=f"{spec['teacher'] or 'ref'} {spec['student']}")
        ax.set_title(method, fontsize=9)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6)
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    fig.supxlabel("fraction of training")
    fig.supylabel("loss / first bin")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ==================================================================== the commands

def cmd_run(study: Study, max_minutes: float | None, only: str | None) -> None:
    check_geometry(study.s)
    study.prepare()
    for name in study.s["teachers"]:
        study.require_teacher(name)
        study.teacher_row(name)
    study.pixels()
    t0 = time.perf_counter()
    while True:
        done = study.finished()
        todo = [r for r in study.pending(plan(study.s, done), done) if only is None or fnmatch.fnmatch(r.name, only)]
        if not todo:
            print("no run left" + (f" matching {only!r}" if only else ""))
            break
        spent = (time.perf_counter() - t0) / 60
        if max_minutes is not None and spent + expected_minutes(todo[0], done) > max_minutes:
            print(f"stopping before {todo[0].name}: {spent:.0f} of {max_minutes:.0f} min spent and it would take "
                  f"~{expected_minutes(todo[0], done):.0f} more; run the same command again to continue")
            break
        study.train_and_evaluate(todo[0])
    write_tables(study)


def expected_minutes(run: Run, done: dict) -> float:
    """Minutes a run will take, from finished runs of its student and method (else of its student)."""
    same = [r for r in done.values() if r["run"]["student"] == run.student and r["run"]["method"] == run.method]
    same = same or [r for r in done.values() if r["run"]["student"] == run.student]
    if not same:
        return 0.0
    return statistics.median((r["train_wall_seconds"] + r["eval_seconds"]) / 60 for r in same)


def cmd_status(study: Study) -> None:
    done = study.finished()
    runs = plan(study.s, done)
    todo = study.pending(runs, done)
    left = sum(expected_minutes(r, done) for r in todo)
    for name in study.s["teachers"]:
        rec = study.teacher_record(name)
        print(f"teacher {name}: " + (f"made ({rec['stopped']})" if rec else "NOT MADE"))
    print(f"{len(runs) - len(todo)} of {len(runs)} runs done; {len(todo)} left, ~{left / 60:.1f} h by the "
          f"finished runs' times (0 for kinds not yet timed; `estimate` projects them)")
    for r in todo[:10]:
        print(f"  next: {r.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["teacher", "run", "tables", "status", "estimate"])
    parser.add_argument("name", nargs="?", help="teacher: ssl or supervised")
    parser.add_argument("--work", type=Path, default=None, help="default: artifacts/fmnist (smoke: fmnist-smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny data and budgets; writes only under --work")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="run: start no run that would end after this many minutes (by finished runs' times)")
    parser.add_argument("--only", default=None, help="run: only runs whose name matches this glob")
    parser.add_argument("--steps", type=int, default=30, help="estimate: steps per timed run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = args.work or REPO / "artifacts" / ("fmnist-smoke" if args.smoke else "fmnist")
    study = Study(work, args.smoke)
    try:
        if args.command == "teacher":
            if args.name is None:
                raise CompressError(f"name the teacher: {' or '.join(study.s['teachers'])}")
            check_geometry(study.s)
            study.make_teacher(args.name)
        elif args.command == "run":
            cmd_run(study, args.max_minutes, args.only)
        elif args.command == "tables":
            write_tables(study)
        elif args.command == "status":
            cmd_status(study)
        else:
            from benchmarks.fmnist_estimate import estimate
            estimate(study, args.steps)
    except CompressError as e:
        sys.exit(f"Error: {e}")


if __name__ == "__main__":
    main()
