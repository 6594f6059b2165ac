"""Stage `evaluate`: features of one model (a model file, a teacher cache, or a random-init reference) over
the image store, then NN / kNN-20 / linear / CA (pipeline.evaluation.scoring), written as a DVC metrics JSON.

Student features are cached beside the metrics as `<out>.features.npy` with a key file naming the sha256 of
the model file and the data fingerprint; a key that differs means recompute, never reuse (the original
release reused another model's features from its output folder). Features are kept in fp16, like the teacher
cache, and every protocol reads the fp16 values, so a first run and a cached run give the same numbers.

Memory: the features are one (N, D) fp16 matrix (pipeline/evaluation/features.py), filled in place by the
embedding pass (or read block by block from the stored copy or the cache), with train and val as views of it;
every protocol reads it in blocks on the stage's device. A reference for the agreement is a second such matrix.

Given a reference (`compare_cache`, the teacher's cache, or `compare_model`), the metrics also hold the teacher
agreement `agree10` / `agree1` (pipeline/evaluation/agreement.py) and the reference's identity under `agreement.against`.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.runtime.device import pick_device
from pipeline.evaluation import features
from pipeline.evaluation.embed import embed_blocks
from pipeline.evaluation.features import Layout
from pipeline.data.eval_view import describe
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import ImageStore
from pipeline.evaluation.linear_probe import check_frozen, snapshot
from pipeline.models.modelfile import default_preprocessing, load_model
from pipeline.models.backbones import build_backbone, check_input_size
from pipeline.evaluation.scoring import evaluate_features
from pipeline.runtime.provenance import provenance, sha256_file
from pipeline.runtime.atomic import write_text
from pipeline.runtime.settings import setting

METRICS = ("nn", "knn20", "linear", "ca")
PROBES = ("cached", "augmented")  # the fast probe on the features; the paper's, on augmented views


@dataclass
class EvaluateConfig:
    """Every setting of `eval`, with its default, help and range (pipeline/runtime/settings.py); the CLI's options are
    generated from these fields. Exactly one of model / cache / random_init names what is evaluated."""
    data: Path = setting(MISSING, "Image-store folder (from `compress-cache prepare`).")
    out: Path = setting(MISSING, "Metrics JSON to write, e.g. metrics/mnv2.json.")
    model: Path | None = setting(None, "A model file (model.pt) written by `compress-cache train`.", shown="none")
    cache: Path | None = setting(None, "A teacher cache (.zarr): evaluates the teacher itself.", shown="none")
    random_init: str | None = setting(None, "A randomly initialised architecture (seeded): the floor every trained "
                                            "model should beat.", shown="none")
    small_input: bool = setting(False, "With --random-init: the 8-64 px stem (3x3 stride-1 conv, no max-pool).",
                                flag="--small-input/--imagenet-stem")
    input_size: int | None = setting(None, "With --random-init: input side.", shown="the images'", low=8)
    name: str | None = setting(None, "Row name in the report.", shown="the file name of --out")
    knn_k: int = setting(20, "Neighbours that vote in kNN.", low=1)
    knn_tau: float = setting(0.07, "Vote temperature: weight exp(cos/tau).", low=0, low_open=True)
    ca_clusters: int | None = setting(None, "k-means clusters for cluster assignment.", paper="1000",
                                      shown="the number of classes", low=2)
    probe: str = setting("cached", "Linear probe. cached: on the evaluation-view features computed once (fast). "
                                   "augmented: the paper's, RandomResizedCrop + flip views rendered every epoch "
                                   "through the frozen network (one forward pass over the train set per epoch; needs "
                                   "--model or --random-init).", choices=("cached", "augmented"))
    probe_epochs: int = setting(40, "Linear-probe epochs; the lr drops x0.1 at 15/40 and 30/40 of them (paper "
                                    "schedule). SGD lr 0.01, momentum 0.9, weight decay 1e-4; the last epoch's head "
                                    "is reported.", low=1)
    probe_batch_size: int | None = setting(256, "Probe batch; 0 trains full-batch.", low=0)
    probe_crop_scale_min: float = setting(0.08, "--probe augmented: RandomResizedCrop scale (MIN, 1); 0.08 is "
                                                "torchvision's and the paper's.", low=0, high=1, low_open=True)
    probe_hflip: bool = setting(True, "--probe augmented: random horizontal flips (the paper's); off for data where a "
                                      "mirror image is another class (digits).")
    seed: int = setting(0, "Seeds k-means, the probe and random init.", low=0)
    batch_size: int = setting(256, "Images per forward pass.", low=1)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.")
    figures: Path | None = setting(None, "Folder for the confusion-matrix and retrieval-grid PNGs (the grid: val "
                                         "queries and their neighbours under this model).", shown="none")
    compare_cache: Path | None = setting(None, "The teacher's cache (.zarr): adds the teacher agreement agree10 (mean "
                                               "overlap of the 10 nearest train images, student vs teacher) and "
                                               "agree1 (same nearest image); with --figures the grid shows the "
                                               "teacher's neighbours beside this model's.", shown="none")
    compare_model: Path | None = setting(None, "As --compare-cache, for a reference given as a model file.",
                                         shown="none")
    grid_queries: int = setting(8, "Val queries in the retrieval grid.", low=1, cli=False)
    grid_k: int = setting(6, "Neighbours per query in the retrieval grid.", low=1, cli=False)
    features_dir: Path | None = setting(None, "Folder for the keyed feature files.", shown="beside --out")
    features_memmap: bool = setting(False, "Hold the feature matrix in a memory-mapped scratch file in the "
                                           "features folder (unlinked at once, so nothing is left behind) "
                                           "instead of RAM; a teacher cache is read through its memory-mapped "
                                           "copy. For feature matrices near the size of RAM.")


# ---------------------------------------------------------------- features of each kind of source

def _cache_features(path: Path, store: ImageStore, layout: Layout, memmap_dir) -> tuple[np.ndarray, dict]:
    from cache.errors import CacheError
    from cache.load import load_embeddings
    if not Path(path).exists():
        raise CompressError(f"teacher cache {str(path)!r} does not exist; build it with `compress-cache extract`")
    try:
        mapped = {} if memmap_dir is None else {"mmap": True}  # through the cache's flat memory-mapped copy
        emb, attrs = load_embeddings(path, expect_fingerprint=store.fingerprint, **mapped)
    except CacheError as e:
        raise CompressError(str(e)) from None
    if len(emb) != store.n:
        raise CompressError(f"{len(emb)} cache rows for {store.n} images in {store.root}; rebuild the cache")
    emb = emb.numpy()
    if emb.ndim == 2 and emb.dtype == features.DTYPE and layout.position is None:
        x = emb  # one view, in store order: the cache's array is the matrix
    else:  # view 0 (the centre crop) of a multi-view cache, or rows to reorder: one pass into the matrix
        view0 = emb[:, 0] if emb.ndim == 3 else emb
        step = max(1, (16 << 20) // view0[0].nbytes)
        x = features.fill(((lo, view0[lo:lo + step]) for lo in range(0, store.n, step)), layout, memmap_dir)
    teacher = attrs.get("teacher") or {}
    return x, {"kind": "teacher", "cache": str(path), "teacher": teacher,
               "preprocessing": teacher.get("preprocessing")}


def _keyed_features(path: Path, key: dict, compute, layout: Layout, memmap_dir) -> np.ndarray:
    """Features from `path` when its key file matches `key` exactly; else compute (into the fp16 matrix), store
    in store order, and key."""
    key_path = path.with_name(path.name + ".key")
    if path.is_file() and key_path.is_file() and json.loads(key_path.read_text()) == key:
        x = features.load(path, layout, memmap_dir)
        if x is not None:
            return x
    x = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    key_path.unlink(missing_ok=True)  # a run killed between the two writes must not pair new rows with an old key
    features.save(path, x, layout)
    write_text(key_path, json.dumps(key, indent=1) + "\n")
    return x


def _embed(backbone, store, preprocessing, cfg: EvaluateConfig, device, layout: Layout, memmap_dir) -> np.ndarray:
    before = snapshot(backbone)
    blocks = embed_blocks(backbone.to(device), store, preprocessing, 0, store.n, cfg.batch_size, device)
    x = features.fill(blocks, layout, memmap_dir)  # each block written in place: no list of parts, no concatenation
    check_frozen(backbone, before)  # MoCo's sanity check: evaluation must not touch the weights
    return x


def _model_features(path: Path, store, cfg, device, features_path: Path, layout: Layout,
                    memmap_dir) -> tuple[np.ndarray, dict]:
    backbone, meta = load_model(path)
    if meta.get("data_fingerprint") is not None and meta["data_fingerprint"] != store.fingerprint:
        raise CompressError(f"model {path} was trained on data with fingerprint {meta['data_fingerprint'][:12]}, "
                            f"but {store.root} has {store.fingerprint[:12]}; evaluate it on the data it was "
                            f"trained on")
    key = {"model_sha256": sha256_file(path), "data_fingerprint": store.fingerprint,
           "preprocessing": meta["preprocessing"], "dtype": "float16"}
    z = _keyed_features(features_path, key,
                        lambda: _embed(backbone, store, meta["preprocessing"], cfg, device, layout, memmap_dir),
                        layout, memmap_dir)
    return z, {"kind": "student", "model": str(path), "model_sha256": key["model_sha256"],
               "arch": meta.get("arch"), "method": meta.get("method"), "preprocessing": meta["preprocessing"]}


def _random_backbone(cfg: EvaluateConfig, store) -> tuple[torch.nn.Module, dict]:
    size = cfg.input_size or store.shape[1]
    backbone = build_backbone(cfg.random_init, cfg.small_input, seed=cfg.seed).eval()
    check_input_size(backbone, size, f"random-init {cfg.random_init}")
    return backbone, default_preprocessing(size)


def _random_features(cfg: EvaluateConfig, store, device, features_path: Path, layout: Layout,
                     memmap_dir) -> tuple[np.ndarray, dict]:
    backbone, prep = _random_backbone(cfg, store)
    size = prep["input_size"]
    key = {"random_init": cfg.random_init, "small_input": cfg.small_input, "seed": cfg.seed,
           "torch": torch.__version__, "data_fingerprint": store.fingerprint, "preprocessing": prep,
           "dtype": "float16"}
    z = _keyed_features(features_path, key, lambda: _embed(backbone, store, prep, cfg, device, layout, memmap_dir),
                        layout, memmap_dir)
    return z, {"kind": "random-init", "arch": cfg.random_init, "small_input": cfg.small_input,
               "seed": cfg.seed, "input_size": size, "preprocessing": prep}


def features_of(cfg: EvaluateConfig, store: ImageStore, layout: Layout, device, model=None, cache=None,
                tag="") -> tuple:
    """(features (rows, D) fp16 in `layout`, source description) of the one source named by model / cache /
    random_init."""
    folder = Path(cfg.features_dir) if cfg.features_dir else cfg.out.parent
    folder.mkdir(parents=True, exist_ok=True)
    features_path = folder / f"{cfg.out.stem}{tag}.features.npy"
    memmap_dir = folder if cfg.features_memmap else None
    if cache is not None:
        return _cache_features(cache, store, layout, memmap_dir)
    if model is not None:
        return _model_features(Path(model), store, cfg, device, features_path, layout, memmap_dir)
    return _random_features(cfg, store, device, features_path, layout, memmap_dir)


# ---------------------------------------------------------------- the stage

def _check_sources(cfg: EvaluateConfig) -> None:
    given = [n for n, v in (("--model", cfg.model), ("--cache", cfg.cache), ("--random-init", cfg.random_init))
             if v is not None]
    if len(given) != 1:
        raise CompressError(f"give exactly one of --model, --cache, --random-init (got {', '.join(given) or 'none'})")
    if cfg.compare_cache is not None and cfg.compare_model is not None:
        raise CompressError("give at most one of --compare-cache, --compare-model")
    if cfg.probe not in PROBES:
        raise CompressError(f"unknown --probe {cfg.probe!r}; use one of {', '.join(PROBES)}")
    if cfg.probe == "augmented" and cfg.cache is not None:
        raise CompressError("--probe augmented trains through the network, and a teacher cache holds only its "
                            "embeddings; evaluate the teacher's model file with --model, or use --probe cached")
    if not 0 < cfg.probe_crop_scale_min <= 1:
        raise CompressError(f"--probe-crop-scale-min {cfg.probe_crop_scale_min} must be in (0, 1]")
    if cfg.compare_cache is not None and not Path(cfg.compare_cache).exists():  # before the protocols run
        raise CompressError(f"--compare-cache {str(cfg.compare_cache)!r} does not exist; give the teacher cache "
                            f"(.zarr) built by `compress-cache extract`")
    for flag, p in (("--model", cfg.model), ("--compare-model", cfg.compare_model)):
        if p is not None and not Path(p).is_file():
            raise CompressError(f"{flag} {str(p)!r} does not exist; give the model.pt written by "
                                f"`compress-cache train`")


def evaluate(cfg: EvaluateConfig) -> dict:
    """Run every protocol on one model's features, write `cfg.out`, return the metrics dict."""
    _check_sources(cfg)
    store = ImageStore(cfg.data)
    device = pick_device(cfg.device)
    train, val = store.indices("train"), store.indices("val")
    layout = Layout.of(train, val, store.n)  # train and val: views of the one fp16 matrix
    x, source = features_of(cfg, store, layout, device, model=cfg.model, cache=cfg.cache)
    result = evaluate_features(layout.train_rows(x), store.labels[train], layout.val_rows(x), store.labels[val],
                               store.num_classes,
                               knn_k=cfg.knn_k, knn_tau=cfg.knn_tau, ca_clusters=cfg.ca_clusters, seed=cfg.seed,
                               probe_epochs=cfg.probe_epochs, probe_batch_size=cfg.probe_batch_size,
                               device=device, return_predictions=True,
                               train_linear=_augmented_probe(cfg, store, train) if cfg.probe == "augmented" else None)
    predictions = result.pop("predictions")
    metrics = {"name": cfg.name or cfg.out.stem, **{k: result[k] for k in METRICS}, "ca_count": result["ca_count"],
               "source": source, "data_fingerprint": store.fingerprint,
               "protocols": {**result["protocols"], "features": _features_note(source)},
               "provenance": provenance(asdict(cfg))}
    ref = None
    if cfg.compare_cache is not None or cfg.compare_model is not None:
        ref = features_of(cfg, store, layout, device, model=cfg.compare_model, cache=cfg.compare_cache,
                          tag=".compare")
        metrics.update(_agreement(cfg, store, x, ref, layout, device))
    if cfg.figures is not None:
        metrics["figures"] = _figures(cfg, store, device, x, predictions["knn"], layout, ref)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(cfg.out, json.dumps(metrics, indent=2, default=str) + "\n")
    return metrics


