"""Evaluation's peak host RAM over the size of its feature matrix, on synthetic fp16 features; projected to
ImageNet (1.28 M x 2048) and ImageNet-21k (13 M x 2048). The `eval` part of benchmarks/scale.py.

    .venv/bin/python benchmarks/scale_eval.py                 # 300 k x 512 (307 MB of fp16), ~5 min on 2 cores
    .venv/bin/python benchmarks/scale_eval.py --quick         # 20 k x 64: checks the script, proves nothing
    .venv/bin/python benchmarks/scale_eval.py --old           # also the code before the fp16 matrix (slower)

What runs is the code `compress-cache eval` runs after embedding: the fp16 matrix read from a stored
`NAME.features.npy` into the layout of an interleaved split (one val row in every 60, so rows are reordered),
then `pipeline.evaluation.scoring.evaluate_features` on its train / val views (NN + kNN-20, the cached linear
probe, CA), on the CPU. It runs in a child process that reports its RSS after imports (the baseline) and after
each part; a launcher process between this one and the child reads the child's peak with
getrusage(RUSAGE_CHILDREN), so the number is the child's alone whoever calls `measure`. The baseline is taken
after the imports, including those the optimiser makes lazily at its first step (torch._dynamo and ~900 other
modules, ~160 MB whatever the data); both baselines are recorded. The child leaves with os._exit once it has
reported: the interpreter's teardown of torch alone raises the peak by ~130 MB.

    eval_peak_rss_over_features = (peak RSS - baseline RSS after imports) / bytes of the fp16 feature matrix

The matrix itself is inside the peak, so 1.0 is the floor. The probe runs `probe_epochs` epochs (its memory
does not depend on their number; the protocol's 40 are projected); CA runs its 20 iterations with k = classes.
Projections scale the measured per-part rates (multiply-adds per second) to the target sizes on this machine,
and take the peak as the measured ratio times the target's matrix (an upper bound: the block buffers are fixed
in size, so the ratio falls as N grows). GPU paths are not measured here.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "scale_eval.json"
SIZES = {  # n (train + val), dim, val (every n/val-th row), classes, probe epochs
    "full": {"n": 300_000, "dim": 512, "val": 5_000, "classes": 100, "probe_epochs": 2},
    "quick": {"n": 20_000, "dim": 64, "val": 1_000, "classes": 10, "probe_epochs": 1},
}
TARGETS = {  # what is projected: ImageNet-1k and ImageNet-21k (fall 2011, 21,841 classes) at ResNet-50 width
    "1.28M": {"train": 1_281_167, "val": 50_000, "dim": 2048, "classes": 1000},
    "13M": {"train": 13_000_000, "val": 50_000, "dim": 2048, "classes": 21_841},
}
PROTOCOL_EPOCHS = 40
NOISE = 4.0  # per-dimension noise around unit-variance class centres: the protocols land well below 100 %
THREADS = 2


# ---------------------------------------------------------------- synthetic data (parent)

def synthetic(work: Path, s: dict) -> tuple[Path, Path]:
    """Class-structured unit features (a class centre plus noise), fp16, in store order, and the labels and
    split; written block by block, reused when present."""
    feats = work / f"features_{s['n']}x{s['dim']}_noise{NOISE:g}.npy"
    meta = work / f"labels_{s['n']}x{s['dim']}_{s['val']}_{s['classes']}_noise{NOISE:g}.npz"
    if feats.is_file() and meta.is_file():
        return feats, meta
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((s["classes"], s["dim"]), dtype=np.float32)
    labels = rng.integers(0, s["classes"], s["n"])
    split = np.zeros(s["n"], dtype=np.uint8)
    split[:: s["n"] // s["val"]] = 1  # val rows interleaved with train rows
    out = np.lib.format.open_memmap(feats.with_suffix(".tmp.npy"), mode="w+", dtype=np.float16,
                                    shape=(s["n"], s["dim"]))
    for lo in range(0, s["n"], 65536):
        y = labels[lo:lo + 65536]
        z = centres[y] + NOISE * rng.standard_normal((len(y), s["dim"]), dtype=np.float32)
        out[lo:lo + len(y)] = z / np.linalg.norm(z, axis=1, keepdims=True)
    out.flush()
    del out
    feats.with_suffix(".tmp.npy").replace(feats)
    np.savez(meta, labels=labels, split=split)
    return feats, meta


# ---------------------------------------------------------------- the measured child

def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def child(features_path: str, meta_path: str, s: dict, old: bool) -> dict:
    """Imports, baseline, the matrix, then evaluate_features with each protocol timed; JSON on stdout."""
    import torch
    torch.set_num_threads(THREADS)
    from pipeline.evaluation import scoring  # with everything it imports, before the baseline
    import faiss
    faiss.omp_set_num_threads(THREADS)
    meta = np.load(meta_path)
    labels, split = meta["labels"], meta["split"]
    train, val = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
    imported = _rss_mb()
    # the optimiser's first step imports ~900 more modules (torch._dynamo and friends, ~160 MB) whatever the data
    # size: a library's fixed cost, taken before the baseline as the other imports are
    head = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    head(torch.zeros(3, 4)).sum().backward()
    opt.step()
    base = {"rss_mb": _rss_mb(), "peak_mb": _peak_mb(), "rss_mb_before_lazy_imports": imported}
    parts, t0 = {}, time.perf_counter()
    if old:  # the code before: a float32 copy of the fp16 file, then x[train] and x[val] copies
        x = np.load(features_path).astype(np.float32)
        train_x, val_x = x[train], x[val]
    else:
        from pipeline.evaluation import features
        from pipeline.evaluation.features import Layout
        layout = Layout.of(train, val, len(split))
        x = features.load(features_path, layout)
        train_x, val_x = layout.train_rows(x), layout.val_rows(x)
    parts["load"] = {"seconds": time.perf_counter() - t0, "rss_mb": _rss_mb(), "peak_mb": _peak_mb()}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            parts[name] = {"seconds": time.perf_counter() - t, "rss_mb": _rss_mb(), "peak_mb": _peak_mb()}
            return out
        return wrapper
    scoring.knn_classify = timed("knn", scoring.knn_classify)
    scoring.train_probe = timed("probe", scoring.train_probe)
    scoring.cluster_assignment = timed("ca", scoring.cluster_assignment)
    t = time.perf_counter()
    result = scoring.evaluate_features(train_x, labels[train], val_x, labels[val], s["classes"],
                                       probe_epochs=s["probe_epochs"], seed=0, device="cpu")
    seconds = time.perf_counter() - t
    return {"baseline": base, "parts": parts, "evaluate_seconds": seconds, "peak_mb": _peak_mb(),
            "own_children_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "matrix_bytes": int(x.nbytes) if not old else int(len(split) * s["dim"] * 2),
            "metrics": {k: result[k] for k in ("nn", "knn20", "linear", "ca")}, "package": scoring.__file__,
            "libraries": {"knn": result["protocols"]["knn"].get("library", "faiss"),
                          "ca": result["protocols"]["ca"].get("library", "faiss")}}


def launch(argv: list[str]) -> dict:
    """Run the child and read its peak from RUSAGE_CHILDREN: this process has no other children."""
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the measured child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["children_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def run(features_path: Path, meta_path: Path, s: dict, old: bool, pythonpath: str | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    argv = [str(Path(features_path).resolve()), str(Path(meta_path).resolve()), json.dumps(s)] + (["--old"] if old else [])
    script = Path(pythonpath) / "benchmarks" / "scale_eval.py" if pythonpath else Path(__file__)
    proc = subprocess.run([sys.executable, str(script), "--launch", *argv], capture_output=True, text=True, env=env,
                          cwd=pythonpath or Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise SystemExit(f"the launcher failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["ratio"] = (out["children_peak_mb"] - out["baseline"]["rss_mb"]) * 2**20 / out["matrix_bytes"]
    out["ratio_from_plain_imports"] = ((out["children_peak_mb"] - out["baseline"]["rss_mb_before_lazy_imports"])
                                       * 2**20 / out["matrix_bytes"])
    return out


# ---------------------------------------------------------------- projections

def project(s: dict, r: dict) -> dict:
    """Per-part rates measured here, scaled to the targets; peak = ratio x matrix.

    NN / kNN and CA scale by their multiply-adds (train x val x D; train x k x D x 20). The probe's step here is
    small (D x classes) and its time mostly per-row overhead, so it is projected as the larger of the measured
    rows per second and its three products (forward, two backward: 3 x train x D x classes per epoch) at the
    search's measured multiply-add rate."""
    n_train, n_val = s["n"] - s["val"], s["val"]
    p = r["parts"]
    rates = {"knn_mac": n_train * n_val * s["dim"] / p["knn"]["seconds"],
             "ca_mac": n_train * s["classes"] * s["dim"] * 20 / p["ca"]["seconds"],
             "probe_rows": n_train * s["probe_epochs"] / p["probe"]["seconds"]}
    out = {"rates_here": {"knn_gmac_per_s": rates["knn_mac"] / 1e9, "ca_gmac_per_s": rates["ca_mac"] / 1e9,
                          "probe_rows_per_s": rates["probe_rows"]}}
    for name, t in TARGETS.items():
        matrix = (t["train"] + t["val"]) * t["dim"] * 2
        probe_rows = t["train"] * PROTOCOL_EPOCHS / rates["probe_rows"]
        probe_macs = 3 * t["train"] * t["dim"] * t["classes"] * PROTOCOL_EPOCHS / rates["knn_mac"]
        seconds = {"knn": t["train"] * t["val"] * t["dim"] / rates["knn_mac"],
                   "probe_40_epochs": max(probe_rows, probe_macs),
                   "ca": t["train"] * t["classes"] * t["dim"] * 20 / rates["ca_mac"]}
        out[name] = {**t, "features_gb": matrix / 1e9, "peak_ram_gb_at_measured_ratio": matrix * r["ratio"] / 1e9,
                     "hours_on_this_machine": {k: v / 3600 for k, v in seconds.items()},
                     "hours_total_on_this_machine": sum(seconds.values()) / 3600}
    return out


