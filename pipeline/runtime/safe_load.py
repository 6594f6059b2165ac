"""Open a checkpoint someone else wrote without running their code.

`torch.load` unpickles, and a pickle can call any function (the original CompRess release loaded teachers that
way). Here every checkpoint goes through `torch.load(weights_only=True)`, which only rebuilds tensors, containers
and plain values; anything else is refused with a message that says why and what the user can do, never with
PyTorch's advice to retry with `weights_only=False`.
"""
from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch

from pipeline.runtime.errors import CompressError

# Official DINO and torchvision-reference checkpoints store their command line as an argparse.Namespace.
# Rebuilding one only sets attributes (no call of user code), so it is allowed next to the tensor types.
_ALLOWED_GLOBALS = [argparse.Namespace]


def load_checkpoint(path: str | Path) -> object:
    """The unpickled content of `path` (on the CPU), or a CompressError naming what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"checkpoint {str(path)!r} does not exist or is not a file; check --weights")
    if path.stat().st_size == 0:
        raise CompressError(f"checkpoint {path} is empty (0 bytes); download or copy it again")
    try:
        with torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found is None:  # not a refusal by weights_only: bytes that are no pickle at all
            raise CompressError(f"checkpoint {path} cannot be read: not a PyTorch file; "
                                f"download or copy it again") from None
        raise CompressError(f"checkpoint {path} was refused: it is a pickle that needs code execution to load"
                            f" (it calls {found.group(1)}). Only tensors and plain containers are accepted; "
                            f"re-save the weights with torch.save(model.state_dict(), PATH) from code you trust"
                            ) from None
    except Exception as e:  # a text file or random bytes fail deep in the unpickler (IndexError, ...)
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CompressError(f"checkpoint {path} cannot be read: truncated, corrupted or not a PyTorch file "
                            f"({type(e).__name__}: {first}); download or copy it again") from None
    if isinstance(obj, dict) and "tensors_sha256" in obj:  # files this project writes carry their checksum
        from pipeline.runtime.tensor_check import tensors_sha256
        recorded = obj.pop("tensors_sha256")
        if tensors_sha256(obj) != recorded:
            raise CompressError(f"{path} is damaged: its tensors do not match the checksum recorded when it was "
                                f"written; copy it again or re-create it")
    return obj
