"""Load weights into a module only when they fit it exactly, and say precisely how they do not.

`load_state_dict(strict=False)` is how a wrong key prefix becomes a random teacher. Here every missing key,
unexpected key and shape mismatch is collected first and reported together (first few of each, with counts), with
a hint when all the unexpected keys share a prefix that the model does not have.

`num_batches_tracked` is the one exception: BatchNorm's step counter is not a weight, older checkpoints lack it,
and PyTorch itself fills it in for them; it is filled with zeros here as well.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.runtime.errors import CompressError

_SHOW = 4


def _listing(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """'keys carry an extra prefix X' when stripping X from every unexpected key gives the missing ones."""
    if not missing or not unexpected:
        return ""
    first = unexpected[0]
    for cut in range(1, len(first)):
        if first[cut - 1] != ".":
            continue
        prefix = first[:cut]
        if all(k.startswith(prefix) for k in unexpected) and {k[cut:] for k in unexpected} >= set(missing):
            return f"; every checkpoint key carries the extra prefix {prefix!r}, which this format does not expect"
    return ""


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Assign `sd` to `module` (which may live on the meta device); raise a CompressError unless it fits."""
    expected = module.state_dict()
    sd = {k: v for k, v in sd.items() if not (k.endswith("num_batches_tracked") and k not in expected)}
    for k, v in expected.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing ({_listing(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({_listing(unexpected)})" if unexpected else "",
                 f"{len(wrong)} of another shape (checkpoint vs model: {_listing(wrong)})" if wrong else ""]
        raise CompressError(f"{what}: " + "; ".join(p for p in parts if p) + _prefix_hint(missing, unexpected))
    sd = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}
    module.load_state_dict(sd, strict=True, assign=True)
    if any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
        raise CompressError(f"{what}: some tensors of the model were not in the checkpoint and have no value")
    return module
