"""The backbone blend (``imagenet_blend``, train/config.py) measured on finished runs, on the val only.

Blending needs no training, so each seed's model is blended at every share, written as a checkpoint
of its own (its ``train_config`` records the share, as if trained with it) and read by the same
evaluation as every other row: SynthCity val R@1, and the real val columns of ``table.real_val``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.dataset import VPRDataset
from ..errors import DatasetError, ModelError
from ..eval.evaluate import evaluate
from ..eval.models import load_extractor
from ..eval.plots import pyplot
from ..files import replace_whole
from ..models.checkpoint import derived_extra, load_checkpoint, save_checkpoint
from ..models.efficientnet_lite import EfficientNetLite0, blend_toward_imagenet, check_blend_share
from .table import real_val


def write_blended(checkpoint: Path, share: float, out_dir: Path) -> tuple[Path, float]:
    """``checkpoint``'s model with its backbone blended ``share`` toward ImageNet, saved in ``out_dir``
    as ``blend-A.pt``, and A: the share it now stands at. A checkpoint already blended by s0 (the
    shipped file: 0.2) ends at 1 - (1 - s0)(1 - share), and its name and config say so."""
    model, meta = load_checkpoint(checkpoint)
    if not isinstance(getattr(model, "backbone", None), EfficientNetLite0):
        raise ModelError(f"{checkpoint} holds a {meta['model_type']} model: only an RGB student has an ImageNet backbone to blend")
    blend_toward_imagenet(model.backbone, share)
    total = round(1 - (1 - meta["train_config"].get("imagenet_blend", 0.0)) * (1 - share), 6)
    config = meta["train_config"] | {"imagenet_blend": total}
    out = save_checkpoint(out_dir / f"blend-{total:g}.pt", model, tuple(meta["input"]["size"]), config,
                          derived_extra(meta, blended_from=checkpoint))
    return out, total


def seed_runs(runs: Path, seeds: list[int] | None = None) -> list[Path]:
    """A row's runs: one checkpoint, or a method-table row's ``runs/sSEED/model.pt`` of ``seeds``;
    None: every seed present, so a folder that gained seeds since gives another row."""
    if runs.is_file():
        return [runs]
    return sorted(runs.glob("s*/model.pt")) if seeds is None else [runs / f"s{seed}" / "model.pt" for seed in seeds]


def blend_table(rows: dict[str, Path], shares: list[float], out: Path, val: VPRDataset, corridor: Path, camvid: Path,
                seeds: list[int] | None = None) -> dict[str, list[dict]]:
    """``"ROW a=SHARE"`` (the share the model stands at, see write_blended) -> one figures dict per seed: val R@1 and the real val columns.
    ``seeds``: seed_runs'. Every share, row and requested seed is checked before the first blend."""
    for share in shares:
        check_blend_share(share)
    empty = [str(runs) for runs in rows.values() if not seed_runs(runs)]
    if empty:
        raise DatasetError(f"no finished run (s*/model.pt) and no checkpoint at {', '.join(empty)}")
    missing = [str(run) for runs in rows.values() for run in seed_runs(runs, seeds) if not run.is_file()]
    if missing:
        raise DatasetError(f"--seeds {seeds}: no finished run at {', '.join(missing)}")
    jobs = [(name, run, share) for name, runs in rows.items() for run in seed_runs(runs, seeds) for share in shares]
    results: dict[str, list[dict]] = {}
    for name, run, share in tqdm(jobs, desc="blend"):
        seed = run.parent.name if run.name == "model.pt" else run.stem
        path, total = write_blended(run, share, out / name / seed)
        figures = {"row": name, "seed": seed, "share": total, "val": evaluate(load_extractor(str(path)), val).recall["1"]}
        results.setdefault(f"{name} a={total:g}", []).append(figures | real_val(path, corridor, camvid))
    return results


def plot_blend(results: dict[str, list[dict]], out_png: Path) -> Path:
    """Corridor R@1 and SynthCity val R@1 against the share, mean and std band per row."""
    plt = pyplot()
    curves: dict[str, list[tuple[float, list[dict]]]] = {}
    for runs in results.values():
        curves.setdefault(runs[0]["row"], []).append((runs[0]["share"], runs))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120)
    for ax, column, label in zip(axes, ("corridor R@1", "val"), ("corridor R@1 (real val, %)", "SynthCity val R@1 (%)")):
        for name, points in curves.items():
            points.sort(key=lambda p: p[0])
            shares = [share for share, _ in points]
            values = [100 * np.array([r[column] for r in runs]) for _, runs in points]
            mean, std = np.array([v.mean() for v in values]), np.array([v.std() for v in values])
            ax.plot(shares, mean, marker="o", label=name)
            ax.fill_between(shares, mean - std, mean + std, alpha=0.15)
        ax.set(xlabel="imagenet_blend (share back to ImageNet)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    replace_whole(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out_png
