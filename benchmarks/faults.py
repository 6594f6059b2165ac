"""The fault matrix of issue 16: what a hostile user or an unlucky machine does to `prepare`, `extract` and `train`,
and whether anything was lost or trusted wrongly.

One row per case in benchmarks/results/faults.json, with what happened (exit code, the last line printed), and:
  held             the case ended as it must (a refusal in one line, or a result bitwise equal to an
                   uninterrupted run's)
  one_line         a failure printed one `Error: ...` line (after the progress bar), no traceback
  lost             something already written was lost or damaged (a good checkpoint, shards, a model)
  trusted_wrongly  a result was accepted that must not be (exit 0 on tampered input, a mixed run, a result
                   that differs from the uninterrupted run's, a non-finite tensor written)

Cases: SIGKILL at several moments of `extract` and `train` then the same command again; full disks (small tmpfs
mounts: root only, else the rows say why they were skipped) in prepare/extract/train, then the same command
after space is freed; a read-only disk; files where folders belong and the reverse; two writers on one run
folder and on one cache; a tampered image store; a swapped teacher cache; other images at the same path; the
same inputs by other paths; non-finite and out-of-range values; damaged model, checkpoint and cache metadata.

The code under test is a snapshot of pipeline/, stages/ and cache/ taken at start (its digest is part of a run's
identity, and the working tree may change while this runs). Everything runs on the CPU with one thread, so
resumed runs can be compared bit for bit; in-process cases go through the CLI (click's runner), the kills and
the concurrent writers are real processes.

    .venv/bin/python benchmarks/faults.py [--json benchmarks/results/faults.json]
"""
from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # bitwise-comparable runs, in this process and its children

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def snapshot(work: Path) -> Path:
    code = work / "code"
    for package in ("pipeline", "stages", "cache"):
        shutil.copytree(REPO / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    return code


class Matrix:
    def __init__(self, work: Path, code: Path):
        self.work, self.code, self.rows = work, code, []
        self.env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}

    # ---------------------------------------------------------------- running commands
    def cli(self, *args) -> dict:
        """A command in this process (click's runner): exit code, output, and whether it raised (a traceback)."""
        from click.testing import CliRunner
        from stages.cli import main
        r = CliRunner().invoke(main, [str(a) for a in args])
        raised = r.exception is not None and not isinstance(r.exception, SystemExit)
        return {"exit": r.exit_code, "output": r.output + (f"\nTraceback: {r.exception!r}" if raised else ""),
                "traceback": raised}

    def argv(self, *args) -> list[str]:
        return [sys.executable, "-m", "stages", *map(str, args)]

    def proc(self, *args) -> dict:
        p = subprocess.run(self.argv(*args), capture_output=True, text=True, cwd=self.code, env=self.env)
        return {"exit": p.returncode, "output": p.stdout + p.stderr, "traceback": "Traceback" in p.stderr}

    def popen(self, *args) -> subprocess.Popen:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=self.code, env=self.env)

    # ---------------------------------------------------------------- recording
    def row(self, group: str, case: str, result: dict | None, *, held: bool, lost: bool = False,
            trusted_wrongly: bool = False, outcome: str = "", expect_failure: bool = True, skipped: str = ""):
        last = last_line(result["output"]) if result else ""
        one = (result is not None and result["exit"] != 0 and last.startswith(("Error: ", "Usage: "))
               and not result["traceback"]) if expect_failure else None
        if expect_failure and result is not None and result["exit"] == 2:
            one = not result["traceback"] and "Error: " in result["output"]  # click usage error: usage + 1 line
        self.rows.append({"group": group, "case": case, "exit_code": None if result is None else result["exit"],
                          "last_line": last[:300], "outcome": outcome, "one_line": one,
                          "traceback": None if result is None else result["traceback"],
                          "held": bool(held) and not skipped and (one is not False),
                          "lost": bool(lost), "trusted_wrongly": bool(trusted_wrongly), "skipped": skipped})
        status = "skipped" if skipped else ("held" if self.rows[-1]["held"] else "FAILED")
        print(f"[{status}] {group}: {case} -> {outcome or last[:120]}", flush=True)


