"""Semantic classes and label groups, kept in one place.

Label PNGs always hold the 19 Cityscapes *train ids* (SynthCity writes them directly), so one
table maps both SynthCity and any Cityscapes-trained segmentation model to our label groups;
pixels of no class carry ``IGNORE`` (255). Maps from an ADE20K-trained model are converted once,
each ADE20K class to a representative train id of its group (``GROUP_TO_CITYSCAPES``), and
CamVid's own labels class by class (``CAMVID_TO_CITYSCAPES``), so the rest of the code reads one format.
"""
from __future__ import annotations

import cv2
import numpy as np

from .errors import ConfigError, DatasetError

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


def _table(mapping: dict[int, int]) -> np.ndarray:
    """uint8[256] lookup: each id of ``mapping`` to its value, every other id to IGNORE."""
    table = np.full(256, IGNORE, dtype=np.uint8)
    table[list(mapping)] = list(mapping.values())
    return table


CITYSCAPES_TO_GROUP: np.ndarray = _table({CLASS_ID[name]: GROUP_ID[group] for name, group in CLASS_TO_GROUP.items()})
"""uint8[256] lookup: Cityscapes train id (or SynthCity class id) -> label group id."""

# ADE20K SceneParsing 150 classes, ids 0..149 in the order of ``objectInfo150`` (what
# ADE20K-trained models output). The raw annotation PNGs of the benchmark are 1-based with
# 0 = "other": subtract 1 before using them here. Ten a line, so line k holds ids 10k..10k+9.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# The ADE20K classes of each group, chosen as Cityscapes groups them (walls, fences and
# awnings are building; terrain is vegetation). Indoor objects, water and rocks are ignored.
ADE20K_GROUP_CLASSES: dict[str, tuple[str, ...]] = {
    "building": (
        "wall", "building", "ceiling", "windowpane", "door", "house", "fence", "railing", "column",
        "skyscraper", "grandstand", "stairs", "screen door", "stairway", "bridge", "hovel", "tower",
        "awning", "booth", "bannister", "canopy", "step",
    ),
    "vegetation": (
        "tree", "grass", "earth", "mountain", "plant", "field", "sand", "flower", "hill", "palm", "land",
    ),
    "ground": ("floor", "road", "sidewalk", "path", "runway", "dirt track"),
    "pole_sign": ("signboard", "streetlight", "pole", "trade name", "traffic light"),
    "sky": ("sky",),
    "dynamic": (
        "person", "car", "boat", "bus", "truck", "airplane", "van", "ship", "minibike", "animal", "bicycle",
    ),
}
# The Cityscapes class that stands for each group in our label PNGs.
GROUP_TO_CITYSCAPES: dict[str, str] = {
    "building": "building", "vegetation": "vegetation", "ground": "road",
    "pole_sign": "pole", "sky": "sky", "dynamic": "car",
}
ADE20K_TO_CITYSCAPES: np.ndarray = _table(
    {ADE20K_CLASSES.index(name): CLASS_ID[GROUP_TO_CITYSCAPES[group]] for group, names in ADE20K_GROUP_CLASSES.items() for name in names})
"""uint8[256] lookup: ADE20K class id -> Cityscapes train id of its group (255 = ignore)."""

# CamVid, the 11-class version of SegNet's copy (ids 0..10, 11 = void), each class mapped to the
# Cityscapes train id that names the same thing (a bicyclist is a rider), void to ignore.
CAMVID_CLASSES: tuple[str, ...] = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign/symbol", "fence", "car", "pedestrian", "bicyclist", "void",
)
CAMVID_TO_CITYSCAPES_CLASS: dict[str, str] = {
    "sky": "sky", "building": "building", "pole": "pole", "road": "road", "pavement": "sidewalk",
    "tree": "vegetation", "sign/symbol": "traffic sign", "fence": "fence", "car": "car", "pedestrian": "person",
    "bicyclist": "rider",
}

