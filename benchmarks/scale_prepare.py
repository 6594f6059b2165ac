"""Scale, part `prepare`: does it run in memory independent of N? Peak RSS at 4N images over N, same run.

Each `prepare` runs in its own subprocess, which reports its peak RSS (`ru_maxrss` of itself, and of its
largest decoding worker) after the run. Sources are synthetic: an ImageFolder tree of PNG files (the decode
path) and an HDF5 file (the read path), N and 4N images each, small windows (`--block`) so that both N and 4N
span many of them. The projection to 1.28 M and 13 M images extrapolates the measured per-image slope of RSS
(what grows with N: ids, labels, the listing) and the measured time per image, scaled by pixels per image.

    python benchmarks/scale.py --parts prepare    # ~2 minutes on 2 cores; into benchmarks/results/scale.json
    python benchmarks/scale_prepare.py            # this part alone; prints its JSON
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

_CHILD = """
import resource, sys
from pathlib import Path
from stages.prepare import PrepareConfig, prepare
kind, src, out, block, workers = sys.argv[1:6]
prepare(PrepareConfig(dataset=kind, source=Path(src), out=Path(out), block=int(block), workers=int(workers)))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _folder(root: Path, n: int, px: int) -> Path:
    rng = np.random.default_rng(0)
    for k in range(n):
        d = root / f"c{k % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)).save(d / f"{k:07d}.png", compress_level=1)
    return root


def _h5(path: Path, n: int, px: int) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        d = f.create_dataset("images", (n, px, px, 3), np.uint8)
        for lo in range(0, n, 4096):
            d[lo:lo + 4096] = rng.integers(0, 256, (min(4096, n - lo), px, px, 3), dtype=np.uint8)
        f["labels"] = rng.integers(0, 1000, n)
    return path


def _run(kind: str, src: Path, out: Path, block: int, workers: int) -> dict:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _CHILD, kind, str(src), str(out), str(block), str(workers)],
                       capture_output=True, text=True, check=True)
    main_kb, worker_kb = map(int, r.stdout.split()[-2:])
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": main_kb / 1024, "worker_peak_rss_mb": worker_kb / 1024}


def _project(n_small: int, small: dict, n_big: int, big: dict, px: int, workers: int) -> dict:
    """RAM: the measured peak plus the measured per-image slope; disk: store + spool; time: seconds per image,
    scaled by pixels to 256 px (decoding cost grows roughly with pixels: a rough figure)."""
    slope_mb = max(0.0, (big["peak_rss_mb"] - small["peak_rss_mb"]) / (n_big - n_small))
    per_image_s = big["seconds"] / n_big
    out = {}
    for label, n in (("1.28M", 1_281_167), ("13M", 13_000_000)):
        row = 256 * 256 * 3
        out[label] = {"px": 256, "ram_gb_main": (big["peak_rss_mb"] + slope_mb * (n - n_big)) / 1024,
                      "disk_gb_store": n * row / 1e9, "disk_gb_peak_with_spool": 2 * n * row / 1e9,
                      f"hours_on_{workers}_workers_here": per_image_s * n * (256 / px) ** 2 / 3600}
    return {"rss_slope_kb_per_image": slope_mb * 1024, **out}


def measure(work: Path, quick: bool = False, n: int = 2000, px: int = 64, block: int = 256,
            workers: int = 2) -> dict:
    """`prepare` from an ImageFolder source (N, 4N) and an HDF5 one (10 N, 40 N) in subprocesses, under `work`."""
    n = 500 if quick else n
    result = {"px": px, "block": block, "workers": workers}
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp = Path(tmp)
        for kind, m0 in (("imagefolder", n), ("hdf5", 10 * n)):
            runs = {}
            for m in (m0, 4 * m0):
                src = _folder(tmp / f"src{m}", m, px) if kind == "imagefolder" else _h5(tmp / f"src{m}.h5", m, px)
                runs[m] = _run(kind, src, tmp / f"out-{kind}{m}", block, workers)
                print("prepare", kind, m, runs[m], flush=True)
            result[kind] = {"n": m0, "runs": {str(k): v for k, v in runs.items()},
                            "prepare_rss_4N_over_N": runs[4 * m0]["peak_rss_mb"] / runs[m0]["peak_rss_mb"],
                            "projection_256px": _project(m0, runs[m0], 4 * m0, runs[4 * m0], px, workers)}
    result["prepare_rss_4N_over_N"] = max(result[k]["prepare_rss_4N_over_N"] for k in ("imagefolder", "hdf5"))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("artifacts/scale"))
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(measure(a.work, a.quick), indent=2))


if __name__ == "__main__":
    main()
