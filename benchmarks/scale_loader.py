"""Scale, part `loader`: can the loader feed a GPU from a store larger than its RAM budget, and from RAM?

Two ratios, each measured in the same run, rounds alternating A B A B on a shared machine (medians kept):

    loader_paged_over_raw_read   bytes/s of the paged loader over one epoch (every block read past the page
                                 cache (O_DIRECT, its default) and checked against its sha256, batches
                                 gathered in the read-ahead thread) over bytes/s of a plain sequential read of
                                 the same images.h5 (os.readv, 16 MiB), both from a cold page cache: the file
                                 is evicted (posix_fadvise DONTNEED) before each, and the eviction is checked
                                 by timing a warm read against a cold one. Beside them: the same loader
                                 reading through the page cache (--loader-io buffered), and the disk's
                                 ceiling for the loader's way of reading (`raw_read_uncached`: the file in
                                 order by O_DIRECT, 16 MiB pieces, as many in flight as the loader has
                                 readers, nothing checked or gathered).
    loader_ram_over_memcpy       bytes/s of in-RAM batches (np.take into reused buffers, in the thread) over
                                 np.copyto of the same number of bytes, in batch-size pieces read in order
                                 from a source as large as the loader's in-RAM copy into reused buffers: both
                                 read from memory, not from the CPU cache. (Until 2026-12-02 the source was
                                 four batch-size buffers, which at 64 px (3 MiB batches, 24 MiB in all) stay
                                 in a 32 MiB L3 cache while the loader's 0.5 GB copy cannot; that figure is
                                 still recorded, as `memcpy_cache_resident`.) The loader runs with its
                                 default in-RAM builders (two threads on this 2-core machine); beside it the
                                 loader with one builder, and the same copy done by two threads, each taking
                                 every other piece (`memcpy_two_threads`), the copy two builders compare with.

Beside each paged pass and raw read, `cores_busy`: the process's CPU time over the wall time (2.0 is both
cores of this machine), which says whether the pass was bound by the CPU or by the disk.

The store is synthetic (random pixels written by the store writer `prepare` uses, so the same layout, block
checksums and fingerprint), built once under --work and reused: at 64 px, larger than the loader budget the
paged run is given (`memory_limit`, as --loader-memory does), and a smaller 256 px one. The consumer does
nothing with a batch: these are the loader's own rates, the ceiling it offers a training step. The loader
of the previous commit (git HEAD of pipeline/data/loader.py before issue 17, `--old-loader REV`) is timed
beside it when given. Projections: one epoch at 1.28 M and 13 M images of 256 px at the measured rates.

    python benchmarks/scale_loader.py                 # ~1.6 GB + 0.8 GB of stores under artifacts/scale/loader
    python benchmarks/scale_loader.py --quick         # small stores: checks the script, proves nothing
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
from pipeline.data.imagestore import ImageStore, write_image_store  # noqa: E402
from pipeline.data.loader import BatchLoader  # noqa: E402
from pipeline.data.storereader import aligned_empty  # noqa: E402
from pipeline.runtime.provenance import provenance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scale_loader.json"
IMAGENET, IMAGENET21K, PX256 = 1_281_167, 13_000_000, 256 * 256 * 3


class _Synthetic:
    """Random uint8 rows made on demand, slice by slice: a source the store writer reads ~64 MiB at a time."""

    def __init__(self, n: int, px: int):
        self.shape, self.dtype = (n, px, px, 3), np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, s: slice) -> np.ndarray:
        lo, hi, _ = s.indices(self.shape[0])
        return np.random.default_rng(lo).integers(0, 256, (hi - lo,) + self.shape[1:], dtype=np.uint8)


def build(root: Path, n: int, px: int) -> ImageStore:
    """A store of n random px-pixel images (all train), built once and reused."""
    if not (root / "manifest.json").is_file():
        t = time.perf_counter()
        write_image_store(root, _Synthetic(n, px), np.arange(n) % 1000, np.zeros(n, np.uint8),
                          [f"synthetic/{i:08d}" for i in range(n)], dataset="synthetic",
                          classes=[str(c) for c in range(1000)], source="benchmarks/scale_loader.py")
        print(f"built {root} ({n} x {px} px) in {time.perf_counter() - t:.0f} s", flush=True)
    return ImageStore(root)


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (clean pages go at once), so the next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def raw_read(path: Path, limit: int | None = None) -> tuple[int, float]:
    """(bytes, seconds) of a plain sequential read of the file (the first `limit` bytes), 16 MiB at a time."""
    buf = bytearray(16 << 20)
    view, done = memoryview(buf), 0
    fd = os.open(path, os.O_RDONLY)
    t = time.perf_counter()
    try:
        size = os.fstat(fd).st_size if limit is None else limit
        while done < size:
            got = os.readv(fd, [view[:min(len(buf), size - done)]])
            if got == 0:
                break
            done += got
    finally:
        os.close(fd)
    return done, time.perf_counter() - t


def raw_read_uncached(path: Path, threads: int) -> tuple[int, float]:
    """(bytes, seconds) of reading the whole file past the page cache (O_DIRECT), in order, 16 MiB pieces,
    `threads` reads in flight: what the disk gives the loader's way of reading, with no check and no gather."""
    piece, local = 16 << 20, threading.local()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)

    def read(offset: int) -> int:
        if not hasattr(local, "buf"):
            local.buf = aligned_empty((piece,))
        return os.preadv(fd, [local.buf], offset)

    t = time.perf_counter()
    try:
        with ThreadPoolExecutor(threads) as pool:
            done = sum(pool.map(read, range(0, os.fstat(fd).st_size, piece)))
    finally:
        os.close(fd)
    return done, time.perf_counter() - t


