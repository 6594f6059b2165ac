"""Pictures of an evaluation: a retrieval grid (teacher vs student neighbours) and a confusion matrix.

Matplotlib with the Agg backend: no display needed, same PNG on every machine.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GREEN, RED, GREY = "#1a9850", "#d73027", "#4d4d4d"


def _show(ax, image: np.ndarray, colour: str) -> None:
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
              vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)


def retrieval_grid(images: np.ndarray, labels: np.ndarray, queries: np.ndarray, neighbours_a: np.ndarray,
                   neighbours_b: np.ndarray, out: str | Path, names: tuple[str, str] = ("teacher", "student"),
                   class_names: list[str] | None = None) -> Path:
    """One row per query: the query, its top-k under model A, a gap, its top-k under model B.

    `images` (N, H, W, C) uint8 and `labels` (N,) are indexed by the global row numbers held in `queries` (Q,)
    and `neighbours_*` (Q, k). A neighbour's border is green when its label is the query's, red otherwise.
    """
    queries = np.asarray(queries)
    k = neighbours_a.shape[1]
    cols = 2 * k + 2
    fig, axes = plt.subplots(len(queries), cols, figsize=(cols * 0.9, len(queries) * 0.95 + 0.4), squeeze=False)
    for r, q in enumerate(queries):
        _show(axes[r, 0], images[q], GREY)
        axes[r, 0].set_ylabel(class_names[labels[q]] if class_names else str(labels[q]), fontsize=7)
        axes[r, 1].axis("off")
        for j in range(k):
            for offset, neighbours in ((2, neighbours_a), (k + 2, neighbours_b)):
                n = neighbours[r, j]
                _show(axes[r, offset + j], images[n], GREEN if labels[n] == labels[q] else RED)
    axes[0, 0].set_title("query", fontsize=8)
    axes[0, 2].set_title(f"{names[0]} top-{k}", fontsize=8, loc="left")
    axes[0, k + 2].set_title(f"{names[1]} top-{k}", fontsize=8, loc="left")
    return _save(fig, out)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, out: str | Path,
                     title: str = "", class_names: list[str] | None = None) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted); labels shown up to 30 classes."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = min(12.0, 3 + 0.35 * num_classes)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(rates, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"top-1 {100 * np.trace(counts) / max(counts.sum(), 1):.1f} %")
    if num_classes <= 30:
        ticks = class_names or [str(i) for i in range(num_classes)]
        ax.set_xticks(range(num_classes), ticks, fontsize=7, rotation=90)
        ax.set_yticks(range(num_classes), ticks, fontsize=7)
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
