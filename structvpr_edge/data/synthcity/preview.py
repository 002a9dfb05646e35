"""Contact sheet: a few places under every condition, each image beside its colour-coded labels."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ...labels import CITYSCAPES_CLASSES
from . import conditions as cond
from . import render as rd
from . import world as wd
from .scene import render_view

# Cityscapes colours (RGB) of the 19 train ids.
PALETTE_RGB = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
               (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
               (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)]
assert len(PALETTE_RGB) == len(CITYSCAPES_CLASSES)

ROWS = (
    ("reference", "day", "summer", "clear", 0.3), ("dynamic", "day", "summer", "clear", 1.0),
    ("night", "night", "summer", "clear", 0.4), ("season", "day", "autumn", "clear", 0.4),
    ("season", "day", "winter", "overcast", 0.4), ("weather", "day", "summer", "fog", 0.4),
    ("weather", "day", "summer", "rain", 0.4), ("hard", "night", "winter", "rain", 0.5),
)


def colourise(label: np.ndarray) -> np.ndarray:
    """BGR image of a label map (255 = ignore is black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(PALETTE_RGB)] = np.asarray(PALETTE_RGB, np.uint8)[:, ::-1]
    return lut[label]


def write_preview(out_png: Path, seed: int = 0, size: tuple[int, int] = (320, 240), places: int = 3) -> Path:
    """Render ``places`` places (columns) under each condition (rows) with label overlays; returns the PNG path."""
    world = wd.build_world(seed, wd.CityConfig(blocks=4))
    candidates = [p for s in world.streets for p in wd.street_places(s, 4.5)]
    chosen = [candidates[i] for i in np.linspace(len(candidates) * 0.1, len(candidates) * 0.9, places).astype(int)]
    width, height = size
    rows = []
    for r, (group, tod, season, weather, traffic) in enumerate(ROWS):
        look = cond.make_look(cond.fixed_condition(group, tod, season, weather, traffic),
                              np.random.default_rng([seed, r]))
        cells = [_title(f"{group}: {tod}/{season}/{weather}", height)]
        for k, p in enumerate(chosen):
            cam = rd.Camera(p.x, p.y, look.camera_height, p.heading, width=width, height=height)
            bgr, label = render_view(world, cam, world.streets[p.street], look,
                                     np.random.default_rng([seed, r, k]), variation=r)
            overlay = cv2.addWeighted(bgr, 0.45, colourise(label), 0.55, 0)
            cells += [bgr, overlay, np.full((height, 6, 3), 255, np.uint8)]
        rows.append(np.hstack(cells))
    sheet = np.vstack([np.vstack([row, np.full((4, row.shape[1], 3), 255, np.uint8)]) for row in rows])
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), sheet)
    return out_png


def _title(text: str, height: int) -> np.ndarray:
    cell = np.full((height, 150, 3), 255, np.uint8)
    for i, line in enumerate(text.replace(": ", ":\n").replace("/", "\n").split("\n")):
        cv2.putText(cell, line, (6, 30 + 24 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return cell
