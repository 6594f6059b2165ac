"""Training checkpoints: everything with a state_dict, saved and restored by name, plus RNG states and step.

One rolling `checkpoint.pt`, written to a temporary name unique to the process and renamed, so a kill or a full
disk at any moment leaves the last good checkpoint intact. Loading uses `torch.load(weights_only=True)`: a
checkpoint cannot run code.

Nothing untrusted passes either way: a checkpoint is written only when every tensor in it is finite, it carries
the sha256 of its tensors (checked on load: a flipped byte is refused), and the identity of what the run trains
on (pipeline/runtime/run_identity.py), compared before anything is restored.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.runtime.atomic import torch_save
from pipeline.runtime.errors import CompressError
from pipeline.runtime.run_identity import describe
from pipeline.runtime.tensor_check import first_non_finite, tensors_sha256


def save_checkpoint(path: str | Path, *, step: int, epoch: int, extra: dict | None = None,
                    identity: dict | None = None, **objects) -> None:
    """Write the checkpoint, or raise CompressError (and write nothing) when a tensor is not finite or the
    write fails."""
    payload = {"step": step, "epoch": epoch, "extra": extra or {}, "identity": identity,
               "rng": {"torch": torch.get_rng_state(),
                       "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
               "objects": {name: obj.state_dict() for name, obj in objects.items()}}
    path = Path(path)
    bad = first_non_finite(payload["objects"])
    if bad is not None:
        kept = f"the last good checkpoint {path} is intact" if path.exists() else "no checkpoint was written"
        raise CompressError(f"non-finite values in {bad} at step {step} (epoch {epoch}): not saved, {kept}; "
                            f"lower --lr or use --amp none")
    payload["tensors_sha256"] = tensors_sha256(payload)
    torch_save(path, payload)


def restore_checkpoint(path: str | Path, expect_identity: dict | None = None, **objects) -> dict:
    """Load every named object's state; return {"step", "epoch", "extra", "restored": [names]}.

    The file is read onto the CPU: each object's `load_state_dict` copies the values to the device its own
    tensors live on, and the RNG states must stay CPU ByteTensors (mapping them to a GPU breaks resume there).

    A name missing from the checkpoint, or an object whose keys differ, is an error: a partial restore would
    silently train something else. So are tensors that differ from the recorded checksum or are not finite, and,
    when `expect_identity` is given, a run trained on other data or another teacher.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0].split(". ")[0][:120] if str(e) else ""
        raise CompressError(f"checkpoint {str(path)!r} is truncated or corrupt ({type(e).__name__}: {first}); "
                            f"delete it to start the run over (model.pt, if any, is kept)")
    if not isinstance(payload, dict) or "tensors_sha256" not in payload:
        raise CompressError(f"checkpoint {path} carries no checksum of its tensors (written by an older version); "
                            f"delete it to start the run over, or choose a new --out folder")
    recorded = payload.pop("tensors_sha256")
    if tensors_sha256(payload) != recorded:
        raise CompressError(f"checkpoint {path} is damaged: its tensors do not match their recorded checksum; "
                            f"delete it to start the run over (model.pt, if any, is kept)")
    bad = first_non_finite(payload.get("objects", {}))
    if bad is not None:
        raise CompressError(f"checkpoint {path} holds non-finite values ({bad}); delete it to start the run over")
    if expect_identity is not None and payload.get("identity") != expect_identity:
        raise CompressError(f"{path} was trained on {describe(payload.get('identity'))}, but this command gives "
                            f"{describe(expect_identity)}; resume with the data and teacher cache it was trained "
                            f"on, or choose a new --out folder")
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
