"""How many epochs does each method need before its training loss is flat? Issue 18 asks for "a budget at which
every method's training loss has flattened"; the study runs at 2 epochs, where several still fall
(docs/fmnist.md). This probe trains seed 0 of the study's first student (SSL teacher, cached; the two references
without one) at longer budgets, everything else as in the study's SETTINGS, and records each run's loss curve.

    .venv/bin/python benchmarks/fmnist_budget.py                         # 2, 4 and 8 epochs, every method
    .venv/bin/python benchmarks/fmnist_budget.py --epochs 4 --methods compress-1q,cc
    .venv/bin/python benchmarks/fmnist_budget.py --table                 # only rewrite the table from the JSON
    .venv/bin/python benchmarks/fmnist_budget.py --smoke                 # 1,000 images, under artifacts/

Nothing is evaluated on test images: a budget must be chosen from training losses alone. "Flat" is fixed here
before any result: a run's loss moves by at most FLAT (2 %) from 65-75 % of its steps to its last 10 %
(`fmnist.loss_curve`'s `last_quarter_drop`). (First written "falls by at most": that counted MoCo's loss, which
rises 8.5 % over its last quarter, as flat; a loss that rises is not flat either.) Part of any late fall is the cosine schedule's own end (the step
size goes to 0), so a budget where every method is flat by this rule is a conservative one. (CRD was first
left out of the rule: its loss rose as its memories filled. That was a flaw of our CRD, fixed in b560eda; its
loss now falls like the others' and is judged like them.) The table also gives each
run's final loss (mean of its last 10 % of steps) and its change from the next shorter budget probed: a
budget long enough for a method gains little over a shorter one.

Each finished run is written to benchmarks/results/fmnist_budget.json (and the table to fmnist_budget.md) at once; a re-run skips the runs that
file holds with the same settings, teacher and code, so the probe can span sittings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import fmnist  # noqa: E402
from pipeline.runtime.errors import CompressError  # noqa: E402

FLAT = 0.02  # the most a flat loss may move over its last quarter (relative)


def probe_run(study: fmnist.Study, method: str) -> fmnist.Run:
    first = study.s["students"][0]
    teacher = None if method in study.s["references"] else "ssl"
    return fmnist.Run(first, method, study.s["seeds"][0], teacher)


def settings(study: fmnist.Study, run: fmnist.Run, epochs: int) -> dict:
    """The study's settings for `run`, at `epochs`."""
    return {**study.run_settings(run), "epochs": epochs}


def identity(study: fmnist.Study, run: fmnist.Run, epochs: int) -> dict:
    return {"settings": settings(study, run, epochs), "teacher_sha256": (study.teacher_record(run.teacher) or {}).get("sha256")
            if run.teacher else None, "data": study.fingerprint()}


def train_one(study: fmnist.Study, run: fmnist.Run, epochs: int) -> dict:
    from pipeline.runtime.code_digest import code_digest
    from pipeline.runtime.provenance import machine, provenance
    from stages.train import train
    from stages.train_config import config_from_dict
    hp = settings(study, run, epochs)
    if run.teacher is not None:
        hp["cache"] = study.cache(run.teacher)
    out = study.work / "budget" / f"{run.name}-e{epochs}"
    cfg = config_from_dict({**hp, "data": study.data, "out": out, "tensorboard": True, "restart": "if-changed"})
    print(f"--- train {run.name} for {epochs} epochs", flush=True)
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    curve = fmnist.loss_curve(out)
    log = study._epochs(out)
    drop = curve.get("last_quarter_drop")
    return {"method": run.method, "epochs": epochs, "run": run.name, "identity": identity(study, run, epochs),
            "last_quarter_drop": drop, "flat": is_flat(drop),
            "loss_bins": curve.get("bins", []), "epoch_loss": [e.get("loss") for e in log],
            "train_wall_seconds": round(wall, 1),
            "img_per_s": round(sum(e["img_per_s"] for e in log) / max(1, len(log)), 1),
            "cpu": machine()["cpu"], "load_average": os.getloadavg(), "code_digest": code_digest(),
            "provenance": provenance({"probe": "fmnist_budget"})}


def is_flat(drop: float | None) -> bool | None:
    """Whether a loss that moved by `drop` (relative fall) over its last quarter is flat; None: no curve."""
    return None if drop is None else abs(drop) <= FLAT


def budget_by_method(rows: list[dict]) -> dict:
    """Per method: the shortest budget probed at which its loss is flat, or None (never flat)."""
    out = {}
    for r in sorted(rows, key=lambda r: r["epochs"]):
        out.setdefault(r["method"], None)
        if r["flat"] and out[r["method"]] is None:
            out[r["method"]] = r["epochs"]
    return out


