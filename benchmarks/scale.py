"""Does compress-cache fit ImageNet (1.28 M images) and ImageNet-21k (13 M)? Measured here on synthetic stores
and caches large enough to take the paths a large dataset takes, as ratios within one run, then projected.

One part per stage, each in its own file with a `measure(work, quick) -> dict`:

    prepare  benchmarks/scale_prepare.py  peak RSS of `prepare` at 4N images over N            goal <= 1.2
    loader   benchmarks/scale_loader.py   paged loader bytes/s over a cold sequential read     goal >= 0.8
                                          in-RAM batches over copying the same bytes           goal >= 0.5
    cache    benchmarks/scale_cache.py    node memory of two ranks holding the cache over one  goal <= 1.3
    eval     benchmarks/scale_eval.py     evaluation's peak RSS over the feature matrix        goal <= 1.5

    python benchmarks/scale.py                       # every part (~20 minutes on 2 cores)
    python benchmarks/scale.py --parts loader,eval   # some parts; the others' results are kept as they were
    python benchmarks/scale.py --table               # the README's scale table from the JSON, nothing measured

Everything goes to benchmarks/results/scale.json; each part records its own command, commit, time, load
average and duration, so parts measured in different runs say so. Synthetic data lives under --work
(default artifacts/scale, not committed) and is reused by later runs.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
from pipeline.runtime.provenance import provenance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
PARTS = ("prepare", "loader", "cache", "eval")
# ratio -> (part, comparison, bound): the goals
GOALS = {
    "prepare_rss_4N_over_N": ("prepare", "<=", 1.2),
    "loader_paged_over_raw_read": ("loader", ">=", 0.8),
    "loader_ram_over_memcpy": ("loader", ">=", 0.5),
    "cache_rss_two_ranks_over_one": ("cache", "<=", 1.3),
    "eval_peak_rss_over_features": ("eval", "<=", 1.5),
}


def summary(parts: dict) -> dict:
    """Each goal's measured ratio and whether it is met (None: its part has not been measured)."""
    out = {}
    for name, (part, op, bound) in GOALS.items():
        value = parts.get(part, {}).get(name)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        out[name] = {"value": value, "goal": f"{op} {bound}", "met": met,
                     "measured": parts.get(part, {}).get("run", {}).get("created")}
    return out


