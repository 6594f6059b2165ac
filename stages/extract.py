"""Stage `extract`: run the frozen teacher once over the image store and write its l2-normalised embeddings to
a sharded Zarr cache (cache/), on one process or under torchrun.

Each rank owns a contiguous block of whole shards (cache.layout.rank_shards) and computes every shard on its
own, batches starting at the shard's first row, so the bytes of shard k do not depend on which process, how
many processes, or which run (first or resumed) computed it. Before anything is written every rank's data
fingerprint, teacher weights and code are checked against rank 0's (nodes may read other copies). Rank 0 takes
the lock, creates or checks the store, and marks it complete once every rank has finished.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cache.errors import CacheError
from cache.layout import CacheSpec, rank_shards
from cache.lock import StoreLock
from cache.store import attributes, open_or_create
from cache.writer import CacheWriter
from pipeline.runtime import distributed
from pipeline.data.augment import center_crops, sample_crops
from pipeline.runtime.code_digest import code_digest
from pipeline.runtime.device import AMP_DTYPES, pick_amp, pick_device
from pipeline.evaluation.embed import embed_blocks
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import ImageStore
from pipeline.models.backbones import check_input_size
from pipeline.runtime.provenance import provenance
from pipeline.models.checkpoint_formats import FORMATS
from pipeline.models.teachers import EMBEDDINGS, load_teacher
from pipeline.runtime.settings import setting


@dataclass
class ExtractConfig:
    """Every setting of `extract`, with its default, help and range (pipeline/runtime/settings.py); the CLI's options
    are generated from these fields."""
    data: Path = setting(MISSING, "Image store from `prepare`.")
    weights: Path = setting(MISSING, "Teacher checkpoint file.")
    out: Path = setting(MISSING, "Zarr store to write, e.g. runs/teacher.zarr.")
    teacher: str | None = setting(None, "Teacher architecture, e.g. resnet50, dinov2_vits14, timm:NAME (timm models "
                                        "need it).", shown="read from --weights")
    weights_format: str = setting("auto", "Checkpoint format; auto detects it from the keys (and an export's sidecar "
                                          "FILE.json).", choices=FORMATS)
    embedding: str = setting("backbone", "backbone: the pooled feature (ViTs: CLS after the final norm); head: the "
                                         "checkpoint's projection head; cls+avgpool: ViTs only, CLS and the mean "
                                         "patch token (DINOv2's linear-probe feature).", choices=EMBEDDINGS)
    input_size: int | None = setting(None, "Input side in px; a ViT's must be a multiple of its patch. Recorded in "
                                           "the cache.", shown="the teacher's own (official formats: 224)", low=8)
    dtype: str = setting("float16", "float16 halves disk and RAM; a unit row's self-dot and any dot product move by "
                                    "less than 1e-3 (measured: up to 5.4e-4 at 64-d, 9e-5 at 2048-d; "
                                    "benchmarks/fp16_cosine.py).", choices=("float16", "float32"))
    views: int = setting(1, "Views per image. >1 adds RandomResizedCrop+flip views (view 0 = the evaluation view) "
                            "and stores their crops.", low=1)
    view_seed: int = setting(0, "Seed of the augmented views.", low=0)
    view_scale: tuple[float, float] = setting((0.2, 1.0), "Crop scale of the augmented views.", cli=False)
    view_ratio: tuple[float, float] = setting((3 / 4, 4 / 3), "Crop aspect ratio of the augmented views.", cli=False)
    view_flip: bool = setting(True, "Random flips in the augmented views.", cli=False)
    batch_size: int = setting(256, "Images per forward pass.", low=1)
    shard_rows: int = setting(0, "Rows per shard (the unit of writing and resuming); 0 picks ~32 MiB shards.", low=0)
    chunk_rows: int = setting(0, "Rows per chunk; 0: min(1024, shard rows).", low=0, cli=False)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    overwrite: bool = setting(False, "Rebuild a store made for another request instead of refusing.")
    amp: str = setting("auto", "Autocast of the teacher's forward: auto is bf16 on a GPU and none on the CPU "
                               "(recorded in the cache; rows differ from full precision by about the fp16 storage "
                               "error).", choices=("auto", "none", "bf16", "fp16"))
    rebuild_if_changed: bool = setting(False, "Rebuild the store when it was made for another request or by other "
                                              "code; resume or reuse it otherwise (what dvc.yaml passes).")
    progress: bool = setting(True, "A progress bar (--no-progress for logs, CI).")


def view_crops(spec: CacheSpec, k: int, lo: int, hi: int, image_hw: tuple[int, int], crop_fraction: float,
               regions=None):
    """(rows, V, 5) crops of shard k: a function of (view seed, k) only (and of the store's valid regions
    `regions` (rows, 4) of a letterboxed store, inside which every view lies), so any rank reproduces them."""
    crops = [center_crops(hi - lo, crop_fraction, image_hw, regions)]
    if spec.views > 1:
        p = spec.view_params
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([p["seed"], k]).generate_state(1)[0]))
        crops += [sample_crops(hi - lo, generator, image_hw, tuple(p["scale"]), tuple(p["ratio"]), p["flip"],
                               regions=regions) for _ in range(spec.views - 1)]
    return torch.stack(crops, dim=1)


class ReadAhead:
    """An image store whose next block is read in a background thread while the teacher computes.

    embed_blocks reads consecutive [lo, hi) blocks of equal size; after serving one, this reads the following
    one ahead (h5py reads hold the GIL, the teacher's forward releases it). At most two blocks are in memory.
    """

    def __init__(self, store: ImageStore, stop: int, pool: ThreadPoolExecutor):
        self.store, self.stop, self.pool = store, stop, pool
        self.ahead: tuple[int, int, Future] | None = None

    def regions(self):
        return self.store.regions()

    def read(self, lo: int, hi: int) -> np.ndarray:
        if self.ahead is not None and self.ahead[:2] == (lo, hi):
            block = self.ahead[2].result()
        else:
            block = self.store.read(lo, hi)
        nxt = min(hi + (hi - lo), self.stop)
        self.ahead = (hi, nxt, self.pool.submit(self.store.read, hi, nxt)) if hi < self.stop else None
        return block


def _embed_shard(teacher, store, spec, prep, lo, hi, crops, batch_size, device, bar, reader) -> np.ndarray:
    views = []
    for v in range(spec.views):
        parts = []
        source = ReadAhead(store, hi, reader)
        view = None if v == 0 else crops[:, v]  # view 0: the evaluation view (pipeline.data.eval_view), as `eval`
        for _, z in embed_blocks(teacher, source, prep, lo, hi, batch_size, device, crops=view,
                                 amp_dtype=AMP_DTYPES[spec.amp]):
            parts.append(z)
            if bar is not None:
                bar.update(len(z) / spec.views)
        views.append(torch.cat(parts))
    z = torch.stack(views, dim=1) if spec.views > 1 else views[0]
    if z.shape[-1] != spec.dim:
        raise CompressError(f"the teacher outputs {z.shape[-1]}-d embeddings but its identity says {spec.dim}")
    return z.to(getattr(torch, spec.dtype)).numpy()


def _request(cfg: ExtractConfig, store: ImageStore, identity: dict, device: torch.device) -> CacheSpec:
    amp = pick_amp(cfg.amp, device)
    view_params = {}
    if cfg.views > 1:
        view_params = {"seed": cfg.view_seed, "scale": list(cfg.view_scale), "ratio": list(cfg.view_ratio),
                       "flip": cfg.view_flip}
    return CacheSpec(n=store.n, dim=identity["embed_dim"], data_fingerprint=store.fingerprint, teacher=identity,
                     dtype=cfg.dtype, views=cfg.views, shard_rows=cfg.shard_rows, chunk_rows=cfg.chunk_rows,
                     view_params=view_params, amp=amp, code=code_digest())


def _open(cfg: ExtractConfig, spec: CacheSpec, world) -> tuple[StoreLock | None, bool]:
    """Rank 0 locks and opens/creates the store; every rank learns the outcome (or the error) together."""
    lock, outcome = None, None
    if world.is_main:
        try:
            lock = StoreLock(cfg.out).acquire()
            group = open_or_create(cfg.out, spec, cfg.overwrite, provenance(asdict(cfg)), cfg.rebuild_if_changed)
            writer = CacheWriter(cfg.out)
            writer.clean_debris()
            outcome = {"complete": bool(attributes(group)["complete"]), "repaired": []}
            if outcome["complete"]:  # checked before it is called complete: every shard against its checksum
                writer.clear_progress()  # left by a kill between `complete = true` and the markers' removal
                damaged = writer.damaged_shards()
                if damaged:
                    writer.reopen(damaged)
                    outcome = {"complete": False, "repaired": damaged}
        except OSError as e:
            if lock is not None:
                lock.release()
            outcome = {"error": f"cannot prepare {cfg.out} for writing: {e.strerror or e} "
                                f"({e.filename or cfg.out}); fix the cause and re-run the same command"}
        except CacheError as e:
            if lock is not None:
                lock.release()
            outcome = {"error": str(e)}
    outcome = distributed.broadcast_object(outcome)
    if "error" in outcome:
        raise CacheError(outcome["error"])
    return lock, outcome["complete"], outcome["repaired"]


def extract(cfg: ExtractConfig) -> dict:
    """Write (or resume, or reuse) the cache at cfg.out; return {attributes, shards_written, rows_written, seconds}."""
    if cfg.views < 1 or cfg.batch_size < 1:
        raise CompressError(f"--views {cfg.views} and --batch-size {cfg.batch_size} must be at least 1")
    device = pick_device(cfg.device)
    started_group = not torch.distributed.is_initialized()
    world = distributed.init(device)
    try:
        return _extract(cfg, device, world)
    finally:
        if started_group:
            distributed.cleanup()


def _extract(cfg: ExtractConfig, device: torch.device, world) -> dict:
    with distributed.stop_together():  # a process that cannot read its inputs stops every process
        store = ImageStore(cfg.data)
        teacher, identity = load_teacher(cfg.weights, cfg.teacher, cfg.weights_format, cfg.embedding,
                                         cfg.input_size)
        teacher = teacher.to(device)
        check_input_size(teacher, identity["preprocessing"]["input_size"], f"teacher {identity['arch']}")
        spec = _request(cfg, store, identity, device)
    # every rank writes its rows under rank 0's fingerprint: node-local paths must hold the same data, weights and
    # code, checked before anything is written
    distributed.require_same({"data fingerprint": spec.data_fingerprint,
                              "teacher weights sha256": identity["weights_sha256"], "code digest": spec.code},
                             "give every node identical copies of --data and --weights, and the same code")
    prep = identity["preprocessing"]
    lock, complete, repaired = _open(cfg, spec, world)
    t0 = time.perf_counter()
    written = rows = 0
    try:
        writer = CacheWriter(cfg.out)
        if not complete:
            todo = writer.pending(rank_shards(spec.num_shards, world.rank, world.world_size))
            rows = sum(hi - lo for lo, hi in map(writer.rows, todo))
            bar = None
            if cfg.progress and world.is_main:
                from tqdm import tqdm
                bar = tqdm(total=rows, unit="img", desc=f"extract {Path(cfg.out).name}", dynamic_ncols=True)
            # Writing, read-back and hashing of shard k overlap the forward pass of shard k+1.
            with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=1) as reader:
                pending: Future | None = None
                for k in todo:
                    lo, hi = writer.rows(k)
                    regions = store.regions()
                    crops = view_crops(spec, k, lo, hi, store.shape[1:3], prep["crop_fraction"],
                                       None if regions is None else regions[lo:hi])
                    z = _embed_shard(teacher, store, spec, prep, lo, hi, crops, cfg.batch_size, device, bar, reader)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(writer.write_shard, k, z, crops.numpy() if spec.views > 1 else None)
                    written += 1
                if pending is not None:
                    pending.result()
            if bar is not None:
                bar.close()
        distributed.barrier()
        attrs = writer.finalize() if world.is_main and not complete else None
        attrs = distributed.broadcast_object(attrs)
        if attrs is None:
            attrs = attributes(writer.group)
    finally:
        if lock is not None:
            lock.release()
    return {"attributes": attrs, "shards_written": written, "rows_written": rows, "repaired": repaired,
            "seconds": time.perf_counter() - t0, "world_size": world.world_size}
