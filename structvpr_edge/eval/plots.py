"""Figures: Recall@N curves and retrieval examples, each written whole to exactly the path given,
in the format its suffix names (checked before the work by the command line too)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..data.dataset import VPRDataset
from ..errors import ConfigError
from ..files import IMAGE_SUFFIXES, output_format, replace_whole
from ..images import imread

GREEN, RED = (40, 180, 40), (40, 40, 220)  # BGR
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # what matplotlib writes in every install


def pyplot() -> Any:
    """matplotlib.pyplot drawing to files only (Agg), imported when a figure is drawn."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def save_figure(fig: Any, out: str | Path) -> Path:
    """A figure to ``out`` (a FIGURE_SUFFIXES format), whole; the figure is closed."""
    try:
        fmt = output_format(out, FIGURE_SUFFIXES)
        fig.tight_layout()
        return replace_whole(out, lambda tmp: fig.savefig(tmp, format=fmt))
    finally:
        pyplot().close(fig)


def plot_recall_curves(curves: dict[str, dict[str, float]], out_png: Path, title: str = "") -> Path:
    """One line per model: Recall@N against N."""
    fig, ax = pyplot().subplots(figsize=(5, 4), dpi=120)
    for name, recall in curves.items():
        ns = sorted(int(n) for n in recall)
        ax.plot(ns, [100 * recall[str(n)] for n in ns], marker="o", label=name)
    ax.set(xlabel="N", ylabel="Recall@N (%)", ylim=(0, 100), title=title, xscale="log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out_png)


def _tile(path: Path, size: tuple[int, int], frame: tuple[int, int, int] | None) -> np.ndarray:
    image = cv2.resize(imread(path), size, interpolation=cv2.INTER_AREA)
    if frame is not None:
        cv2.rectangle(image, (0, 0), (size[0] - 1, size[1] - 1), frame, thickness=4)
    return image


def plot_retrievals(
    dataset: VPRDataset, predictions: np.ndarray, out_png: Path, num_queries: int = 8, top: int = 5, seed: int = 0
) -> Path:
    """Rows of a query followed by its top retrievals, correct ones framed green, wrong red."""
    suffix = "." + output_format(out_png, IMAGE_SUFFIXES)
    size = (160, 120)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(dataset.queries), size=min(num_queries, len(dataset.queries)), replace=False))
    rows = []
    for q in chosen:
        positives = set(dataset.positives[q].tolist())
        tiles = [_tile(dataset.queries.paths[q], size, None), np.full((size[1], 8, 3), 255, np.uint8)]
        tiles += [_tile(dataset.database.paths[d], size, GREEN if d in positives else RED) for d in predictions[q, :top]]
        rows.append(np.hstack(tiles))
    encoded, data = cv2.imencode(suffix, np.vstack(rows))
    if not encoded:
        raise ConfigError(f"cannot write {out_png}: OpenCV has no {suffix} writer")
    return replace_whole(out_png, lambda tmp: tmp.write_bytes(data.tobytes()))