CAMVID_TO_CITYSCAPES: np.ndarray = _table({CAMVID_CLASSES.index(camvid): CLASS_ID[name] for camvid, name in CAMVID_TO_CITYSCAPES_CLASS.items()})
"""uint8[256] lookup: CamVid class id -> Cityscapes train id (void and unknown ids -> 255 = ignore)."""

SCHEMES: tuple[str, ...] = ("cityscapes", "ade20k", "camvid")
# How many class ids each scheme has (0..n-1; IGNORE may also occur): a model's logits have that
# many channels, and a label map with any other id was made for another table.
SCHEME_CLASSES: dict[str, int] = {"cityscapes": len(CITYSCAPES_CLASSES), "ade20k": len(ADE20K_CLASSES), "camvid": len(CAMVID_CLASSES)}
_TO_CITYSCAPES = {"cityscapes": np.arange(256, dtype=np.uint8), "ade20k": ADE20K_TO_CITYSCAPES, "camvid": CAMVID_TO_CITYSCAPES}
_TO_GROUP = {scheme: CITYSCAPES_TO_GROUP[table] for scheme, table in _TO_CITYSCAPES.items()}


def model_class_counts(scheme: str) -> tuple[int, ...]:
    """The logit channels a ``scheme`` segmenter may have: one per class, and for CamVid with or
    without void (SegNet's copy trains with void ignored, 11 channels; a model predicting void, 12)."""
    return (CAMVID_CLASSES.index("void"), SCHEME_CLASSES[scheme]) if scheme == "camvid" else (SCHEME_CLASSES[scheme],)


def check_scheme(scheme: str) -> None:
    """Raise ConfigError unless ``scheme`` names a class-id scheme we can map (see SCHEMES)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown label scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")


def check_class_ids(class_map: np.ndarray, scheme: str, source: str, error: type[Exception] = DatasetError) -> None:
    """Raise ``error`` naming ``source`` if ``class_map`` holds ids outside the table of ``scheme``
    (0..n-1 and IGNORE): such a map was made with other classes, and mapping it would mislabel pixels."""
    check_scheme(scheme)
    if class_map.dtype != np.uint8:
        raise error(f"{source} must hold uint8 class ids, holds {class_map.dtype}")
    present = np.flatnonzero(np.bincount(class_map.ravel(), minlength=256))
    unknown = present[(present >= SCHEME_CLASSES[scheme]) & (present != IGNORE)]
    if unknown.size:
        raise error(
            f"{source} has class ids {unknown[:8].tolist()} outside the {scheme} table "
            f"(0..{SCHEME_CLASSES[scheme] - 1}, {IGNORE} = ignore)"
        )


def _lookup(tables: dict[str, np.ndarray], class_map: np.ndarray, scheme: str) -> np.ndarray:
    check_scheme(scheme)
    if class_map.dtype != np.uint8:
        raise DatasetError(f"label map must be uint8 class ids, got {class_map.dtype}")
    return tables[scheme][class_map]


def to_groups(class_map: np.ndarray, scheme: str) -> np.ndarray:
    """Map a uint8 class-id image of ``scheme`` ("cityscapes" train ids, "ade20k" or "camvid") to label-group ids."""
    return _lookup(_TO_GROUP, class_map, scheme)


def to_cityscapes(class_map: np.ndarray, scheme: str) -> np.ndarray:
    """Class ids of ``scheme`` -> the Cityscapes train ids our label PNGs hold (Cityscapes: unchanged)."""
    return _lookup(_TO_CITYSCAPES, class_map, scheme)


def classes_to_groups(label_map: np.ndarray) -> np.ndarray:
    """Map a uint8 class-id image (Cityscapes train ids) to label-group ids (255 = ignore)."""
    return to_groups(label_map, "cityscapes")


def label_fractions(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (K, H, W): per label group, 255 x the fraction of each cell of a (W, H) grid it covers
    (the teacher's input, and the mask head's target)."""
    groups = classes_to_groups(label)
    planes = [cv2.resize((groups == k).astype(np.float32), size, interpolation=cv2.INTER_AREA) for k in range(NUM_GROUPS)]
    return np.round(np.stack(planes) * 255).astype(np.uint8)
