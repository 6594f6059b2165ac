"""Which library and device run the evaluation's searches and k-means, decided once from the stage's device.

    device cpu                       faiss on the CPU (faiss-cpu or faiss-gpu), torch on the CPU without faiss
    device cuda, faiss sees a GPU    faiss on that GPU (faiss-gpu)
    device cuda, faiss has no GPU    torch on the GPU (faiss-cpu installed, or no faiss at all)

Both libraries compute the same exact cosine search (pipeline/evaluation/search.py); k-means is faiss's own
algorithm under faiss and a seeded Lloyd in torch (pipeline/evaluation/kmeans.py), so `library` is recorded with
every CA number. Block sizes live here too: every N x D pass converts one block of rows at a time to float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

try:  # faiss is optional: without it every protocol runs in torch
    import faiss
except ImportError:  # pragma: no cover - exercised by monkeypatching `faiss = None` in the tests
    faiss = None

CPU_BLOCK_BYTES = 16 << 20  # one float32 block of rows (or one similarity tile) on the CPU
GPU_BLOCK_BYTES = 512 << 20  # on a GPU: larger tiles keep it busy, and its memory is not the host's


@dataclass(frozen=True)
class Backend:
    library: str  # "faiss" or "torch"
    device: torch.device  # where the arithmetic runs

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def name(self) -> str:
        return f"{self.library}-{'gpu' if self.gpu else 'cpu'}"

    def block_rows(self, dim: int, floats_per_row: int | None = None) -> int:
        """Rows per block so that a float32 block of `floats_per_row` (default `dim`) values per row stays within
        the block budget: the unit that bounds every temporary above the fp16 feature matrix."""
        budget = GPU_BLOCK_BYTES if self.gpu else CPU_BLOCK_BYTES
        return max(1, budget // (4 * max(1, floats_per_row or dim)))

    def gpu_resources(self):
        """faiss's GPU resources, made once per process (they hold cuBLAS handles and scratch memory)."""
        global _RESOURCES
        if _RESOURCES is None:
            _RESOURCES = faiss.StandardGpuResources()
        return _RESOURCES


_RESOURCES = None


def faiss_gpus() -> int:
    """GPUs faiss can use: 0 for faiss-cpu (it has no StandardGpuResources) or without faiss."""
    if faiss is None or not hasattr(faiss, "StandardGpuResources"):
        return 0
    return faiss.get_num_gpus()


def choose(device: torch.device | str = "cpu") -> Backend:
    """The backend for `device` (see the module's table)."""
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return Backend("faiss" if faiss_gpus() > device.index else "torch", device)
    return Backend("torch" if faiss is None else "faiss", torch.device("cpu"))