def _augmented_probe(cfg: EvaluateConfig, store: ImageStore, train: np.ndarray):
    """The paper's probe through this model's network (a model file's, or the seeded random-init one)."""
    from pipeline.evaluation.augmented_probe import AugmentedProbeConfig, train_augmented_probe
    if cfg.model is not None:
        backbone, meta = load_model(cfg.model)
        prep = meta["preprocessing"]
    else:
        backbone, prep = _random_backbone(cfg, store)
    probe = AugmentedProbeConfig(epochs=cfg.probe_epochs, batch_size=cfg.probe_batch_size, seed=cfg.seed,
                                 crop_scale=(cfg.probe_crop_scale_min, 1.0), flip=cfg.probe_hflip)

    def train_linear(train_x, train_y, num_classes, device):
        return train_augmented_probe(backbone, store, train, prep, train_x, train_y, num_classes, probe, device)
    return train_linear


def _agreement(cfg: EvaluateConfig, store: ImageStore, x: np.ndarray, ref: tuple, layout: Layout, device) -> dict:
    """agree10 / agree1 of this model against the reference (pipeline/evaluation/agreement.py), with the reference's
    identity: a cache by its teacher weights, data and shard checksums; a model file by its sha256."""
    from pipeline.evaluation.agreement import teacher_agreement
    from pipeline.runtime.run_identity import run_identity
    z, ref_source = ref
    a = teacher_agreement(layout.train_rows(x), layout.val_rows(x), layout.train_rows(z), layout.val_rows(z),
                          device=device)
    if cfg.compare_cache is not None:
        against = {"kind": "teacher cache", "cache": str(cfg.compare_cache),
                   **run_identity(store.fingerprint, cache=cfg.compare_cache)["teacher"]}
    else:
        against = {"kind": "model", "model": str(cfg.compare_model), "model_sha256": ref_source["model_sha256"]}
    return {"agree10": a["agree10"], "agree1": a["agree1"],
            "agreement": {"against": against, "k": a["k"],
                          "agree10": f"mean over val of |S & T| / {a['k']}, S and T the {a['k']} nearest train "
                                     f"images (cosine) under this model and under the reference",
                          "agree1": "fraction of val images whose nearest train image is the same under both"}}


