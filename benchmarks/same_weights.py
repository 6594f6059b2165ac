"""Do two versions of the code train alike? Train one small run with the code of a checkout; print a digest of
the model's tensors (their bytes, not the file, which records provenance).

Run it once per checkout (e.g. a `git worktree` of each revision) with the same work folder; equal digests mean
the change between them left training untouched, bit for bit, for this run (200 digits, a random teacher's
cache, CompRess-2q, in-RAM loader, 12 steps on the CPU):

    git worktree add /tmp/old OLD_REV
    .venv/bin/python benchmarks/same_weights.py /tmp/old /tmp/same
    .venv/bin/python benchmarks/same_weights.py . /tmp/same
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path


def tensor_digest(state) -> str:
    """sha256 over every tensor's bytes, keys in sorted order."""
    import torch
    h = hashlib.sha256()

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x):
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(state)
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="the repository whose code trains")
    ap.add_argument("work", type=Path, help="data shared by the runs, and one run folder per checkout")
    ap.add_argument("--steps", type=int, default=12)
    a = ap.parse_args()
    repo = a.checkout.resolve()
    if not all((repo / part).is_dir() for part in ("pipeline", "stages", "tests")):
        ap.error(f"checkout {a.checkout} is not a compress-cache checkout (it needs pipeline/, stages/ and tests/); "
                 f"make one with `git worktree add DIR REV`")
    if a.steps < 1:
        ap.error(f"--steps {a.steps} must be at least 1")
    sys.path.insert(0, str(repo))
    import torch
    import pipeline
    from stages.train import train
    from stages.train_config import config_from_dict
    from tests.train_fixtures import make_tiny
    if not Path(pipeline.__file__).resolve().is_relative_to(repo):
        sys.exit(f"the code imported is {pipeline.__file__}, not {repo}'s; run from outside an installed copy")
    data = a.work / "tiny"
    if not (data / "data").exists():
        make_tiny(data)
    out = a.work / f"run-{hashlib.sha256(str(repo).encode()).hexdigest()[:8]}"
    train(config_from_dict({"data": data / "data", "cache": data / "t1.zarr", "out": out, "preset": "tiny",
                            "student": "resnet18_w16", "steps": a.steps, "device": "cpu", "tensorboard": False,
                            "restart": "always"}))
    print(f"{repo}: model tensors {tensor_digest(torch.load(out / 'model.pt', weights_only=True))}")


if __name__ == "__main__":
    main()
