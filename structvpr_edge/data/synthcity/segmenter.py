"""An imperfect segmenter, simulated: what the teacher learns from on real data is a network's
output, not the renderer's exact label map.

Three kinds of error, each growing when the image is hard to read (night, dusk, fog, rain):
eroded class boundaries (ignored pixels), missed thin objects (poles and signs taken for the
facade behind them), and blobs of confused classes (building and vegetation swapped, sky read
as building at night, vehicles read as road).
"""
from __future__ import annotations

import cv2
import numpy as np

from ...labels import CLASS_ID, IGNORE
from .conditions import Condition

# Per-condition share of the image where a segmenter confuses classes.
_DIFFICULTY = {"night": 0.12, "dusk": 0.05, "fog": 0.10, "rain": 0.04}
_CONFUSED = {"building": "vegetation", "vegetation": "building", "sky": "building", "terrain": "road",
             "car": "road", "truck": "road", "bus": "building", "person": "sidewalk", "wall": "vegetation"}
THIN_IDS = [CLASS_ID[c] for c in ("pole", "traffic light", "traffic sign")]


def error_rate(condition: Condition) -> float:
    """Share of confused image area: 3 % by a clear day, up to about 25 % at night in fog."""
    return 0.03 + _DIFFICULTY.get(condition.time_of_day, 0.0) + _DIFFICULTY.get(condition.weather, 0.0)


def _confusion_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint8)
    for source, target in _CONFUSED.items():
        table[CLASS_ID[source]] = CLASS_ID[target]
    return table


CONFUSION = _confusion_table()


def confusion_blobs(shape: tuple[int, ...], rate: float, rng: np.random.Generator) -> np.ndarray:
    """Blobs covering ``rate`` of an HxW image: a coarse random field, upsampled, cut at its own
    ``rate`` quantile (the upsampling bunches values near 0.5, so cutting at ``rate`` itself
    covered a fortieth of that by a clear day, half at night in fog)."""
    h, w = shape
    field = cv2.resize(rng.random((max(2, h // 16), max(2, w // 16))).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return field < np.quantile(field, rate)


def segmenter_labels(label: np.ndarray, condition: Condition, rng: np.random.Generator) -> np.ndarray:
    """``label`` (HxW Cityscapes train ids) as an imperfect segmenter would have produced it."""
    rate = error_rate(condition)
    out = label.copy()
    confused = confusion_blobs(label.shape, rate, rng)
    out[confused] = CONFUSION[out[confused]]
    # Missed thin objects: each pole/sign component is lost with a probability that grows with the rate.
    thin = np.isin(label, THIN_IDS).astype(np.uint8)
    count, components = cv2.connectedComponents(thin)
    missed = np.flatnonzero(rng.random(count) < 0.25 + 2 * rate)
    out[np.isin(components, missed[missed > 0])] = CLASS_ID["building"]
    # Eroded boundaries: pixels next to a class change are not labelled (thin objects keep theirs:
    # they are a few pixels wide, and their errors are the misses above).
    width = 1 + int(round(8 * rate))
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    boundary = cv2.dilate(out, kernel) != cv2.erode(out, kernel)
    out[boundary & (out != IGNORE) & ~np.isin(out, THIN_IDS)] = IGNORE
    return out