def loader_pass(loader, epochs: int = 1) -> tuple[int, float]:
    """(bytes, seconds) of iterating the loader's first `epochs` epochs."""
    t, done = time.perf_counter(), 0
    for e in range(epochs):
        for _, images in loader.epoch(e):
            done += images.numel()
    return done, time.perf_counter() - t


def memcpy_pass(nbytes: int, batch_bytes: int, source_bytes: int | None = None,
                threads: int = 1) -> tuple[int, float]:
    """(bytes, seconds) of copying `nbytes` as np.copyto of contiguous `batch_bytes` pieces into four reused
    buffers (touched first, as the loader's reused buffers are). The pieces are read in order from a source of
    `source_bytes` (the loader's in-RAM copy's size, so from memory); without it, from four batch-size buffers
    (cache-resident when they fit in the CPU's cache). With `threads`, thread i copies the pieces k with
    k % threads == i into four buffers of its own: the copy that many loader builders are held to."""
    count = 4 if source_bytes is None else max(1, source_bytes // batch_bytes)
    src = np.random.default_rng(0).integers(0, 256, count * batch_bytes, dtype=np.uint8)
    dst = [[np.empty(batch_bytes, np.uint8) for _ in range(4)] for _ in range(threads)]
    for own in dst:  # touched before the clock starts
        for k, d in enumerate(own):
            np.copyto(d, src[(k % count) * batch_bytes:(k % count + 1) * batch_bytes])
    pieces = -(-nbytes // batch_bytes)

    def copy(i: int) -> int:
        for k in range(i, pieces, threads):
            lo = ((k + 1) % count) * batch_bytes
            np.copyto(dst[i][k % 4], src[lo:lo + batch_bytes])
        return len(range(i, pieces, threads)) * batch_bytes

    t = time.perf_counter()
    if threads == 1:
        done = copy(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            done = sum(pool.map(copy, range(threads)))
    return done, time.perf_counter() - t


def sha256_pass(nbytes: int, block: int) -> tuple[int, float]:
    """(bytes, seconds) of hashing `nbytes` in `block`-byte pieces from memory, on one core: the ceiling of any
    read that checks every block on one thread."""
    import hashlib
    data = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8)
    t, done = time.perf_counter(), 0
    while done < nbytes:
        for lo in range(0, len(data), block):
            hashlib.sha256(data[lo:lo + block]).digest()
        done += len(data)
    return done, time.perf_counter() - t


def old_loader(rev: str):
    """BatchLoader as it was at git revision `rev` (a module made from its source), or None."""
    try:
        src = subprocess.run(["git", "show", f"{rev}:pipeline/data/loader.py"], capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("old_loader")
    exec(compile(src, f"{rev}:pipeline/data/loader.py", "exec"), module.__dict__)
    return module.BatchLoader


def _rate(pair: tuple[int, float]) -> float:
    return pair[0] / pair[1]


def _with_cores(fn, busy: list[float]):
    """fn()'s result; appends the cores this process kept busy meanwhile (user + system CPU time / wall)."""
    t0, c0 = time.perf_counter(), os.times()
    out = fn()
    c1, wall = os.times(), time.perf_counter() - t0
    busy.append((c1.user - c0.user + c1.system - c0.system) / wall)
    return out


def measure_store(store: ImageStore, batch: int, rounds: int, ram_rows: int, old=None) -> dict:
    path = store.root / "images.h5"
    size = path.stat().st_size
    idx = np.arange(store.n)
    row_bytes = int(np.prod(store.shape[1:]))
    # the eviction works: a warm read of 256 MiB against the same read after evicting
    probe = min(size, 256 << 20)
    raw_read(path, probe)
    warm = _rate(raw_read(path, probe))
    evict(path)
    cold = _rate(raw_read(path, probe))
    budget = store.n * row_bytes // 2  # the paged path, as --loader-memory below the store forces it
    paged = BatchLoader(store, idx, batch, seed=0, memory_limit=budget, pin_memory=False)
    buffered = BatchLoader(store, idx, batch, seed=0, memory_limit=budget, pin_memory=False, uncached=False)
    assert not paged.in_memory and paged.uncached and not buffered.in_memory
    rates: dict[str, list[float]] = {}
    cores: dict[str, list[float]] = {"raw_read": [], "loader_paged": [], "loader_paged_buffered": [],
                                     "raw_read_uncached": []}
    for _ in range(rounds):  # A B C D A B C D: raw read, the loader (uncached, its default), buffered, raw
        evict(path)
        rates.setdefault("raw_read", []).append(_rate(_with_cores(lambda: raw_read(path), cores["raw_read"])))
        evict(path)
        rates.setdefault("loader_paged", []).append(_rate(_with_cores(lambda: loader_pass(paged),
                                                                      cores["loader_paged"])))
        evict(path)
        rates.setdefault("loader_paged_buffered", []).append(_rate(_with_cores(
            lambda: loader_pass(buffered), cores["loader_paged_buffered"])))
        evict(path)
        rates.setdefault("raw_read_uncached", []).append(_rate(_with_cores(
            lambda: raw_read_uncached(path, paged.readers), cores["raw_read_uncached"])))
        rates.setdefault("sha256_one_core", []).append(_rate(sha256_pass(256 << 20, store.block_rows * row_bytes)))
        if old is not None:
            evict(path)
            rates.setdefault("old_loader_paged", []).append(_rate(loader_pass(
                old(store, idx, batch, seed=0, in_memory=False, pin_memory=False))))
    # in RAM: a subset of rows the size the budget allows here, gathered by random permutation
    sub = idx[:ram_rows]
    ram = BatchLoader(store, sub, batch, seed=0, in_memory=True, pin_memory=False)  # its default builders
    ram1 = BatchLoader(store, sub, batch, seed=0, in_memory=True, pin_memory=False, builders=1)
    old_ram = old(store, sub, batch, seed=0, in_memory=True, pin_memory=False) if old is not None else None
    nb = len(ram)
    epochs = max(1, -(-(2 << 30) // (nb * batch * row_bytes)))  # about 2 GiB of batches per timed pass
    loader_pass(ram)  # warm-up: the batch buffers are allocated (and first touched) once, then reused
    loader_pass(ram1)
    for _ in range(rounds):
        got = loader_pass(ram, epochs)
        rates.setdefault("loader_ram", []).append(_rate(got))
        rates.setdefault("memcpy", []).append(_rate(memcpy_pass(got[0], batch * row_bytes, len(sub) * row_bytes)))
        rates.setdefault("memcpy_cache_resident", []).append(_rate(memcpy_pass(got[0], batch * row_bytes)))
        rates.setdefault("loader_ram_one_builder", []).append(_rate(loader_pass(ram1, epochs)))
        rates.setdefault("memcpy_two_threads", []).append(_rate(memcpy_pass(
            got[0], batch * row_bytes, len(sub) * row_bytes, threads=2)))
        if old_ram is not None:
            rates.setdefault("old_loader_ram", []).append(_rate(loader_pass(old_ram, epochs)))
    med = {k: statistics.median(v) for k, v in rates.items()}
    paged_ratio = [a / b for a, b in zip(rates["loader_paged"], rates["raw_read"])]
    ram_ratio = [a / b for a, b in zip(rates["loader_ram"], rates["memcpy"])]
    out = {
        "n": store.n, "px": store.shape[1], "row_bytes": row_bytes, "file_bytes": size, "batch": batch,
        "block_rows": store.block_rows, "page_rows": paged.page_rows, "window_pages": paged.window_pages,
        "direct_reads": store.reader().direct, "paged_budget_bytes": budget,
        "ram_rows": int(len(sub)), "ram_batches": nb, "ram_epochs_per_pass": epochs, "readers": paged.readers,
        "eviction_check_bytes_per_s": {"warm": warm, "cold_after_evict": cold},
        "bytes_per_s": {k: {"median": med[k], "rounds": v} for k, v in rates.items()},
        "cores_busy": {k: {"median": statistics.median(v), "rounds": v} for k, v in cores.items()},
        "loader_paged_over_raw_read": statistics.median(paged_ratio),
        "loader_paged_over_raw_read_range": [min(paged_ratio), max(paged_ratio)],
        "loader_paged_over_sha256_one_core": med["loader_paged"] / med["sha256_one_core"],
        "loader_paged_over_raw_read_uncached": statistics.median(
            [a / b for a, b in zip(rates["loader_paged"], rates["raw_read_uncached"])]),
        "loader_paged_buffered_over_raw_read": statistics.median(
            [a / b for a, b in zip(rates["loader_paged_buffered"], rates["raw_read"])]),
        "uncached_reads": store.reader().io if paged.uncached else "buffered",
        "loader_ram_over_memcpy": statistics.median(ram_ratio),
        "loader_ram_over_memcpy_range": [min(ram_ratio), max(ram_ratio)],
        "loader_ram_over_memcpy_cache_resident": med["loader_ram"] / med["memcpy_cache_resident"],
        "ram_builders": ram.builders,
        "loader_ram_one_builder_over_memcpy": statistics.median(
            [a / b for a, b in zip(rates["loader_ram_one_builder"], rates["memcpy"])]),
        "loader_ram_over_memcpy_two_threads": statistics.median(
            [a / b for a, b in zip(rates["loader_ram"], rates["memcpy_two_threads"])]),
    }
    if old is not None:
        out["new_over_old"] = {"paged": med["loader_paged"] / med["old_loader_paged"],
                               "ram": med["loader_ram"] / med["old_loader_ram"]}
    return out


def _project(rate: float) -> dict:
    return {name: {"images": n, "px": 256, "epoch_seconds": n * PX256 / rate}
            for name, n in (("1.28M", IMAGENET), ("13M", IMAGENET21K))}


def measure(work: Path, quick: bool = False, old_rev: str | None = None) -> dict:
    """Both ratios on a 64 px store larger than the paged budget (and a 256 px one), stores under `work`."""
    work = Path(work)
    load = os.getloadavg()
    old = old_loader(old_rev) if old_rev else None
    # stores of a few GB: a paged pass then lasts several seconds, so filling the read-ahead window (256 MiB
    # before the first batch) is a small part of it, as in an ImageNet epoch
    sizes = {64: (20_000 if quick else 300_000, 256), 256: (1_000 if quick else 12_000, 256)}
    result = {"quick": quick, "loadavg_before": load, "old_loader": old_rev if old is not None else None}
    for px, (n, batch) in sizes.items():
        store = build(work / f"store{px}_{n}", n, px)
        ram_rows = min(n, (512 << 20) // (px * px * 3))  # 512 MiB in RAM: the in-RAM rate needs no more
        result[f"{px}px"] = measure_store(store, batch, rounds=2 if quick else 3, ram_rows=ram_rows, old=old)
        print(px, "px:", {k: v for k, v in result[f"{px}px"].items() if k.startswith("loader_")}, flush=True)
    result["loader_paged_over_raw_read"] = min(result[f"{px}px"]["loader_paged_over_raw_read"] for px in sizes)
    result["loader_ram_over_memcpy"] = min(result[f"{px}px"]["loader_ram_over_memcpy"] for px in sizes)
    at256 = result["256px"]["bytes_per_s"]
    result["projection_256px"] = {"paged": _project(at256["loader_paged"]["median"]),
                                  "ram": _project(at256["loader_ram"]["median"]),
                                  "raw_read": _project(at256["raw_read"]["median"])}
    result["goals"] = {"loader_paged_over_raw_read": ">= 0.8", "loader_ram_over_memcpy": ">= 0.5"}
    result["loadavg_after"] = os.getloadavg()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("artifacts/scale/loader"), help="synthetic stores (reused)")
    ap.add_argument("--quick", action="store_true", help="small stores: checks the script, proves nothing")
    ap.add_argument("--old-loader", default=None, metavar="REV",
                    help="also time pipeline/data/loader.py as of this git revision (e.g. 7950c4d)")
    ap.add_argument("--json", type=Path, default=RESULTS)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    result = measure(a.work, a.quick, a.old_loader)
    result["provenance"] = provenance(vars(a))
    result["command"] = " ".join([os.path.relpath(sys.executable), *sys.argv])
    text = json.dumps(result, indent=2, default=str)
    print(text)
    path = a.json.with_name(a.json.stem + "_quick.json") if a.quick else a.json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


if __name__ == "__main__":
    main()
