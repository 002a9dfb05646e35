"""Semantic classes and label groups, kept in one place.

SynthCity writes its label PNGs directly in the 19 Cityscapes *train ids*, so one table maps
both SynthCity and any Cityscapes-trained segmentation model to our label groups.
Pixels that belong to no class carry ``IGNORE`` (255).
"""
from __future__ import annotations

import numpy as np

from .errors import DatasetError

IGNORE = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(CITYSCAPES_CLASSES)}

LABEL_GROUPS: tuple[str, ...] = ("building", "vegetation", "ground", "pole_sign", "sky", "dynamic")
GROUP_ID: dict[str, int] = {name: i for i, name in enumerate(LABEL_GROUPS)}
NUM_GROUPS = len(LABEL_GROUPS)

# Groups whose appearance identifies a place; `dynamic` changes every traversal.
STATIC_GROUPS: tuple[str, ...] = ("building", "vegetation", "ground", "pole_sign", "sky")

CLASS_TO_GROUP: dict[str, str] = {
    "road": "ground", "sidewalk": "ground",
    "building": "building", "wall": "building", "fence": "building",
    "pole": "pole_sign", "traffic light": "pole_sign", "traffic sign": "pole_sign",
    "vegetation": "vegetation", "terrain": "vegetation",
    "sky": "sky",
    "person": "dynamic", "rider": "dynamic", "car": "dynamic", "truck": "dynamic",
    "bus": "dynamic", "train": "dynamic", "motorcycle": "dynamic", "bicycle": "dynamic",
}


def _lookup_table() -> np.ndarray:
    table = np.full(256, IGNORE, dtype=np.uint8)
    for name, group in CLASS_TO_GROUP.items():
        table[CLASS_ID[name]] = GROUP_ID[group]
    return table


CITYSCAPES_TO_GROUP: np.ndarray = _lookup_table()
"""uint8[256] lookup: Cityscapes train id (or SynthCity class id) -> label group id."""


def classes_to_groups(label_map: np.ndarray) -> np.ndarray:
    """Map a uint8 class-id image (Cityscapes train ids) to label-group ids (255 = ignore)."""
    if label_map.dtype != np.uint8:
        raise DatasetError(f"label map must be uint8 class ids, got {label_map.dtype}")
    return CITYSCAPES_TO_GROUP[label_map]
