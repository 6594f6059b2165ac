"""Training objectives, one module each; the trainer picks one by name (`--method`).

The contract is `pipeline.methods.base.Method`; each module registers its class with `@register`, and this
package imports every module in it, so the registry is complete whenever `pipeline.methods` is imported.
"""
from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from pipeline.runtime.errors import CompressError
from pipeline.methods.base import REGISTRY, BuildContext, DataInfo, Method  # noqa: F401  (the package's API)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# name -> whether it reads teacher embeddings (the cache, or a live teacher); CompRess's variants listed first
METHODS = {name: REGISTRY[name].needs_teacher for name in sorted(REGISTRY, key=lambda n: not n.startswith("compress"))}


def method_class(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise CompressError(f"unknown method {name!r}; use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def method_needs_teacher(name: str) -> bool:
    return method_class(name).needs_teacher


def build_method(name: str, student: nn.Module, *, teacher_dim: int | None, data: DataInfo, hp: dict,
                 generator=None, resuming: bool = False) -> Method:
    """The method `name` around `student`; see BuildContext for the arguments."""
    return method_class(name).build(name, BuildContext(student, teacher_dim, data, hp, generator, resuming))
