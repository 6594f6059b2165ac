"""Every row of a store through a frozen backbone, as one (N, D) tensor: the reference that tests compare
caches, exports and probes with (the package itself fills an fp16 matrix block by block instead)."""
import torch

from pipeline.evaluation.embed import embed_blocks


def embed_store(backbone, store, preprocessing, batch_size=256) -> torch.Tensor:
    """(N, D) l2-normalised float32 embeddings of every row of `store`, on the CPU."""
    blocks = embed_blocks(backbone, store, preprocessing, 0, store.n, batch_size, torch.device("cpu"))
    return torch.cat([z for _, z in blocks])
