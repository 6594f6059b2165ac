"""The paper's linear protocol: the probe trained on augmented views rendered every epoch through the frozen
backbone (`eval --probe augmented`).

Every epoch, every training image is drawn as a fresh RandomResizedCrop (torchvision's default scale 0.08-1,
ratio 3/4-4/3) + horizontal flip (pipeline/data/augment.py, per sample, on the device) at the model's input size,
normalised with the model's mean/std, and embedded by the backbone in eval mode without gradients (BatchNorm
keeps its running statistics; `check_frozen` proves the weights did not move). The head, optimiser and schedule
are the fast probe's (pipeline/evaluation/linear_probe.py: l2-normalise -> standardisation fixed once from the
evaluation-view train features -> Linear; SGD lr 0.01, momentum 0.9, weight decay 1e-4, batch 256, 40 epochs,
x0.1 at 15 and 30). Val is scored on the evaluation-view features, as the paper's Resize(256) -> CenterCrop(224).

Cost: `epochs` forward passes over the training set (the fast probe needs none), which is what the paper paid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data.augment import render, sample_crops
from pipeline.runtime.errors import CompressError
from pipeline.data.imagestore import ImageStore
from pipeline.evaluation.linear_probe import (ProbeConfig, ProbeHead, check_frozen, fit_head, predictor, probe_record,
                                   snapshot, standardiser)
from pipeline.data.loader import BatchLoader

PROTOCOL = ("augmented: RandomResizedCrop + flip views rendered every epoch from the images through the frozen "
            "backbone (eval mode), l2-normalise, fixed standardisation, Linear; val on the evaluation view")


@dataclass
class AugmentedProbeConfig(ProbeConfig):
    crop_scale: tuple[float, float] = (0.08, 1.0)  # torchvision's RandomResizedCrop default, as the paper
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True


def train_augmented_probe(backbone: torch.nn.Module, store: ImageStore, train_indices: np.ndarray,
                          preprocessing: dict, train_x, train_y, num_classes: int,
                          cfg: AugmentedProbeConfig = AugmentedProbeConfig(),
                          device: torch.device = torch.device("cpu")):
    """(predict(evaluation-view features) -> labels, record).

    `train_x` (evaluation-view features of `train_indices`, in that order) fixes the standardisation;
    `train_y` are their labels. Hyper-parameters (defaults = the paper's): see AugmentedProbeConfig/ProbeConfig.
    """
    train_indices = np.asarray(train_indices, dtype=np.int64)
    if len(train_indices) == 0:
        raise CompressError("linear probe: the train split is empty; check the image store's split")
    if len(train_indices) != len(train_x) or len(train_y) != len(train_x):
        raise CompressError(f"augmented probe: {len(train_indices)} train images but {len(train_x)} features "
                            f"and {len(train_y)} labels")
    head = ProbeHead(*standardiser(train_x, device), num_classes, cfg.seed)  # block by block, no float32 copy
    labels = torch.full((store.n,), -1, dtype=torch.long)  # by dataset index, what the loader yields
    labels[torch.from_numpy(train_indices)] = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    bs = len(train_indices) if cfg.batch_size is None else min(cfg.batch_size, len(train_indices))
    loader = BatchLoader(store, train_indices, bs, seed=cfg.seed, drop_last=False)
    generator = torch.Generator().manual_seed(cfg.seed)  # the crops; the loader's order has its own seed
    image_hw = tuple(store.shape[1:3])
    regions = store.regions()  # a letterboxed store's valid regions: crops stay inside them
    regions = None if regions is None else torch.from_numpy(regions)
    size, mean, std = preprocessing["input_size"], preprocessing["mean"], preprocessing["std"]
    backbone = backbone.to(device).eval()
    before = snapshot(backbone)

    def batches(epoch: int):
        for idx, images in loader.epoch(epoch):
            r = None if regions is None else regions[idx]
            crops = sample_crops(len(idx), generator, image_hw, cfg.crop_scale, cfg.crop_ratio, cfg.flip, regions=r)
            views = render(images.to(device, non_blocking=True), crops, size, mean, std, regions=r)
            with torch.no_grad():
                features = backbone(views)
            yield features, labels[idx].to(device)

    steps, loss = fit_head(head, batches, len(loader), cfg)
    check_frozen(backbone, before)
    record = probe_record("augmented", PROTOCOL, cfg, bs, steps, loss)
    record.update(crop_scale=list(cfg.crop_scale), crop_ratio=list(cfg.crop_ratio), input_size=size)
    return predictor(head, device), record
