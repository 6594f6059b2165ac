"""Teacher loading: a checkpoint file -> a frozen backbone and the identity recorded in the cache."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.errors import CompressError
from pipeline.modelfile import load_model
from pipeline.provenance import sha256_file


def load_teacher(weights: str | Path, arch: str | None = None, weights_format: str = "auto",
                 embedding: str = "backbone") -> tuple[torch.nn.Module, dict]:
    """(frozen backbone in eval mode, identity dict) for a compress-cache model file."""
    if weights_format not in ("auto", "compress-cache"):
        raise CompressError(f"weights format {weights_format!r} is not supported yet; use auto")
    if embedding != "backbone":
        raise CompressError(f"embedding {embedding!r} is not supported yet; use backbone")
    model, meta = load_model(weights)
    if arch is not None and arch != meta["arch"]:
        raise CompressError(f"{weights} holds a {meta['arch']} but --teacher {arch!r} was given")
    for p in model.parameters():
        p.requires_grad_(False)
    identity = {"arch": meta["arch"], "small_input": meta["small_input"], "embed_dim": meta["embed_dim"],
                "weights_sha256": sha256_file(weights), "format": "compress-cache",
                "embedding": embedding, "preprocessing": meta["preprocessing"]}
    return model, identity