def last_line(output: str) -> str:
    lines = [s for s in output.replace("\r", "\n").splitlines() if s.strip()]
    return lines[-1].strip() if lines else ""


# -------------------------------------------------------------------- comparisons
def same_cache(a: Path, b: Path) -> bool:
    import numpy as np
    import zarr
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    files = lambda p: sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file())  # noqa: E731
    return (bool(ga.attrs["complete"]) and ga.attrs["checksums"] == gb.attrs["checksums"]
            and np.array_equal(ga["embeddings"][:], gb["embeddings"][:]) and files(a) == files(b))


def complete(store: Path) -> bool:
    import zarr
    return store.exists() and bool(zarr.open_group(str(store), mode="r").attrs.get("complete"))


def same_model(a: Path, b: Path) -> bool:
    import torch
    if not (a.is_file() and b.is_file()):
        return False
    x, y = (torch.load(p, weights_only=True)["state_dict"] for p in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def all_finite(path: Path) -> bool:
    import torch
    from pipeline.runtime.tensor_check import first_non_finite
    return not path.exists() or first_non_finite(torch.load(path, weights_only=True)) is None


def leftovers(folder: Path) -> list[str]:
    from pipeline.runtime.atomic import is_temp
    return [str(p) for p in folder.rglob("*") if p.is_file() and (is_temp(p) or p.suffix in (".tmp", ".partial"))]


def flip_middle_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


class Disk:
    """A small tmpfs mount (root only); `None` with the reason when mounting is not permitted."""

    def __init__(self, point: Path, size: str):
        self.point = point
        point.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True,
                           text=True)
        self.error = None if r.returncode == 0 else (r.stderr.strip() or "mount failed") + " (needs root)"

    def resize(self, size: str, mode: str = "rw") -> None:
        subprocess.run(["mount", "-o", f"remount,size={size},{mode}", str(self.point)], check=True)

    def close(self) -> None:
        if self.error is None:
            subprocess.run(["umount", str(self.point)], check=False)


# -------------------------------------------------------------------- the cases
def setup(m: Matrix) -> dict:
    from pipeline.models.modelfile import default_preprocessing, save_model
    from pipeline.models.backbones import build_backbone
    from stages.prepare import PrepareConfig, prepare
    w = m.work
    prepare(PrepareConfig(dataset="digits", limit=200, out=w / "data"))
    for name, seed in (("t.pt", 1), ("t2.pt", 2)):
        save_model(w / name, build_backbone("resnet18_w16", small_input=True, seed=seed), default_preprocessing(8))
    ex = ["extract", "--data", w / "data", "--weights", w / "t.pt", "--shard-rows", 16, "--batch-size", 16,
          "--device", "cpu", "--no-progress"]
    tr = ["train", "--data", w / "data", "--preset", "tiny", "--student", "resnet18_w16", "--steps", 6,
          "--checkpoint-every", 1, "--device", "cpu", "--no-tensorboard"]
    assert m.cli(*ex, "--out", w / "ref.zarr")["exit"] == 0
    r = m.cli(*tr, "--cache", w / "ref.zarr", "--out", w / "ref_run")
    assert r["exit"] == 0, r["output"]
    return {"ex": ex, "tr": tr + ["--cache", w / "ref.zarr"], "tr_bare": tr}


