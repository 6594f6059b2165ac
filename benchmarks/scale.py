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


if __name__ == "__main__":
    main()
