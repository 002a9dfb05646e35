"""Training curves PNG from the JSONL log: losses, validation Recall@1, sample-group shares."""
from __future__ import annotations

import json
from pathlib import Path


def plot_training_curves(log_path: Path, out_png: Path) -> Path:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "val_recall@1" in r]
    shares = [r for r in rows if "group_shares" in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), dpi=100)
    for key in ("loss", "metric", "mask", "distill"):
        points = [(r["step"], r[key]) for r in steps if key in r]
        if points:
            axes[0].plot(*zip(*points), label=key)
    axes[0].set(title="losses", xlabel="step")
    axes[0].legend()
    if vals:
        axes[1].plot([r["step"] for r in vals], [100 * r["val_recall@1"] for r in vals], marker="o")
    axes[1].set(title="validation Recall@1 (%)", xlabel="step", ylim=(0, 100))
    if shares:
        for group in shares[0]["group_shares"]:
            axes[2].plot([r["epoch"] for r in shares], [r["group_shares"][group] for r in shares], label=group)
        axes[2].legend(fontsize=7)
    axes[2].set(title="distillation sample groups (share)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)