def kills(m: Matrix, s: dict) -> None:
    w = m.work
    for k in (1, 5, 11):  # of 13 shards
        out = w / f"kill_extract_{k}.zarr"
        p = m.popen(*s["ex"], "--out", out)
        while not (out / "progress").is_dir() or len(list((out / "progress").glob("shard-*.json"))) < k:
            if p.poll() is not None:
                break
            time.sleep(0.002)
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = m.proc(*s["ex"], "--out", out)
        ok = r["exit"] == 0 and same_cache(out, w / "ref.zarr")
        m.row("SIGKILL", f"extract killed after {k} of 13 shards, same command again", r, held=ok,
              trusted_wrongly=r["exit"] == 0 and not ok, expect_failure=False,
              outcome="resumed to a cache equal to the uninterrupted one" if ok else "differs")
    for moment, checkpoints in (("at start-up (before the first checkpoint)", 0), ("after checkpoint 2 of 6", 2),
                                ("after checkpoint 5 of 6", 5)):
        out = w / f"kill_train_{checkpoints}"
        p = m.popen(*s["tr"], "--out", out)
        seen, inode = 0, None
        while p.poll() is None:
            if checkpoints == 0 and (out / "log.jsonl").exists():
                break
            try:
                now = os.stat(out / "checkpoint.pt").st_ino
            except FileNotFoundError:
                now = None
            if now is not None and now != inode:
                inode, seen = now, seen + 1
                if seen >= checkpoints > 0:
                    break
            time.sleep(0.001)
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = m.proc(*s["tr"], "--out", out)
        ok = r["exit"] == 0 and same_model(out / "model.pt", w / "ref_run" / "model.pt") and not leftovers(out)
        m.row("SIGKILL", f"train killed {moment}, same command again", r, held=ok, expect_failure=False,
              trusted_wrongly=r["exit"] == 0 and not ok,
              outcome="model.pt bitwise equal to the uninterrupted run's" if ok else "differs")


def concurrent(m: Matrix, s: dict) -> None:
    w = m.work
    cases = (("train", s["tr"], w / "two_trains", lambda o: same_model(o / "model.pt", w / "ref_run" / "model.pt")),
             ("extract", s["ex"], w / "two_extracts.zarr", lambda o: same_cache(o, w / "ref.zarr")))
    for what, args, out, same in cases:
        ps = [m.popen(*args, "--out", out) for _ in range(2)]
        results = []
        for p in ps:
            stdout, stderr = p.communicate()
            results.append({"exit": p.returncode, "output": stdout + stderr, "traceback": "Traceback" in stderr})
        refused = [r for r in results if r["exit"] != 0]
        clean = all(r["exit"] == 0 or ("is being written by" in last_line(r["output"]) and not r["traceback"])
                    for r in results)
        ok = clean and same(out) and not leftovers(out)
        m.row("concurrent writers", f"two `{what}` on one --out at once", refused[0] if refused else results[0],
              held=ok, expect_failure=bool(refused), trusted_wrongly=not same(out),
              outcome=(("one refused by the lock, the other finished" if refused else
                        "both exited 0: the second found the first's result finished") +
                       "; the result equals the uninterrupted run's" if ok else
                       "; ".join(last_line(r["output"])[:100] for r in results)))