def table(result: dict) -> str:
    rows = ["| ratio | measured | goal | met | part measured at |", "|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        value = "not measured" if s["value"] is None else f"{s['value']:.3g}"
        rows.append(f"| `{name}` | {value} | {s['goal']} | {'-' if s['met'] is None else 'yes' if s['met'] else 'no'}"
                    f" | {s['measured'] or '-'} |")
    return "\n".join(rows)


GPU_STEP = Path(__file__).resolve().parent / "results" / "train_step_gpu_224px.json"  # one H200, 224 px, bf16
SIZES = {"1.28M": 1_281_167, "13M": 13_000_000}


def _h(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def needs(parts: dict) -> str:
    """What each stage needs at 1.28 M and 13 M images (256 px store, ResNet-50 teacher with 2048-d rows,
    4 views, ResNet-18 student at 224 px), from the parts' projections and the H200 train-step benchmark.
    'here' is this 2-core machine; 'one H200' divides the images by the rate measured on one H200 (an 8-GPU
    node: divide by 8, if the loader keeps up - see the loader rows)."""
    gpu = json.loads(GPU_STEP.read_text())["results"]["resnet18"]["img_per_s"] if GPU_STEP.is_file() else None
    pre = parts.get("prepare", {}).get("imagefolder", {}).get("projection_256px", {})
    cache = parts.get("cache", {}).get("projection", {})
    loader = parts.get("loader", {}).get("projection_256px", {})
    ev = parts.get("eval", {}).get("projection", {})
    rows = ["| stage: what | 1.28 M (ImageNet) | 13 M (ImageNet-21k) |", "|---|---|---|"]

    def row(label, fn):
        try:
            rows.append(f"| {label} | {fn('1.28M')} | {fn('13M')} |")
        except (KeyError, TypeError):
            rows.append(f"| {label} | not measured | not measured |")
    row("prepare: disk (store; peak with its spool)",
        lambda k: f"{pre[k]['disk_gb_store']:.0f} GB; {pre[k]['disk_gb_peak_with_spool']:.0f} GB")
    row("prepare: RAM (main process)", lambda k: f"{pre[k]['ram_gb_main']:.1f} GB")
    row("prepare: time here (2 decode workers; 64 px PNG decoding scaled by pixels: rough)",
        lambda k: _h(pre[k]["hours_on_2_workers_here"] * 3600))
    row("extract: cache on disk (4 views x 2048-d fp16)", lambda k: f"{cache[k + '_4views_2048d']['cache_gb']:.0f} GB")
    row("extract: time on one H200 (ResNet-50 forward, 4 views)",
        lambda k: _h(4 * SIZES[k] / gpu["teacher"]) if gpu else "-")
    row("train: teacher rows, node RAM with 8 ranks (one shared copy; a copy each)",
        lambda k: f"{cache[k + '_4views_2048d']['node_gb_8_ranks_one_shared_copy']:.0f} GB; "
                  f"{cache[k + '_4views_2048d']['node_gb_8_ranks_a_copy_each']:.0f} GB "
                  f"(`auto` on an H200: {cache[k + '_4views_2048d']['h200_auto']})")
    rates256 = parts.get("loader", {}).get("256px", {}).get("bytes_per_s", {})
    row("train: one epoch of images here, loader in RAM / paged / the disk's raw read (plain; O_DIRECT)",
        lambda k: " / ".join(_h(loader[m][k]["epoch_seconds"]) for m in ("ram", "paged", "raw_read"))
        + f"; {_h(SIZES[k] * 256 * 256 * 3 / rates256['raw_read_uncached']['median'])}")
    row("train: one epoch on one H200 (ResNet-18 compress step)", lambda k: _h(SIZES[k] / gpu["cached"]) if gpu else "-")
    row("eval: features (fp16); peak host RAM", lambda k: f"{ev[k]['features_gb']:.1f} GB; "
                                                        f"{ev[k]['peak_ram_gb_at_measured_ratio']:.1f} GB")
    row("eval: time here (NN + kNN, CA, probe 40 epochs)",
        lambda k: ", ".join(_h(ev[k]["hours_on_this_machine"][p] * 3600) for p in ("knn", "ca", "probe_40_epochs")))
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--work", type=Path, default=Path("artifacts/scale"), help="synthetic data (reused)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes, into results/scale_quick.json: checks the script, proves nothing")
    ap.add_argument("--table", action="store_true", help="print the table from the JSON; measure nothing")
    a = ap.parse_args()
    path = RESULTS.with_name("scale_quick.json") if a.quick else RESULTS  # a quick run never replaces results
    result = json.loads(path.read_text()) if path.is_file() else {}
    parts = result.get("parts", {})
    if not a.table:
        chosen = [p.strip() for p in a.parts.split(",") if p.strip()]
        unknown = [p for p in chosen if p not in PARTS]
        if unknown:
            sys.exit(f"error: unknown part(s) {', '.join(unknown)}; use some of {', '.join(PARTS)}")
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # the part modules beside this file
        for part in chosen:
            work = a.work / part
            work.mkdir(parents=True, exist_ok=True)
            load, t = os.getloadavg(), time.perf_counter()
            measured = importlib.import_module(f"scale_{part}").measure(work, quick=a.quick)
            measured["run"] = {**provenance(vars(a)), "quick": a.quick, "seconds": time.perf_counter() - t,
                               "loadavg_before": load, "loadavg_after": os.getloadavg()}
            parts[part] = measured
            result = {"parts": parts, "summary": summary(parts)}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2) + "\n")  # after every part: a later failure keeps it
            print(part, {k: v for k, v in measured.items() if k in GOALS}, flush=True)
    result = {"parts": parts, "summary": summary(parts)}
    print(table(result))
    print()
    print(needs(parts))


if __name__ == "__main__":
    main()
