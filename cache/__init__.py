"""The teacher feature cache as a storage format: a sharded Zarr v3 store written whole shard by whole shard,
resumable, rank-aware, checksummed, and loaded for training in one validated pass.

Independent of `pipeline/` and `stages/`: callers pass in identities and provenance as plain dicts.

    cache.layout   what is on disk; CacheSpec, the request that fixes a store's identity
    cache.store    create / open a store, identity check
    cache.lock     one writer per store
    cache.writer   whole-shard writes, read-back verification, resume, finalize
    cache.load     load_embeddings / load_crops for training
    cache.verify   verify_store / info
"""
from cache.errors import CacheError

__all__ = ["CacheError"]