def final_loss(row: dict) -> float | None:
    """The mean training loss over the run's last 10 % of steps (the last 4 of its 40 bins)."""
    bins = row.get("loss_bins") or []
    return sum(bins[-4:]) / 4 if len(bins) >= 40 else None


def table(rows: list[dict]) -> str:
    """Markdown: one line per (method, budget), budgets in order within each method."""
    lines = ["| method | epochs | last-quarter fall | flat (within 2 %) | final loss | vs the shorter budget | "
             "training s | img/s |", "|---|---|---|---|---|---|---|---|"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        prev = None
        for r in sorted((r for r in rows if r["method"] == method), key=lambda r: r["epochs"]):
            d, f = r["last_quarter_drop"], final_loss(r)
            change = "-" if prev is None or f is None else f"{100 * (f - prev) / abs(prev):+.1f} %"
            flat = "-" if r["flat"] is None else ("yes" if r["flat"] else "no")
            lines.append(f"| {method} | {r['epochs']} | {'-' if d is None else f'{100 * d:.1f} %'} | {flat} | "
                         f"{'-' if f is None else f'{f:.4f}'} | {change} | {r['train_wall_seconds']:.0f} | "
                         f"{r['img_per_s']:.0f} |")
            prev = f
    return "\n".join(lines) + "\n"


def write(path: Path, rows: list[dict]) -> None:
    fmnist._write_json(path, {"flat_within": FLAT, "flat_at": budget_by_method(rows), "runs": rows})
    cpus = sorted({r["cpu"] for r in rows})
    path.with_suffix(".md").write_text(
        "Generated by `.venv/bin/python benchmarks/fmnist_budget.py` from fmnist_budget.json: seed 0 of the "
        f"first student, SSL teacher (references without one), every setting but the budget the study's; CPU "
        f"{', '.join(cpus)}. The fall is from 65-75 % of the steps to the last 10 %; the final loss is the mean "
        "over the last 10 %.\n\n" + table(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", default="2,4,8", help="budgets to probe, comma-separated (default 2,4,8)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated; default every distillation method and both references")
    parser.add_argument("--work", type=Path, default=None, help="default: artifacts/fmnist (smoke: fmnist-smoke)")
    parser.add_argument("--smoke", action="store_true", help="1,000 images; writes only under --work")
    parser.add_argument("--table", action="store_true", help="train nothing: rewrite fmnist_budget.md from the JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = args.work or fmnist.REPO / "artifacts" / ("fmnist-smoke" if args.smoke else "fmnist")
    study = fmnist.Study(work, args.smoke)
    known = study.s["distill"] + study.s["references"]
    try:
        budgets = [int(e) for e in args.epochs.split(",")]
    except ValueError:
        sys.exit(f"Error: --epochs {args.epochs!r} is not a comma-separated list of whole numbers; e.g. 2,4,8")
    if not budgets or min(budgets) < 1:
        sys.exit(f"Error: --epochs {args.epochs!r} must name budgets of at least 1 epoch; e.g. 2,4,8")
    methods = known if args.methods is None else args.methods.split(",")
    unknown = [m for m in methods if m not in known]
    if unknown:
        sys.exit(f"Error: --methods names {', '.join(unknown)}, not a method of the study; use some of "
                 f"{', '.join(known)}")
    path = study.results / "fmnist_budget.json"
    if args.table:
        if not path.is_file():
            sys.exit(f"Error: {path} does not exist yet; run the probe first (without --table)")
        rows = json.loads(path.read_text())["runs"]
        for r in rows:  # judged again by the rule as it stands
            r["flat"] = is_flat(r["last_quarter_drop"])
        write(path, rows)
        print(path.with_suffix(".md").read_text())
        return
    try:
        study.prepare()
        study.require_teacher("ssl")
        old = json.loads(path.read_text())["runs"] if path.is_file() else []
        for epochs in budgets:  # the shorter budgets first: a probe cut short still says the most
            for method in methods:
                run = probe_run(study, method)
                same = [r for r in old if r["method"] == method and r["epochs"] == epochs
                        and r["identity"] == identity(study, run, epochs)]
                if same:
                    continue
                row = train_one(study, run, epochs)
                old = [r for r in old if (r["method"], r["epochs"]) != (method, epochs)] + [row]
                old.sort(key=lambda r: (r["epochs"], known.index(r["method"])))
                write(path, old)
                d = row["last_quarter_drop"]
                print(f"    {method} at {epochs} epochs: last-quarter fall "
                      f"{'-' if d is None else f'{100 * d:.1f} %'} ({row['train_wall_seconds']:.0f} s)", flush=True)
    except CompressError as e:
        sys.exit(f"Error: {e}")
    print(f"flat (moves within {100 * FLAT:.0f} %) from: "
          + ", ".join(f"{m} {'-' if e is None else e}" for m, e in budget_by_method(old).items()))


if __name__ == "__main__":
    main()
