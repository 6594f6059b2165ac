"""Training checkpoints: everything with a state_dict, saved and restored by name, plus RNG states and step.

One rolling `checkpoint.pt`, written to a temporary name and renamed, so a kill at any moment leaves the last
good checkpoint intact. Loading uses `torch.load(weights_only=True)`: a checkpoint cannot run code.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from pipeline.errors import CompressError


def save_checkpoint(path: str | Path, *, step: int, epoch: int, extra: dict | None = None, **objects) -> None:
    payload = {"step": step, "epoch": epoch, "extra": extra or {},
               "rng": {"torch": torch.get_rng_state(),
                       "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               "objects": {name: obj.state_dict() for name, obj in objects.items()}}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def restore_checkpoint(path: str | Path, **objects) -> dict:
    """Load every named object's state; return {"step", "epoch", "extra", "restored": [names]}.

    The file is read onto the CPU: each object's `load_state_dict` copies the values to the device its own
    tensors live on, and the RNG states must stay CPU ByteTensors (mapping them to a GPU breaks resume there).

    A name missing from the checkpoint, or an object whose keys differ, is an error: a partial restore would
    silently train something else.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0].split(". ")[0][:120] if str(e) else ""
        raise CompressError(f"checkpoint {str(path)!r} is truncated or corrupt ({type(e).__name__}: {first}); "
                            f"delete it to start the run over (model.pt, if any, is kept)")
    saved = payload.get("objects", {})
    missing = [name for name in objects if name not in saved]
    if missing:
        raise CompressError(f"checkpoint {path} lacks {missing} (has {sorted(saved)}); it was made by another "
                            f"configuration: use a new --out folder")
    for name, obj in objects.items():
        try:
            obj.load_state_dict(saved[name])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CompressError(f"checkpoint {path}: {name!r} does not fit this run "
                                f"({str(e).splitlines()[0][:160]}); use a new --out folder")
    torch.set_rng_state(payload["rng"]["torch"])
    if payload["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return {"step": payload["step"], "epoch": payload["epoch"], "extra": payload["extra"],
            "restored": sorted(objects)}