def full_disks(m: Matrix, s: dict) -> None:
    w = m.work
    disk = Disk(w / "disk", "100k")
    if disk.error:
        for case in ("prepare with 100 KB free", "extract with 48 KB free", "train with 1 MB free",
                     "train with 0 bytes free", "train on a read-only disk"):
            m.row("full disk", case, None, held=False, skipped=disk.error)
        return
    try:
        from pipeline.data.imagestore import ImageStore
        from stages.prepare import PrepareConfig, prepare
        prepare(PrepareConfig(dataset="digits", out=w / "digits_ref"))
        r = m.proc("prepare", "--dataset", "digits", "--out", disk.point / "data")
        nothing = not any((disk.point / "data").rglob("*"))
        disk.resize("64m")
        again = m.proc("prepare", "--dataset", "digits", "--out", disk.point / "data")
        ok = r["exit"] == 1 and nothing and again["exit"] == 0 and \
            ImageStore(disk.point / "data").fingerprint == ImageStore(w / "digits_ref").fingerprint
        m.row("full disk", "prepare with 100 KB free, then again with space", r, held=ok, lost=False,
              trusted_wrongly=not nothing,
              outcome="one line, nothing left; then the same fingerprint as on a roomy disk" if ok else "differs")

        shutil.rmtree(disk.point / "data")
        disk.resize("48k")
        r = m.cli(*s["ex"], "--out", disk.point / "c.zarr")
        debris = leftovers(disk.point)
        disk.resize("64m")
        again = m.cli(*s["ex"], "--out", disk.point / "c.zarr")
        ok = r["exit"] == 1 and not debris and again["exit"] == 0 and same_cache(disk.point / "c.zarr", w / "ref.zarr")
        m.row("full disk", "extract with 48 KB free, then again with space", r, held=ok, trusted_wrongly=bool(debris),
              outcome="one line; resumed to a cache equal to the uninterrupted one" if ok else "differs")

        shutil.rmtree(disk.point / "c.zarr")
        disk.resize("1m")
        r = m.cli(*s["tr"], "--out", disk.point / "run")
        debris = leftovers(disk.point) + [str(p) for p in [disk.point / "run" / "checkpoint.pt"] if p.exists()]
        disk.resize("64m")
        again = m.cli(*s["tr"], "--out", disk.point / "run")
        ok = r["exit"] == 1 and not debris and again["exit"] == 0 and \
            same_model(disk.point / "run" / "model.pt", w / "ref_run" / "model.pt")
        m.row("full disk", "train with 1 MB free (the first checkpoint does not fit), then again with space", r,
              held=ok, trusted_wrongly=bool(debris),
              outcome="one line; then model.pt bitwise equal to the uninterrupted run's" if ok else "differs")

        shutil.rmtree(disk.point / "run")
        disk.resize("1m")
        with open(disk.point / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        r = m.cli(*s["tr"], "--out", disk.point / "run")
        empty_config = (disk.point / "run" / "config.json").exists()
        (disk.point / "filler").unlink()
        disk.resize("64m")
        again = m.cli(*s["tr"], "--out", disk.point / "run")
        ok = r["exit"] == 1 and not empty_config and again["exit"] == 0 and \
            same_model(disk.point / "run" / "model.pt", w / "ref_run" / "model.pt")
        m.row("full disk", "train with 0 bytes free, then again with space", r, held=ok, trusted_wrongly=empty_config,
              outcome="one line, no config.json left; then the same model.pt" if ok else "differs")

        shutil.rmtree(disk.point / "run")
        disk.resize("1m", "ro")
        r = m.cli(*s["tr"], "--out", disk.point / "run")
        m.row("full disk", "train on a read-only disk", r, held=r["exit"] == 1 and "Read-only" in r["output"])
    finally:
        disk.close()


def paths(m: Matrix, s: dict) -> None:
    w = m.work
    (w / "a_file").write_text("mine")
    for what, args in (("train", [*s["tr"]]), ("extract", [*s["ex"]]),
                       ("prepare", ["prepare", "--dataset", "digits", "--limit", 10])):
        r = m.cli(*args, "--out", w / "a_file")
        m.row("file vs folder", f"{what} --out naming an existing file", r,
              held=r["exit"] == 1 and (w / "a_file").read_text() == "mine", lost=(w / "a_file").read_text() != "mine")
    (w / "blocked" / "model.pt").mkdir(parents=True)
    r = m.cli(*s["tr"], "--out", w / "blocked")
    m.row("file vs folder", "train whose model.pt is a folder", r, held=r["exit"] == 1 and not leftovers(w / "blocked"))
    r = m.cli("eval", "--data", w / "data", "--model", w / "ref_run" / "model.pt", "--out", w)
    m.row("file vs folder", "eval --out naming a folder", r, held=r["exit"] == 2 and "is a folder" in r["output"],
          outcome="usage error before evaluating")


def tampered(m: Matrix, s: dict) -> None:
    import h5py
    w = m.work
    shutil.copytree(w / "data", w / "inverted")
    with h5py.File(w / "inverted" / "images.h5", "r+") as f:
        f["images"][:] = 255 - f["images"][:]
    for what, args in (("train", [*s["tr_bare"], "--data", w / "inverted", "--method", "supervised",
                                  "--out", w / "inv_run"]),
                       ("extract", ["extract", "--data", w / "inverted", "--weights", w / "t.pt", "--device", "cpu",
                                    "--no-progress", "--out", w / "inv.zarr"]),
                       ("verify", ["verify", w / "inverted"])):
        r = m.cli(*args)
        wrote = (w / "inv_run" / "model.pt").exists() or complete(w / "inv.zarr")
        if what == "verify":  # one line per bad block, by design
            m.row("tampered store", "pixels inverted, manifest kept: verify", r, expect_failure=False,
                  held=r["exit"] == 1 and "checksum mismatch" in r["output"], trusted_wrongly=r["exit"] == 0,
                  outcome="exit 1 naming the bad blocks and the fingerprint mismatch")
            continue
        m.row("tampered store", f"pixels inverted, manifest kept: {what}", r,
              held=r["exit"] == 1 and not wrote, trusted_wrongly=r["exit"] == 0 or wrote)
    shutil.copytree(w / "data", w / "edited")
    manifest = json.loads((w / "edited" / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64
    (w / "edited" / "manifest.json").write_text(json.dumps(manifest))
    r = m.cli("extract", "--data", w / "edited", "--weights", w / "t.pt", "--device", "cpu", "--no-progress",
              "--out", w / "edited.zarr")
    m.row("tampered store", "fingerprint edited in the manifest: extract", r,
          held=r["exit"] == 1 and not (w / "edited.zarr").exists(), trusted_wrongly=r["exit"] == 0)
    shutil.copytree(w / "data", w / "relabelled")
    with h5py.File(w / "relabelled" / "images.h5", "r+") as f:
        f["labels"][:] = (f["labels"][:] + 1) % 10
    r = m.cli(*s["tr_bare"], "--data", w / "relabelled", "--method", "supervised", "--out", w / "rel_run")
    m.row("tampered store", "labels changed, manifest kept: train", r, held=r["exit"] == 1,
          trusted_wrongly=r["exit"] == 0)


def identities(m: Matrix, s: dict) -> None:
    from pipeline.runtime.provenance import sha256_file
    w = m.work
    shutil.copytree(w / "ref.zarr", w / "swap.zarr")
    short = [*s["tr_bare"], "--cache", w / "swap.zarr", "--out", w / "swap_run"]
    m.cli(*short)
    before = (w / "swap_run" / "model.pt").read_bytes()
    m.cli(*s["ex"], "--weights", w / "t2.pt", "--overwrite", "--out", w / "swap.zarr")
    r = m.cli(*short)
    both = all(sha256_file(w / t)[:12] in r["output"] for t in ("t.pt", "t2.pt"))
    kept = (w / "swap_run" / "model.pt").read_bytes() == before
    m.row("swapped cache", "cache rebuilt from another teacher at the same path, same train command", r,
          held=r["exit"] == 1 and both and kept, lost=not kept, trusted_wrongly=r["exit"] == 0,
          outcome="refused naming both teachers' sha256; model.pt untouched" if both and kept else "")
    (w / "swap_run" / "config.json").unlink()
    r = m.cli(*short)
    m.row("swapped cache", "the same, config.json deleted (the checkpoint decides)", r,
          held=r["exit"] == 1 and "checkpoint.pt was trained on" in r["output"], trusted_wrongly=r["exit"] == 0)

    shutil.copytree(w / "data", w / "elsewhere" / "data")
    shutil.copytree(w / "ref.zarr", w / "elsewhere" / "c.zarr")
    shutil.copytree(w / "ref_run", w / "moved_run")
    args = [*s["tr_bare"], "--data", (w / "elsewhere" / "data").resolve(), "--cache",
            os.path.relpath(w / "elsewhere" / "c.zarr"), "--out", w / "moved_run"]
    r = m.cli(*args)
    ok = r["exit"] == 0 and same_model(w / "moved_run" / "model.pt", w / "ref_run" / "model.pt")
    m.row("swapped cache", "the same data and cache copied to other paths (absolute, relative)", r, held=ok,
          expect_failure=False, outcome="resumed; model.pt equal" if ok else "refused or differs")

    from stages.prepare import PrepareConfig, prepare
    prepare(PrepareConfig(dataset="digits", limit=150, out=w / "imgs"))
    sup = [*s["tr_bare"], "--data", w / "imgs", "--method", "supervised", "--out", w / "sup_run"]
    m.cli(*sup)
    prepare(PrepareConfig(dataset="digits", limit=160, out=w / "imgs"))
    r = m.cli(*sup)
    m.row("swapped data", "image store re-prepared from other images at the same path", r,
          held=r["exit"] == 1 and "trained on data" in r["output"], trusted_wrongly=r["exit"] == 0)


def values(m: Matrix, s: dict) -> None:
    w = m.work
    for k, (opt, value) in enumerate([("--lr", "nan"), ("--lr", "inf"), ("--epochs", "0"), ("--epochs", "-1"),
                                      ("--ema", "2"), ("--input-size", "1"), ("--tau", "0"),
                                      ("--weight-decay", "nan"), ("--batch-size", "0"), ("--bank-size", "0")]):
        out = w / f"bad_{k}"
        r = m.cli(*s["tr"], opt, value, "--out", out)
        wrote = out.exists() and any(out.iterdir())
        m.row("non-finite / out of range", f"train {opt} {value}", r, held=r["exit"] == 2 and not wrote,
              trusted_wrongly=r["exit"] == 0 or wrote, outcome="usage error, nothing written" if not wrote else "")
    for lr, steps in (("1e30", 4), ("1e38", 1)):
        out = w / f"explode_{lr}"
        r = m.cli(*s["tr"], "--lr", lr, "--steps", steps, "--out", out)
        model, ckpt = out / "model.pt", out / "checkpoint.pt"
        finite = all_finite(model) and all_finite(ckpt)
        m.row("non-finite / out of range", f"train --lr {lr} --steps {steps} (weights blow up)", r,
              held=finite and (r["exit"] != 0 or model.exists()), trusted_wrongly=not finite,
              expect_failure=r["exit"] != 0,
              outcome=("stopped, no model.pt, every written tensor finite" if r["exit"] and not model.exists()
                       else "finished with finite weights" if finite else "a non-finite tensor was written"))
    r1 = m.cli(*s["tr_bare"], "--out", w / "refused_first")
    r2 = m.cli(*s["tr"], "--out", w / "refused_first")
    m.row("refused start", "train without --cache (refused), then the fixed command", r1,
          held=r1["exit"] == 1 and r2["exit"] == 0 and same_model(w / "refused_first" / "model.pt",
                                                                  w / "ref_run" / "model.pt"),
          outcome="the fixed command ran (not 'other settings') to the reference model")


def damaged(m: Matrix, s: dict) -> None:
    w = m.work
    shutil.copy(w / "ref_run" / "model.pt", w / "flipped.pt")
    flip_middle_byte(w / "flipped.pt")
    r = m.cli("eval", "--data", w / "data", "--model", w / "flipped.pt", "--out", w / "flipped.json")
    m.row("damaged files", "model.pt with a flipped byte: eval", r, held=r["exit"] == 1 and "damaged" in r["output"],
          trusted_wrongly=r["exit"] == 0)
    shutil.copytree(w / "ref_run", w / "flipped_run")
    (w / "flipped_run" / "model.pt").unlink()
    flip_middle_byte(w / "flipped_run" / "checkpoint.pt")
    r = m.cli(*s["tr"], "--out", w / "flipped_run")
    m.row("damaged files", "checkpoint.pt with a flipped byte: train resumes?", r,
          held=r["exit"] == 1 and "damaged" in r["output"], trusted_wrongly=r["exit"] == 0)
    shutil.copytree(w / "ref.zarr", w / "badmeta.zarr")
    (w / "badmeta.zarr" / "embeddings" / "zarr.json").write_text('{"zarr_format": 3, "node_')
    for what, args in (("verify", ["verify", w / "badmeta.zarr"]),
                       ("train", [*s["tr_bare"], "--cache", w / "badmeta.zarr", "--out", w / "badmeta_run"]),
                       ("extract", [*s["ex"], "--out", w / "badmeta.zarr"])):
        r = m.cli(*args)
        m.row("damaged files", f"corrupt embeddings/zarr.json: {what}", r, held=r["exit"] == 1,
              trusted_wrongly=r["exit"] == 0)
    (w / "notes.pt").write_text("these are not weights\n" * 20)
    r = m.cli("extract", "--data", w / "data", "--weights", w / "notes.pt", "--device", "cpu", "--no-progress",
              "--out", w / "notes.zarr")
    m.row("damaged files", "a text file as teacher checkpoint: extract", r, held=r["exit"] == 1)
    shutil.copytree(w / "ref.zarr", w / "holed.zarr")
    (w / "holed.zarr" / "embeddings" / "c" / "3" / "0").unlink()
    r = m.cli(*s["ex"], "--out", w / "holed.zarr")
    ok = r["exit"] == 0 and same_cache(w / "holed.zarr", w / "ref.zarr")
    m.row("damaged files", "complete cache with a shard deleted: extract", r, held=ok, expect_failure=False,
          trusted_wrongly=not ok, outcome="the damaged shard re-extracted; equal to the reference" if ok else "")
    shutil.copytree(w / "ref.zarr", w / "progress.zarr")
    (w / "progress.zarr" / "progress").mkdir()
    (w / "progress.zarr" / "progress" / "shard-000000.json").write_text("{}")
    r = m.cli(*s["ex"], "--out", w / "progress.zarr")
    ok = r["exit"] == 0 and not (w / "progress.zarr" / "progress").exists()
    m.row("damaged files", "complete cache with a leftover progress/ (killed after completion): extract", r,
          held=ok, expect_failure=False, outcome="progress/ removed" if ok else "")


GROUPS = (kills, concurrent, full_disks, paths, tampered, identities, values, damaged)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "faults.json")
    ap.add_argument("--only", nargs="*", choices=[g.__name__ for g in GROUPS], help="Run these groups only.")
    args = ap.parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        work = Path(tmp)
        code = snapshot(work)
        sys.path.insert(0, str(code))
        os.chdir(work)
        m = Matrix(work, code)
        s = setup(m)
        for group in GROUPS:
            if not args.only or group.__name__ in args.only:
                group(m, s)
        from pipeline.runtime.code_digest import code_digest
        from pipeline.runtime.provenance import provenance
        rows = m.rows
        run = [r for r in rows if not r["skipped"]]
        totals = {"cases": len(rows), "run": len(run), "skipped": len(rows) - len(run),
                  "held": sum(r["held"] for r in run), "lost": sum(r["lost"] for r in run),
                  "trusted_wrongly": sum(r["trusted_wrongly"] for r in run),
                  "tracebacks": sum(bool(r["traceback"]) for r in run)}
        result = {"benchmark": "faults", "command": " ".join([os.path.relpath(sys.executable, REPO), *sys.argv]),
                  "code_digest": code_digest(), "seconds": round(time.time() - t0, 1), "totals": totals,
                  "rows": rows, "provenance": provenance()}
    os.chdir(REPO)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(totals), f"in {result['seconds']} s -> {args.json}")


if __name__ == "__main__":
    main()
