"""Pictures of an evaluation: a retrieval grid (a model's neighbours, beside a reference's such as the teacher's
when one is given) and a confusion matrix.

Matplotlib with the Agg backend: no display needed, same PNG on every machine.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GREEN, RED, GREY = "#1a9850", "#d73027", "#4d4d4d"


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def _tile(image: np.ndarray, scale: int, colour: str, border: int) -> np.ndarray:
    """The image (H, W, C) uint8 enlarged `scale` times (nearest), RGB, framed by `border` px of `colour`."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    big = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    framed = np.empty((big.shape[0] + 2 * border, big.shape[1] + 2 * border, 3), dtype=np.uint8)
    framed[:] = _rgb(colour)
    framed[border:-border, border:-border] = big
    return framed


def compose_grid(images: np.ndarray, labels: np.ndarray, queries: np.ndarray, neighbours_a: np.ndarray,
                 neighbours_b: np.ndarray | None = None) -> tuple[np.ndarray, list[int], int]:
    """(canvas (rows, cols, 3) uint8, x of every column's tile, height of one row): one row per query - the
    query framed grey, half a tile of space, its top-k under A, then (when B is given) a whole tile of space and
    its top-k under B - each neighbour framed green when its label is the query's, red otherwise."""
    k = neighbours_a.shape[1]
    scale, border, gap = max(1, 32 // images.shape[1]), 2, 3
    th, tw = images.shape[1] * scale + 2 * border, images.shape[2] * scale + 2 * border  # one framed tile
    step = tw + gap
    col_x = [0] + [step * (1 + j) + tw // 2 for j in range(k)]
    if neighbours_b is not None:
        col_x += [step * (1 + k + j) + tw for j in range(k)]
    canvas = np.full((len(queries) * (th + gap) - gap, col_x[-1] + tw, 3), 255, dtype=np.uint8)
    for r, q in enumerate(queries):
        shown = (*neighbours_a[r], *(neighbours_b[r] if neighbours_b is not None else ()))
        row = [(images[q], GREY)] + [(images[n], GREEN if labels[n] == labels[q] else RED) for n in shown]
        for x, (image, colour) in zip(col_x, row):
            canvas[r * (th + gap):r * (th + gap) + th, x:x + tw] = _tile(image, scale, colour, border)
    return canvas, col_x, th + gap


def retrieval_grid(images: np.ndarray, labels: np.ndarray, queries: np.ndarray, neighbours_a: np.ndarray,
                   neighbours_b: np.ndarray | None, out: str | Path, names: tuple[str, ...] = ("teacher", "student"),
                   class_names: list[str] | None = None) -> Path:
    """The picture of compose_grid, rows labelled with the query's class, columns titled with `names`.

    `images` (N, H, W, C) uint8 and `labels` (N,) are indexed by the global row numbers held in `queries` (Q,)
    and `neighbours_*` (Q, k); `neighbours_b` None draws A's block alone (a model without a reference).
    One axes shows the composed canvas: a hundred small axes took seconds per figure.
    """
    queries = np.asarray(queries)
    k = neighbours_a.shape[1]
    canvas, col_x, row_h = compose_grid(images, labels, queries, neighbours_a, neighbours_b)
    fig, ax = plt.subplots(figsize=(canvas.shape[1] / 40 + 0.6, canvas.shape[0] / 40 + 0.5))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * row_h + row_h / 2 for r in range(len(queries))],
                  [class_names[labels[q]] if class_names else str(labels[q]) for q in queries], fontsize=7)
    for spine in ax.spines.values():
        spine.set_visible(False)
    titles = [(col_x[0], "query"), (col_x[1], f"{names[0]} top-{k}")]
    if neighbours_b is not None:
        titles.append((col_x[k + 1], f"{names[1]} top-{k}"))
    for x, title in titles:
        ax.text(x, -4, title, fontsize=8, va="bottom")
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