def _features_note(source: dict) -> str:
    prep = source.get("preprocessing")
    view = describe(prep) if prep else "the cache's view 0 (no preprocessing recorded)"
    return f"l2-normalised pooled backbone output of the evaluation view: {view}"


def _figures(cfg, store, device, x, knn_pred, layout: Layout, ref=None) -> list[str]:
    from pipeline.evaluation import figures
    from pipeline.evaluation.search import search
    train, val = layout.train, layout.val
    name = cfg.name or cfg.out.stem
    classes = store.manifest.get("classes")
    paths = [figures.confusion_matrix(store.labels[val], knn_pred, store.num_classes,
                                      cfg.figures / f"{name}_confusion.png",
                                      f"{name}: kNN-{cfg.knn_k} on val", classes)]
    # the retrieval grid: this model's neighbours, beside the reference's (teacher) when one is given
    queries = np.sort(np.random.default_rng(cfg.seed).choice(val, min(cfg.grid_queries, len(val)), False))
    q_rows = layout.matrix_rows(queries)
    ids_own = train[search(layout.train_rows(x), x[q_rows], cfg.grid_k, device)[1]]
    ids_ref, names = None, (name,)
    if ref is not None:
        ref, ref_source = ref
        ids_ref = train[search(layout.train_rows(ref), ref[q_rows], cfg.grid_k, device)[1]]
        names = ("teacher" if ref_source["kind"] == "teacher" else Path(str(cfg.compare_model)).stem, name)
    shown = [queries, ids_own.ravel()] + ([] if ids_ref is None else [ids_ref.ravel()])
    rows = np.unique(np.concatenate(shown))
    images = np.stack([store.read(int(r), int(r) + 1)[0] for r in rows])  # only the rows shown
    local = {int(r): i for i, r in enumerate(rows)}
    remap = np.vectorize(local.__getitem__)
    first, second = (remap(ids_own), None) if ids_ref is None else (remap(ids_ref), remap(ids_own))
    paths.append(figures.retrieval_grid(images, store.labels[rows], remap(queries), first, second,
                                        cfg.figures / f"{name}_retrieval.png", names, classes))
    return [str(p) for p in paths]
