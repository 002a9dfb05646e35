"""How well predicted label maps match ground truth, per label group: the segmenter's grade.

What the SDK uses of a label map is the six label groups (labels.py), so a segmenter is graded
on them, not on its own classes: both maps go to groups, pixels the ground truth ignores (CamVid
void) are left out, and each group's IoU is its intersection over union summed over all frames
(so a large frame counts more than a small one, as in the usual segmentation benchmarks).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DatasetError
from ..images import read_label
from ..labels import IGNORE, LABEL_GROUPS, NUM_GROUPS, check_class_ids, check_scheme, to_groups


@dataclass
class GroupIoU:
    iou: dict[str, float]  # per label group; NaN where the group is in neither map
    mean: float  # over the groups present
    frames: int


def group_counts(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group (intersection, union) pixel counts of two group maps, where ``truth`` is not IGNORE."""
    valid = truth != IGNORE
    pred, true = predicted[valid], truth[valid]
    inter = np.bincount(pred[pred == true], minlength=256)[:NUM_GROUPS]
    union = np.bincount(pred, minlength=256)[:NUM_GROUPS] + np.bincount(true, minlength=256)[:NUM_GROUPS] - inter
    return inter, union


def counts_iou(inter: np.ndarray, union: np.ndarray, frames: int) -> GroupIoU:
    """Per-group IoU of summed (intersection, union) counts (NaN where the group is in neither map), and their mean."""
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    present = iou[union > 0]
    return GroupIoU(dict(zip(LABEL_GROUPS, iou.tolist())), float(present.mean()) if present.size else 0.0, frames)


def folder_iou(predictions: str | Path, labels: str | Path, label_scheme: str = "camvid",
               prediction_scheme: str = "cityscapes") -> GroupIoU:
    """Per-group IoU of the label PNGs under ``predictions`` against those under ``labels`` (same
    relative paths; every ground-truth PNG needs a prediction of its size). A map with ids outside
    its scheme's table is a DatasetError naming the file."""
    check_scheme(label_scheme)
    check_scheme(prediction_scheme)
    predictions, labels = Path(predictions), Path(labels)
    truths = sorted(labels.rglob("*.png"))
    if not truths:
        raise DatasetError(f"no label PNGs under {labels}")
    inter, union = np.zeros(NUM_GROUPS, np.int64), np.zeros(NUM_GROUPS, np.int64)
    for truth_path in tqdm(truths, desc="IoU", unit="image", leave=False):
        pred_path = predictions / truth_path.relative_to(labels)
        if not pred_path.is_file():
            raise DatasetError(f"no prediction {pred_path} for {truth_path}")
        truth, pred = read_label(truth_path, None), read_label(pred_path, None)
        if truth.shape != pred.shape:
            raise DatasetError(f"{pred_path} is {pred.shape[1]}x{pred.shape[0]}, its ground truth {truth_path} {truth.shape[1]}x{truth.shape[0]}")
        check_class_ids(truth, label_scheme, str(truth_path))
        check_class_ids(pred, prediction_scheme, str(pred_path))
        i, u = group_counts(to_groups(pred, prediction_scheme), to_groups(truth, label_scheme))
        inter += i
        union += u
    return counts_iou(inter, union, len(truths))
