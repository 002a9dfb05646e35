"""Training curves PNG from the JSONL log: losses, validation Recall@1, sample-group shares."""
from __future__ import annotations

import json
from pathlib import Path

from ..eval.plots import pyplot, save_figure


def plot_training_curves(log_path: Path, out_png: Path) -> Path:
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    fig, axes = pyplot().subplots(1, 3, figsize=(14, 3.8), dpi=100)
    _losses(axes[0], [r for r in rows if "loss" in r])
    _recall(axes[1], [r for r in rows if "val_recall@1" in r])
    _shares(axes[2], [r for r in rows if "group_shares" in r])
    for ax in axes:
        ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


def _losses(ax, steps: list[dict]) -> None:
    """The total and each part of the objective (train/objective.py)."""
    for key in ("loss", "metric", "mask", "distill", "preserve"):
        points = [(r["step"], r[key]) for r in steps if key in r]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set(title="losses", xlabel="step")
    ax.legend()


def _recall(ax, vals: list[dict]) -> None:
    if vals:
        ax.plot([r["step"] for r in vals], [100 * r["val_recall@1"] for r in vals], marker="o")
    ax.set(title="validation Recall@1 (%)", xlabel="step", ylim=(0, 100))


def _shares(ax, shares: list[dict]) -> None:
    if shares:
        for group in shares[0]["group_shares"]:
            ax.plot([r["epoch"] for r in shares], [r["group_shares"][group] for r in shares], label=group)
        ax.legend(fontsize=7)
    ax.set(title="distillation sample groups (share)", xlabel="epoch")
