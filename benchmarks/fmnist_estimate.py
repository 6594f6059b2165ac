"""`python benchmarks/fmnist.py estimate`: time a short run of every kind the study trains, one full evaluation
per student, a teacher curve point and an extraction, on the study's data; project the whole study's CPU time.

Before the teachers exist, a randomly initialised network of the teacher's architecture stands in for them (a
step costs the same whatever the weights). Every time is measured in CPU seconds (user + system) and divided by
the torch threads (its wall times are recorded beside, as `*_wall_*`). That is the wall time only when both
cores are busy throughout, and they are not: the finished runs took about 2.4 times this projection by the
wall clock (`fmnist.py status` compares them; docs/fmnist.md). It was run with OMP_WAIT_POLICY=passive, under which
waiting threads sleep and count nothing; alone, that policy slows training about 3 times
(benchmarks/omp_wait.py). A kind's rate comes from two runs of N and 3N steps
(their difference: 2N steps without the fixed cost of building, loading the cache, CC's k-means, the first
steps); written to results/fmnist_estimate.json with the machine's load average.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch

from benchmarks.fmnist import REPO, Run, Study, _write_json, knn_scores, plan
from pipeline.data.imagestore import ImageStore
from pipeline.runtime.provenance import provenance


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _measured(fn) -> dict:
    """CPU and wall seconds of fn(); `seconds`: the CPU seconds spread over the torch threads, what the step
    takes on this machine when nobody else uses it."""
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    cpu, wall = _cpu() - c0, time.perf_counter() - t0
    return {"cpu_seconds": cpu, "wall_seconds": wall, "seconds": cpu / torch.get_num_threads()}


def _timed_train(study: Study, out: Path, hp: dict, steps: int) -> dict:
    """Two runs of `steps` and 3 x `steps` steps: their difference is the cost of 2 x `steps` steps without
    the fixed part (building, cache loading, k-means for CC, the first steps' kernel set-up)."""
    from stages.train import train
    from stages.train_config import config_from_dict
    done = out / "timing.json"  # an interrupted estimate keeps the kinds it timed
    if done.is_file() and json.loads(done.read_text())["steps"] == steps:
        return {**json.loads(done.read_text()), "reused": True}

    def one(n: int) -> dict:
        cfg = config_from_dict({**hp, "data": study.data, "out": out / f"steps{n}", "steps": n, "epochs": 1,
                                "tensorboard": False, "restart": "always"})
        return _measured(lambda: train(cfg))

    short, long = one(steps), one(3 * steps)
    images = 2 * steps * hp["batch_size"]
    per_image = max(long["seconds"] - short["seconds"], 1e-9) / images
    per_image_wall = max(long["wall_seconds"] - short["wall_seconds"], 1e-9) / images
    timing = {"img_per_s": 1 / per_image, "fixed_seconds": max(0.0, short["seconds"] - images / 2 * per_image),
              "img_per_s_wall_here": 1 / per_image_wall,
              "fixed_wall_seconds_here": max(0.0, short["wall_seconds"] - images / 2 * per_image_wall),
              "steps": steps, "batch_size": hp["batch_size"], "short": short, "long": long}
    _write_json(done, timing)
    return timing


def _stand_in_teacher(study: Study, name: str, folder: Path) -> Path:
    """The study's teacher file when made, else a random-init network of its architecture (timing only)."""
    from pipeline.models.modelfile import default_preprocessing, save_model
    from pipeline.models.backbones import build_backbone
    if study.teacher_record(name) is not None:
        return study.teacher_file(name)
    path = folder / f"stand-in-{name}.pt"
    if not path.is_file():
        arch = study.s["teachers"][name]["student"]
        save_model(path, build_backbone(arch, study.s["small_input"], seed=0),
                   default_preprocessing(study.s["input_size"]), method="random-init (timing stand-in)")
    return path


def estimate(study: Study, steps: int) -> dict:
    from stages.evaluate import EvaluateConfig, evaluate
    from stages.extract import ExtractConfig, extract
    s = study.s
    store = study.prepare()
    n_train = len(store.indices("train"))
    folder = study.work / "estimate"
    folder.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t_all = time.perf_counter()

    # ---------------------------------------------------------------- extraction (and the cache every run reads)
    teacher_file = _stand_in_teacher(study, "ssl", folder)
    cache = folder / "teacher.zarr"
    done = folder / "extract.timing.json"
    if done.is_file() and (cache / "zarr.json").exists():
        extract_timing = json.loads(done.read_text())
    else:
        extract_timing = _measured(lambda: extract(ExtractConfig(data=study.data, weights=teacher_file, out=cache,
                                                                 progress=False, overwrite=True)))
        _write_json(done, extract_timing)
    extract_seconds = extract_timing["seconds"]

    # ---------------------------------------------------------------- student steps, every kind of run
    rates: dict[str, dict] = {}
    kinds = [*s["distill"], *s["references"], "compress-2q-nomomentum", "compress-2q+live"]
    for student in s["students"]:
        for kind in kinds:
            method = kind.removesuffix("+live")
            run = Run(student, method, 0, None if method in s["references"] else "ssl")
            hp = study.run_settings(run)
            if kind.endswith("+live"):
                hp |= {"teacher_source": "live", "teacher_weights": teacher_file}
            elif run.teacher:
                hp["cache"] = cache
            print(f"--- time {student} {kind}", flush=True)
            rates[f"{student}/{kind}"] = _timed_train(study, folder / "runs" / f"{student}-{kind}", hp, steps)

    # ---------------------------------------------------------------- teachers' steps
    teacher_rates = {}
    for name in s["teachers"]:
        hp = {k: v for k, v in study.teacher_settings(name).items() if k not in ("snapshot_every",)}
        print(f"--- time teacher {name}", flush=True)
        teacher_rates[name] = _timed_train(study, folder / "teachers" / name, hp, max(5, steps // 3))

    # ---------------------------------------------------------------- evaluations
    eval_seconds = {}
    for student in s["students"]:
        e = s["eval"]
        done = folder / "metrics" / f"{student}.timing.json"
        if done.is_file():
            eval_seconds[student] = json.loads(done.read_text())["seconds"]
            continue
        model = folder / "runs" / f"{student}-compress-2q" / f"steps{steps}" / "model.pt"
        cfg = EvaluateConfig(data=study.data, out=folder / "metrics" / f"{student}.json", model=model,
                             compare_cache=cache, knn_k=e["knn_k"], knn_tau=e["knn_tau"], probe=e["probe"],
                             probe_epochs=e["probe_epochs"], seed=e["seed"], features_dir=folder / "features")
        timing = _measured(lambda: evaluate(cfg))
        eval_seconds[student] = timing["seconds"]
        _write_json(done, timing)
    curve_point_seconds = _measured(lambda: knn_scores(teacher_file, ImageStore(study.data), s["eval"]))["seconds"]

    # ---------------------------------------------------------------- the projection
    epochs = s["student_train"]["epochs"]

    def run_seconds(run: Run) -> float:
        kind = run.method + ("+live" if dict(run.variant).get("teacher_source") == "live" else "")
        r = rates[f"{run.student}/{kind}"]
        return r["fixed_seconds"] + epochs * n_train / r["img_per_s"] + eval_seconds[run.student]

    def per_epoch(run: Run) -> float:  # seconds of one epoch of this run's training
        kind = run.method + ("+live" if dict(run.variant).get("teacher_source") == "live" else "")
        return n_train / rates[f"{run.student}/{kind}"]["img_per_s"]

    runs = plan(s, {})
    extra = [Run(s["students"][0], "compress-2q", seed, "ssl", () if v == ref else ((key, v),))
             for group, key, ref in (("tau", "tau", s["student_train"]["tau"]),
                                     ("bank", "bank_size", s["student_train"]["bank_size"]))
             for v in s["ablations"][group] if v != ref for seed in s["seeds"][1:]]
    teacher_seconds = {}
    for name, r in teacher_rates.items():
        t = s["teachers"][name]
        full = t["epochs"] * n_train / r["img_per_s"]
        cap = s["teacher_stop"][name]["max_train_seconds"]
        points = t["epochs"] // s["teacher_curve_every"] + 1
        teacher_seconds[name] = min(full, cap or full) + points * curve_point_seconds
    views = s["multiview"]["views"]
    fixed = {"extract (2 teachers + the multi-view cache)": extract_seconds * (2 + views),
             "teacher rows (2 evaluations)": 2 * statistics.mean(eval_seconds.values())}
    main_seconds = sum(run_seconds(r) for r in runs)
    extra_seconds = sum(run_seconds(r) for r in extra)
    total_min = sum(teacher_seconds.values()) + sum(fixed.values()) + main_seconds
    per_kind = {f"{k}": {"img_per_s": round(v["img_per_s"], 1), "fixed_seconds": round(v["fixed_seconds"], 1),
                         "epoch_minutes": round(n_train / v["img_per_s"] / 60, 2)} for k, v in rates.items()}
    result = {
        "command": "python benchmarks/fmnist.py estimate" + (" --smoke" if study.smoke else "")
                   + f" --steps {steps}",
        "measured_in_minutes": round((time.perf_counter() - t_all) / 60, 1),
        "kinds_timed_by_an_earlier_invocation": sum(1 for r in [*rates.values(), *teacher_rates.values()]
                                                    if r.get("reused")),
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "cpus": os.cpu_count(),
        "n_train": n_train, "student_epochs": epochs,
        "rates": per_kind, "teacher_rates": teacher_rates, "eval_seconds": eval_seconds,
        "curve_point_seconds": curve_point_seconds, "extract_seconds_one_view": extract_seconds,
        "projection_hours": {
            "ssl teacher (capped at 2 h of training) + curve": round(teacher_seconds.get("ssl", 0) / 3600, 2),
            "supervised teacher + curve": round(teacher_seconds.get("supervised", 0) / 3600, 2),
            **{k: round(v / 3600, 2) for k, v in fixed.items()},
            f"student runs, {len(runs)} planned": round(main_seconds / 3600, 2),
            f"extra ablation seeds, 0 to {len(extra)} runs (decided by the seed-0 results)":
                round(extra_seconds / 3600, 2),
            "total without extra seeds": round(total_min / 3600, 2),
            "total with every extra seed": round((total_min + extra_seconds) / 3600, 2)},
        "student_runs_hours_per_epoch": round(sum(per_epoch(r) for r in runs) / 3600, 2),
        "student_runs_fixed_hours (start-up + evaluation)": round(
            sum(run_seconds(r) - epochs * per_epoch(r) for r in runs) / 3600, 2),
        "runs_by_student": {st: sum(1 for r in runs if r.student == st) for st in s["students"]},
        "provenance": provenance({"steps": steps}),
    }
    _write_json(study.results / "fmnist_estimate.json", result)
    for k, v in result["projection_hours"].items():
        print(f"  {v:6.2f} h  {k}")
    print(f"wrote {study.results / 'fmnist_estimate.json'} (load average {load_before} before)")
    return result


if __name__ == "__main__":  # pragma: no cover - run through benchmarks/fmnist.py estimate
    raise SystemExit(f"run `python {Path(REPO, 'benchmarks/fmnist.py')} estimate`")
