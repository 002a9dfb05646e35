"""How well a StructVPR++ student's group masks match label maps.

The student never sees a label map at inference, yet its descriptor pools each group inside the
masks it predicts: if they are wrong on real frames, so is the semantic alignment. For every
image the soft masks (softmax over the label groups, on the feature grid) are compared with the
label map's group fractions pooled to the same grid: overlap = mean over cells of
sum_k min(predicted_k, true_k), and per-group IoU of the argmax on cells one group dominates.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..images import normalize, read_label, read_rgb
from ..labels import LABEL_GROUPS, check_class_ids, label_fractions, to_cityscapes
from ..models.efficientnet_lite import MEAN_RGB, STD_RGB
from ..models.student import StructVPRStudent


def checked_label(path: Path, scheme: str) -> np.ndarray:
    """A label PNG as Cityscapes ids; ids outside ``scheme``'s table are a DatasetError naming it,
    not ignored cells that would lower the scores without a word."""
    label = read_label(path, None)
    check_class_ids(label, scheme, str(path))
    return to_cityscapes(label, scheme)


@torch.no_grad()
def mask_scores(model: StructVPRStudent, image_size: tuple[int, int], images: list[Path], labels: list[Path],
                scheme: str = "cityscapes", batch: int = 64) -> dict:
    """Per image: soft overlap, and per group (intersection, union) cell counts of the argmax.
    ``scheme`` names the label maps' class ids (CamVid's own labels: ``camvid``)."""
    was_training = model.training
    model.eval()
    overlap, inter, union = [], np.zeros((len(images), len(LABEL_GROUPS))), np.zeros((len(images), len(LABEL_GROUPS)))
    for start in tqdm(range(0, len(images), batch), desc="masks", unit="batch", leave=False):
        rgb = np.stack([read_rgb(p, image_size) for p in images[start : start + batch]])
        predicted = model.forward_parts(torch.from_numpy(normalize(rgb, MEAN_RGB, STD_RGB))).mask_logits.softmax(dim=1).numpy()
        grid = (predicted.shape[3], predicted.shape[2])
        truth = np.stack([label_fractions(checked_label(p, scheme), grid) for p in labels[start : start + batch]]) / 255
        overlap.extend(np.minimum(predicted, truth).sum(axis=1).mean(axis=(1, 2)))
        dominated = truth.max(axis=1) > 0.5
        for k in range(len(LABEL_GROUPS)):
            pred_k, true_k = (predicted.argmax(axis=1) == k) & dominated, (truth.argmax(axis=1) == k) & dominated
            inter[start : start + len(rgb), k] = (pred_k & true_k).sum(axis=(1, 2))
            union[start : start + len(rgb), k] = (pred_k | true_k).sum(axis=(1, 2))
    model.train(was_training)
    return {"overlap": np.array(overlap), "intersection": inter, "union": union}


def summarise(scores: dict, rows: np.ndarray) -> dict:
    """Overlap, per-group IoU and their mean over the groups present in ``rows``."""
    union = scores["union"][rows].sum(axis=0)
    iou = scores["intersection"][rows].sum(axis=0) / np.maximum(union, 1)
    return {"overlap": float(scores["overlap"][rows].mean()), "iou": dict(zip(LABEL_GROUPS, iou.round(3).tolist())),
            "mean_iou": float(iou[union > 0].mean()) if (union > 0).any() else 0.0}


def folder_pairs(images: Path, labels: Path) -> tuple[list[Path], list[Path]]:
    """Images of a folder and their same-named label PNGs (CamVid's layout)."""
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return paths, [labels / f"{p.stem}.png" for p in paths]
