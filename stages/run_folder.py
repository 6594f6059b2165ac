"""A training run's folder: what pins it to one run (config.json: the settings, the code digest and what it is
trained on), what counts as another run, starting over, and one writer at a time.

A refused start writes nothing; config.json is written once the inputs are checked. The same settings, code and
inputs resume; anything else is refused with the differences named, or started over when asked
(`--restart if-changed`, what dvc.yaml passes; `--restart always`).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, fields
from pathlib import Path

from cache.errors import CacheError
from cache.lock import StoreLock
from pipeline.runtime import distributed
from pipeline.runtime.atomic import io_error, make_dir, remove_temporaries, write_text
from pipeline.runtime.code_digest import code_digest
from pipeline.runtime.errors import CompressError
from pipeline.runtime.run_identity import describe
from stages.train_config import TrainConfig


# Paths are compared by what they hold (the run's identity, pipeline/runtime/run_identity.py), never by how they are
# spelled: the same data by another path resumes, another teacher at the same path is refused.
PATH_SETTINGS = ("data", "cache", "out", "teacher_weights")


def record(cfg: TrainConfig) -> dict:
    """The run's identity as config.json keeps it: every setting and the digest of the code that trains."""
    return {**json.loads(json.dumps(asdict(cfg), default=str)), "code": code_digest()}


def changed_settings(saved: dict, cfg: TrainConfig) -> list[str]:
    """Keys whose value in a run's saved config.json differs from `cfg` (or the code), ignoring the resumable ones.
    A key the saved file lacks (a run older than the option) counts as that option's default."""
    current = record(cfg)
    defaults = {f.name: f.default for f in fields(TrainConfig) if isinstance(f.default, (int, float, str, bool))}
    return sorted(k for k in current if k not in TrainConfig.RESUMABLE_CHANGES and k not in PATH_SETTINGS
                  and saved.get(k, defaults.get(k)) != current[k])


def read_config(out: Path) -> dict | None:
    """The run's saved config.json; None when there is none, or when it is unreadable and nothing was trained
    under it (no checkpoint): it is written again once the inputs are checked."""
    path = out / "config.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError) as e:
        if (out / "checkpoint.pt").exists():
            raise CompressError(f"{path} is unreadable ({type(e).__name__}) but {out} holds a checkpoint; restore "
                                f"the file, or start over with --restart always or a new --out folder") from None
        return None


def check_config(cfg: TrainConfig, out: Path, identity: dict) -> tuple[str | None, bool]:
    """(problem, start_over): problem is the message to stop with, None when `out` is new or holds a run with
    these settings, code and identity or one to start over; start_over says that the run in `out` is to be
    cleared (--restart). Writes and removes nothing: the trainer clears the folder and writes config.json once
    every input has been checked, so a refused start leaves the folder as it was."""
    current = {**record(cfg), "identity": identity}
    saved = read_config(out)
    if saved is not None:
        # identity: a config.json older than it counts as the same; its checkpoint then refuses (no identity)
        changed = changed_settings(saved, cfg) + (["identity"] if saved.get("identity", identity) != identity
                                                  else [])
        first_checkpoint_written = (out / "checkpoint.pt").exists()
        if cfg.restart == "always" or (changed and (cfg.restart == "if-changed" or not first_checkpoint_written)):
            return None, True  # nothing trained is lost when no checkpoint was ever written
        if changed:
            diffs = ", ".join(f"{k}: {saved.get(k, '(default)')!r} -> {current[k]!r}" for k in changed[:4]
                              if k != "identity")
            if "identity" in changed:  # both named, by content: which data, which teacher
                diffs = "; ".join(filter(None, [diffs, f"trained on {describe(saved['identity'])}, this command "
                                                       f"gives {describe(identity)}"]))
            return (f"{out} holds a run with other settings, code or data ({diffs}); resume with the same "
                    f"settings and inputs, start it over with --restart if-changed, or choose a new --out folder",
                    False)
    return None, False


def write_config(cfg: TrainConfig, out: Path, identity: dict) -> None:
    """Pin the run's settings, code and identity, once its inputs have been checked (a refused start pins
    nothing); atomic, so a full disk leaves no empty config.json behind."""
    if read_config(out) is None:
        write_text(out / "config.json", json.dumps({**record(cfg), "identity": identity,
                                                    "augmentation": cfg.augmentation()}, indent=2) + "\n")


def clear_run(out: Path) -> None:
    """Remove what a run writes in its folder (nothing else), so it starts over."""
    for name in ("config.json", "checkpoint.pt", "model.pt", "curves.csv", "log.jsonl"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "tb", ignore_errors=True)
    shutil.rmtree(out / "snapshots", ignore_errors=True)


def lock_run(cfg: TrainConfig, world: distributed.World) -> StoreLock | None:
    """One writer per run folder: rank 0 holds an flock on the sibling `OUT.lock` (dropped by the kernel when the
    process dies, even by SIGKILL) and removes temporaries a killed run left; every rank learns the outcome."""
    lock, problem = None, None
    if world.is_main:
        try:
            make_dir(cfg.out, "--out")
            lock = StoreLock(cfg.out).acquire()
            remove_temporaries(cfg.out)
        except (CompressError, CacheError) as e:
            problem = str(e)
        except OSError as e:  # a read-only place, no space for the lock file
            problem = str(io_error(f"{cfg.out} (its lock)", e, "lock"))
    problem = distributed.broadcast_object(problem)
    if problem is not None:
        if lock is not None:
            lock.release()
        raise CompressError(problem)
    return lock
