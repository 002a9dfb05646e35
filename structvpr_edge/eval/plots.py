"""PNG figures: Recall@N curves and retrieval examples."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..data.dataset import VPRDataset
from ..images import imread

GREEN, RED = (40, 180, 40), (40, 40, 220)  # BGR


def plot_recall_curves(curves: dict[str, dict[str, float]], out_png: Path, title: str = "") -> Path:
    """One line per model: Recall@N against N."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for name, recall in curves.items():
        ns = sorted(int(n) for n in recall)
        ax.plot(ns, [100 * recall[str(n)] for n in ns], marker="o", label=name)
    ax.set(xlabel="N", ylabel="Recall@N (%)", ylim=(0, 100), title=title, xscale="log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)


def _tile(path: Path, size: tuple[int, int], frame: tuple[int, int, int] | None) -> np.ndarray:
    image = cv2.resize(imread(path), size, interpolation=cv2.INTER_AREA)
    if frame is not None:
        cv2.rectangle(image, (0, 0), (size[0] - 1, size[1] - 1), frame, thickness=4)
    return image


def plot_retrievals(
    dataset: VPRDataset, predictions: np.ndarray, out_png: Path, num_queries: int = 8, top: int = 5, seed: int = 0
) -> Path:
    """Rows of a query followed by its top retrievals, correct ones framed green, wrong red."""
    size = (160, 120)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(dataset.queries), size=min(num_queries, len(dataset.queries)), replace=False))
    rows = []
    for q in chosen:
        positives = set(dataset.positives[q].tolist())
        tiles = [_tile(dataset.queries.paths[q], size, None), np.full((size[1], 8, 3), 255, np.uint8)]
        tiles += [_tile(dataset.database.paths[d], size, GREEN if d in positives else RED) for d in predictions[q, :top]]
        rows.append(np.hstack(tiles))
    sheet = np.vstack(rows)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), sheet)
    return Path(out_png)