def measure(work: Path, quick: bool = False, old: bool = False) -> dict:
    """The eval part's figures: eval_peak_rss_over_features (goal <= 1.5), per-part times and RSS, projections."""
    s = SIZES["quick" if quick else "full"]
    work = Path(work).resolve()
    load = os.getloadavg()
    features_path, meta_path = synthetic(work, s)
    new = run(features_path, meta_path, s, old=False)
    result = {"sizes": s, "features_bytes": new["matrix_bytes"], "threads": THREADS, "device": "cpu",
              "loadavg_before": load, "loadavg_after": os.getloadavg(),
              "eval_peak_rss_over_features": new["ratio"], "new": new, "projection": project(s, new),
              "gpu": "not measured: this machine has no GPU (faiss-gpu / torch-on-GPU paths are untested here)"}
    if old:
        result["old"] = _old(work, features_path, meta_path, s)
    return result


def _old(work: Path, features_path: Path, meta_path: Path, s: dict) -> dict:
    """The same measurement on the code before the fp16 matrix (the parent of the first bounded-memory commit)."""
    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "f24ff35^"], capture_output=True, text=True, cwd=root).stdout.strip()
    tree = work / f"old_{commit[:8]}"
    if not tree.is_dir():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit, "pipeline"], capture_output=True,
                                 cwd=root, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        (tree / "benchmarks").mkdir(exist_ok=True)
    (tree / "benchmarks" / "scale_eval.py").write_text(Path(__file__).read_text())  # this harness, old package
    out = run(features_path, meta_path, s, old=True, pythonpath=str(tree))
    out["commit"] = commit
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("artifacts/scale/eval"), help="synthetic features (reused)")
    ap.add_argument("--quick", action="store_true", help="small sizes, into results/scale_eval_quick.json")
    ap.add_argument("--old", action="store_true", help="also measure the code before the fp16 matrix")
    a = ap.parse_args()
    t = time.perf_counter()
    result = {"command": " ".join([".venv/bin/python", "benchmarks/scale_eval.py", *sys.argv[1:]]),
              **measure(a.work, a.quick, a.old), "seconds": time.perf_counter() - t}
    out = RESULTS.with_name("scale_eval_quick.json") if a.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"eval_peak_rss_over_features {result['eval_peak_rss_over_features']:.3f} "
          f"(features {result['features_bytes'] / 2**20:.0f} MiB) -> {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        print(json.dumps(child(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), "--old" in sys.argv[5:])),
              flush=True)
        os._exit(0)  # skip the interpreter's teardown: unloading torch adds ~130 MB of RSS that is not evaluation's
    elif len(sys.argv) > 1 and sys.argv[1] == "--launch":
        print(json.dumps(launch(sys.argv[2:])))
    else:
        main()
