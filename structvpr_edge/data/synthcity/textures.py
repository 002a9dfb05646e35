"""Procedural textures and sprites: facade templates, trees, people, signs, fences, ground noise.

All of it comes from a seeded RNG, so a city (and its appearance) is identical on every run.
Textures carry a small mip pyramid so distant facades do not shimmer when warped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

PPM = 16  # texture pixels per metre
MIP_LEVELS = 4


@dataclass
class Texture:
    """An image (BGR or BGRA uint8) with a mip pyramid and its metric size per texture pixel."""

    image: np.ndarray
    metres_per_px: float = 1.0 / PPM
    levels: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.levels = [self.image]
        while len(self.levels) < MIP_LEVELS and min(self.levels[-1].shape[:2]) >= 8:
            self.levels.append(cv2.pyrDown(self.levels[-1]))
        rgb = self.image[..., :3].reshape(-1, 3).astype(np.float32)
        if self.image.shape[2] == 4:
            rgb = rgb[self.image[..., 3].reshape(-1) > 127]
        self.mean = rgb.mean(axis=0) if len(rgb) else np.zeros(3, np.float32)

    @property
    def has_alpha(self) -> bool:
        return self.image.shape[2] == 4


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth tileable noise in [-1, 1]."""
    pad = int(3 * sigma) + 1
    n = np.pad(rng.standard_normal(shape).astype(np.float32), pad, mode="wrap")
    n = cv2.GaussianBlur(n, (0, 0), sigma)[pad:-pad, pad:-pad]
    return n / (np.abs(n).max() + 1e-6)


def _jitter(rng: np.random.Generator, colour, amount: float) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


# ----------------------------------------------------------------------------- facades

WALL_COLOURS = {
    "plaster": [(200, 215, 225), (150, 190, 215), (120, 160, 200), (185, 200, 190), (210, 210, 200),
                (150, 170, 200), (95, 140, 190), (175, 190, 235)],
    "brick": [(60, 75, 140), (50, 60, 115), (70, 90, 150), (80, 95, 120)],
    "panel": [(170, 170, 165), (140, 145, 150), (190, 185, 175)],
    "glass": [(120, 105, 80), (110, 115, 105), (140, 120, 95)],
    "siding": [(200, 190, 160), (150, 170, 150), (210, 220, 230), (110, 140, 160)],
    "stone": [(150, 165, 175), (120, 135, 150), (170, 180, 185)],
}
SIGN_COLOURS = [(40, 40, 200), (200, 90, 30), (40, 160, 40), (30, 180, 230), (150, 40, 120), (30, 30, 30)]


@dataclass
class FacadeTemplate:
    """A reusable building facade: size, texture and the window rectangles lit at night."""

    kind: str
    width: float
    height: float
    roof: str
    roof_colour: tuple[float, float, float]
    texture: Texture
    windows: list[tuple[int, int, int, int, bool]]  # x0, y0, x1, y1 (px), is_shop
    night: list[Texture] = field(default_factory=list)


def _painted(rng: np.random.Generator) -> np.ndarray:
    """A paint colour (BGR) of any hue, from pale to fairly saturated."""
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(30, 150), rng.integers(140, 235)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _wall(rng: np.random.Generator, material: str, h: int, w: int) -> np.ndarray:
    if material in ("plaster", "siding") and rng.random() < 0.6:
        base = _painted(rng)
    else:
        base = _jitter(rng, WALL_COLOURS[material][rng.integers(len(WALL_COLOURS[material]))], 20)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    img *= (1 + 0.06 * _noise(rng, (h, w), 2.0))[..., None]
    ys, xs = np.mgrid[0:h, 0:w]
    if material == "brick":
        row = ys // 5
        joint = (ys % 5 == 0) | (((xs + (row % 2) * 6) % 12) == 0)
        img *= (1 + 0.08 * rng.standard_normal((h // 5 + 1, w // 12 + 2)))[row, (xs + (row % 2) * 6) // 12][..., None]
        img[joint] = img[joint] * 0.35 + 200 * 0.65
    elif material == "panel":
        img[(ys % (PPM * 3) < 1) | (xs % (PPM * 3) < 1)] *= 0.7
    elif material == "siding":
        img[ys % 4 == 0] *= 0.75
    elif material == "stone":
        row = ys // 10
        img[(ys % 10 == 0) | (((xs + (row % 2) * 12) % 24) == 0)] *= 0.6
    return img


def _draw_window(img: np.ndarray, style: dict, x0: int, y0: int, x1: int, y1: int) -> None:
    frame, glass, sill = style["frame"], style["glass"], style["sill"]
    cv2.rectangle(img, (x0 - 1, y0 - 1), (x1, y1), frame, -1)
    grad = np.linspace(1.25, 0.7, max(y1 - y0 - 1, 1), dtype=np.float32)[:, None, None]
    img[y0 + 1:y1, x0 + 1:x1 - 1] = np.clip(np.asarray(glass, np.float32) * grad, 0, 255)
    if style["mullion"] and x1 - x0 > 6:
        xm = (x0 + x1) // 2
        cv2.line(img, (xm, y0), (xm, y1), frame, 1)
        if y1 - y0 > 10:
            ym = y0 + (y1 - y0) // 3
            cv2.line(img, (x0, ym), (x1 - 1, ym), frame, 1)
    if sill:
        cv2.rectangle(img, (x0 - 2, y1), (x1 + 1, y1 + 1), (215, 220, 225), -1)
    if style["shutters"]:
        sw = max(2, (x1 - x0) // 3)
        cv2.rectangle(img, (x0 - sw - 1, y0), (x0 - 2, y1), style["shutters"], -1)
        cv2.rectangle(img, (x1 + 1, y0), (x1 + sw, y1), style["shutters"], -1)


def make_facade(rng: np.random.Generator, kind: str) -> FacadeTemplate:
    """One facade template: material, window grid style, ground floor (shop or doors), roof line."""
    if kind == "downtown":
        width, floors, floor_h = rng.uniform(12, 26), int(rng.integers(5, 10)), rng.uniform(3.0, 3.6)
        material = str(rng.choice(["panel", "glass", "stone", "plaster", "brick"], p=[.25, .25, .2, .15, .15]))
        roof = "flat"
    elif kind == "mixed":
        width, floors, floor_h = rng.uniform(9, 18), int(rng.integers(3, 6)), rng.uniform(2.9, 3.4)
        material = str(rng.choice(["plaster", "brick", "stone", "panel"], p=[.4, .3, .15, .15]))
        roof = str(rng.choice(["flat", "pitched", "gable"], p=[.5, .3, .2]))
    else:
        width, floors, floor_h = rng.uniform(7, 13), int(rng.integers(1, 4)), rng.uniform(2.7, 3.1)
        material = str(rng.choice(["plaster", "brick", "siding"], p=[.45, .3, .25]))
        roof = str(rng.choice(["flat", "pitched", "gable"], p=[.2, .45, .35]))
    parapet = 0.8 if roof == "flat" else 0.3
    height = floors * floor_h + parapet + (0.6 if kind != "residential" else 0.0)
    w, h = int(round(width * PPM)), int(round(height * PPM))
    img = _wall(rng, material, h, w)
    # Cornice / parapet band at the top and floor lines.
    band = _jitter(rng, (200, 200, 200) if rng.random() < .5 else img[h // 2, w // 2] * 0.7, 15)
    cv2.rectangle(img, (0, 0), (w, int(parapet * PPM * 0.5)), band.tolist(), -1)
    if rng.random() < 0.5:
        for f in range(1, floors):
            y = h - int(round((f * floor_h + 0.6 * (kind != "residential")) * PPM))
            cv2.line(img, (0, y), (w, y), (img[y, 0] * 0.8).tolist(), 1)

    style = {
        "frame": _jitter(rng, [(235, 235, 235), (60, 60, 60), (40, 70, 110), (200, 210, 215)][rng.integers(4)], 10).tolist(),
        "glass": _jitter(rng, (120, 95, 70), 25).tolist(),
        "sill": bool(rng.random() < 0.6),
        "mullion": bool(rng.random() < 0.6),
        "shutters": (_jitter(rng, [(60, 110, 60), (70, 70, 150), (150, 90, 50)][rng.integers(3)], 15).tolist()
                     if material in ("plaster", "siding") and rng.random() < 0.35 else None),
    }
    if material == "glass":
        style.update(frame=(70, 70, 70), glass=_jitter(rng, (150, 120, 90), 20).tolist(), sill=False, shutters=None)
    pattern = rng.choice(["single", "paired", "tall", "wide", "ribbon"], p=[.35, .2, .15, .15, .15])
    win_w = {"single": 1.2, "paired": 0.9, "tall": 1.0, "wide": 2.2, "ribbon": 0.0}[pattern]
    win_h = {"single": 1.4, "paired": 1.4, "tall": 2.0, "wide": 1.5, "ribbon": 1.2}[pattern]
    bay = rng.uniform(2.4, 3.6) if pattern != "wide" else rng.uniform(3.2, 4.2)
    n_bays = max(1, int(width // bay))
    margin = (width - n_bays * bay) / 2
    windows: list[tuple[int, int, int, int, bool]] = []
    ground_h = floor_h + (0.6 if kind != "residential" else 0.0)
    shop = kind != "residential" and rng.random() < (0.85 if kind == "downtown" else 0.6)
    for f in range(1 if (shop or kind != "residential") else 0, floors):
        y_bottom = height - (f * floor_h + (0.6 if (kind != "residential" and f > 0) else 0.0)) - 0.9
        y1, y0 = int(y_bottom * PPM), int((y_bottom - win_h) * PPM)
        if pattern == "ribbon" or material == "glass":
            x0, x1 = int(margin * PPM) + 2, int((width - margin) * PPM) - 2
            _draw_window(img, {**style, "shutters": None}, x0, y0, x1, y1)
            for xb in range(n_bays + 1):
                xx = int((margin + xb * bay) * PPM)
                cv2.line(img, (xx, y0), (xx, y1), style["frame"], 1)
            windows.append((x0, y0, x1, y1, False))
            continue
        for b in range(n_bays):
            cx = (margin + (b + 0.5) * bay) * PPM
            offsets = [-0.55, 0.55] if pattern == "paired" else [0.0]
            for off in offsets:
                x0 = int(cx + (off - win_w / 2) * PPM)
                x1 = int(cx + (off + win_w / 2) * PPM)
                _draw_window(img, style, x0, y0, x1, y1)
                windows.append((x0, y0, x1, y1, False))
    # Ground floor: a shop front with a sign band, or doors with windows.
    if shop:
        sign = _jitter(rng, SIGN_COLOURS[rng.integers(len(SIGN_COLOURS))], 20)
        sy0, sy1 = h - int(ground_h * PPM), h - int((ground_h - 0.8) * PPM)
        sx0, sx1 = int(rng.uniform(0.3, 0.2 * width) * PPM), w - int(rng.uniform(0.3, 0.2 * width) * PPM)
        cv2.rectangle(img, (sx0, sy0 + 2), (sx1, sy1), sign.tolist(), -1)
        letters = (255 - sign * 0.3) if sign.mean() < 128 else sign * 0.2
        for x in range(sx0 + 6, sx1 - 10, 9):
            if rng.random() < 0.8:
                cv2.rectangle(img, (x, sy0 + 5), (x + 6, sy1 - 3), letters.tolist(), -1)
        gx0, gx1 = sx0, sx1
        gy0, gy1 = sy1 + 3, h - 2
        _draw_window(img, {**style, "glass": _jitter(rng, (110, 100, 90), 20).tolist(), "shutters": None,
                           "sill": False}, gx0, gy0, gx1, gy1)
        windows.append((gx0, gy0, gx1, gy1, True))
        door_x = int(rng.uniform(gx0 + 8, max(gx0 + 9, gx1 - 24)))
        cv2.rectangle(img, (door_x, gy0 + 4), (door_x + 16, h), (40, 45, 50), -1)
    else:
        door_colour = _jitter(rng, [(40, 60, 90), (50, 50, 50), (30, 30, 110), (90, 60, 30)][rng.integers(4)], 15)
        for _ in range(1 if width < 14 else 2):
            dx = int(rng.uniform(0.15, 0.75) * w)
            cv2.rectangle(img, (dx - 2, h - int(2.4 * PPM) - 2), (dx + 18, h), style["frame"], -1)
            cv2.rectangle(img, (dx, h - int(2.4 * PPM)), (dx + 16, h), door_colour.tolist(), -1)
    roof_colour = tuple(_jitter(rng, [(50, 60, 120), (60, 60, 65), (40, 50, 90), (90, 90, 95)][rng.integers(4)], 12))
    return FacadeTemplate(kind, w / PPM, h / PPM, roof, roof_colour,
                          Texture(np.clip(img, 0, 255).astype(np.uint8)), windows)


def night_variants(template: FacadeTemplate, rng: np.random.Generator, n: int = 5) -> list[Texture]:
    """Emissive layers (black except lit windows) for a facade; one is picked per building and traversal."""
    h, w = template.texture.image.shape[:2]
    out = []
    for _ in range(n):
        img = np.zeros((h, w, 3), np.float32)
        p_lit = rng.uniform(0.15, 0.5)
        for x0, y0, x1, y1, is_shop in template.windows:
            if is_shop:
                if rng.random() < 0.6:
                    img[y0:y1, x0:x1] = _jitter(rng, (90, 150, 200), 25)
                continue
            # Ribbon windows light up per bay segment.
            for xs in range(x0, x1, 40):
                if rng.random() < p_lit:
                    img[y0 + 1:y1, xs + 1:min(xs + 38, x1) - 1] = _jitter(rng, (110, 190, 245), 40)
        out.append(Texture(np.clip(img, 0, 255).astype(np.uint8)))
    return out


# ----------------------------------------------------------------------------- trees

SPECIES = ("round", "oval", "spreading", "conifer", "small")
DECIDUOUS = {"round", "oval", "spreading", "small"}
LEAF = {
    "summer": [(40, 110, 50), (35, 95, 40), (55, 125, 70), (30, 85, 55)],
    "autumn": [(30, 110, 200), (20, 70, 180), (40, 160, 220), (35, 90, 150), (30, 120, 120)],
}


@dataclass(frozen=True)
class TreeSprite:
    """A tree drawn as a camera-facing billboard; per season texture; size in metres."""

    species: str
    width: float
    height: float
    seasons: dict[str, Texture]


def _branches(img: np.ndarray, x: float, y: float, angle: float, length: float, width: float,
              depth: int, rng: np.random.Generator, colour) -> None:
    """Recursive limbs; the winter sprite (and its label) is made of these."""
    if depth == 0 or length < 2:
        return
    x2, y2 = x + length * np.sin(angle), y - length * np.cos(angle)
    cv2.line(img, (int(x), int(y)), (int(x2), int(y2)), colour, max(1, int(round(width))), cv2.LINE_AA)
    children = 3 if rng.random() < 0.35 else 2
    for spread in np.linspace(-0.55, 0.55, children) + rng.normal(0, 0.12, children):
        _branches(img, x2, y2, angle + spread, length * rng.uniform(0.62, 0.8), width * 0.7, depth - 1, rng, colour)


def make_tree(rng: np.random.Generator, species: str) -> TreeSprite:
    """Crown of many shaded leaf clusters; the bare winter variant keeps trunk and branches."""
    height = {"round": 9, "oval": 13, "spreading": 10, "conifer": 11, "small": 5.5}[species] * rng.uniform(0.8, 1.25)
    aspect = {"round": 0.75, "oval": 0.35, "spreading": 1.05, "conifer": 0.45, "small": 0.7}[species]
    width = height * aspect
    H = 192
    W = int(round(H * aspect / 4) * 4)
    trunk_top = {"round": 0.45, "oval": 0.3, "spreading": 0.5, "conifer": 0.2, "small": 0.5}[species]
    bark = _jitter(rng, (45, 60, 75), 10).tolist()
    wood = np.zeros((H, W, 4), np.uint8)
    tw = max(3, int(W * 0.07))
    cv2.rectangle(wood, (W // 2 - tw // 2, int(H * (1 - trunk_top))), (W // 2 + tw // 2, H), bark + [255], -1)
    cy, ry = H * (1 - trunk_top) * 0.5 + 4, H * (1 - trunk_top) * 0.5 + (10 if species != "conifer" else 25)
    rx = W * 0.48
    leaf_mask = np.zeros((H, W), np.uint8)
    shade = np.zeros((H, W), np.float32)
    hue = np.zeros((H, W), np.float32)  # per leaf cluster: which palette colour
    for _ in range(520):
        if species == "conifer":
            v = rng.uniform(0.02, 1.0)
            u = rng.uniform(-1, 1) * v
            px, py = W / 2 + u * rx, 2 + v * (H * (1 - trunk_top) - 2)
        else:
            a, r = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1))
            px, py = W / 2 + r * rx * np.cos(a) * 0.92, cy + r * ry * np.sin(a) * 0.92
        rad = int(rng.uniform(0.04, 0.09) * W if species != "oval" else rng.uniform(0.09, 0.17) * W)
        light = 0.75 + 0.5 * (1 - (py / H)) - 0.25 * ((px - W / 2) / W) + rng.uniform(-0.15, 0.15)
        centre = (int(px), int(py))
        cv2.circle(leaf_mask, centre, rad, 1, -1)
        cv2.circle(shade, centre, rad, float(light), -1)
        cv2.circle(hue, centre, rad, float(rng.random()), -1)
    shade = (shade * (1 + 0.12 * _noise(rng, (H, W), 1.0) + 0.2 * _noise(rng, (H, W), 0.6))).clip(0.3, 1.4)
    twigs = wood.copy()  # bare crowns: limbs and a mesh of twigs inside the crown outline
    if species in DECIDUOUS:
        limb = H * (1 - trunk_top) * 0.36
        for angle in rng.uniform(-0.5, 0.5, 3 if species != "oval" else 2) * (1.8 if species == "spreading" else 1.0):
            _branches(twigs, W / 2, H * (1 - trunk_top), angle, limb * rng.uniform(0.8, 1.0), tw * 0.55, 5, rng,
                      bark + [255])
        ys, xs = np.nonzero(leaf_mask)
        for k in rng.integers(len(ys), size=len(ys) // 18):
            angle = rng.uniform(-0.8, 0.8) + np.arctan2(xs[k] - W / 2, H * (1 - trunk_top) - ys[k])
            length = rng.uniform(5, 14)
            end = (int(xs[k] + length * np.sin(angle)), int(ys[k] - length * np.cos(angle)))
            cv2.line(twigs, (int(xs[k]), int(ys[k])), end, bark + [255], 1)
        twigs[leaf_mask == 0] = wood[leaf_mask == 0]  # keep the crown outline
    seasons: dict[str, Texture] = {}
    for season in ("summer", "autumn", "winter"):
        img = (twigs if season == "winter" else wood).copy()
        if species == "conifer" or season != "winter":
            palette = np.asarray(LEAF["summer" if species == "conifer" else season], np.float32)
            leaves = palette[np.minimum((hue * len(palette)).astype(int), len(palette) - 1)] * shade[..., None]
            if species == "conifer" and season == "winter":
                leaves[(_noise(rng, (H, W), 1.5) > 0.2)] = (235, 235, 230)
            m = leaf_mask > 0
            img[m, :3] = np.clip(leaves[m], 0, 255).astype(np.uint8)
            img[m, 3] = 255
        seasons[season] = Texture(img, metres_per_px=height / H)
    return TreeSprite(species, width, height, seasons)


# ----------------------------------------------------------------------------- people, signs, barriers

def make_person(rng: np.random.Generator) -> Texture:
    """A pedestrian silhouette (1.75 m) with random clothes."""
    H, W = 112, 40
    img = np.zeros((H, W, 4), np.uint8)
    skin = _jitter(rng, [(140, 170, 220), (90, 120, 170), (60, 80, 120)][rng.integers(3)], 10).tolist() + [255]
    top = _jitter(rng, rng.uniform(20, 230, 3), 0).tolist() + [255]
    legs = _jitter(rng, [(40, 40, 40), (110, 70, 40), (150, 150, 150), (60, 50, 90)][rng.integers(4)], 15).tolist() + [255]
    cv2.circle(img, (W // 2, 9), 8, skin, -1)
    cv2.rectangle(img, (W // 2 - 11, 18), (W // 2 + 11, 62), top, -1)
    cv2.line(img, (W // 2 - 13, 22), (W // 2 - 16, 58), top, 6)
    cv2.line(img, (W // 2 + 13, 22), (W // 2 + 16, 58), top, 6)
    stride = int(rng.integers(0, 7))
    cv2.line(img, (W // 2 - 5, 62), (W // 2 - 5 - stride, H - 2), legs, 9)
    cv2.line(img, (W // 2 + 5, 62), (W // 2 + 5 + stride, H - 2), legs, 9)
    return Texture(img, metres_per_px=1.75 / H)


def make_signs() -> list[Texture]:
    """Traffic sign plates (0.7 m): prohibitory, mandatory, warning, information, stop."""
    out = []
    S = 48
    for kind in range(5):
        img = np.zeros((S, S, 4), np.uint8)
        c = (S // 2, S // 2)
        if kind == 0:
            cv2.circle(img, c, S // 2 - 1, (30, 30, 200, 255), -1)
            cv2.circle(img, c, S // 2 - 7, (240, 240, 240, 255), -1)
            cv2.putText(img, "50", (9, 32), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (20, 20, 20, 255), 2)
        elif kind == 1:
            cv2.circle(img, c, S // 2 - 1, (170, 80, 20, 255), -1)
            cv2.arrowedLine(img, (S // 2, 38), (S // 2, 10), (240, 240, 240, 255), 4, tipLength=0.4)
        elif kind == 2:
            tri = np.array([[S // 2, 2], [S - 2, S - 6], [2, S - 6]], np.int32)
            cv2.fillPoly(img, [tri], (30, 30, 210, 255))
            cv2.fillPoly(img, [((tri - c) * 0.7 + c).astype(np.int32)], (240, 240, 240, 255))
        elif kind == 3:
            cv2.rectangle(img, (2, 6), (S - 3, S - 7), (160, 90, 20, 255), -1)
            cv2.rectangle(img, (16, 14), (32, 36), (240, 240, 240, 255), -1)
        else:
            ang = np.pi / 8 + np.arange(8) * np.pi / 4
            oct_ = np.stack([c[0] + 23 * np.cos(ang), c[1] + 23 * np.sin(ang)], 1).astype(np.int32)
            cv2.fillPoly(img, [oct_], (30, 30, 200, 255))
            cv2.putText(img, "STOP", (4, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (240, 240, 240, 255), 1)
        out.append(Texture(img, metres_per_px=0.7 / S))
    return out


def make_fence(rng: np.random.Generator) -> Texture:
    """A tileable metal/wood fence with gaps (alpha)."""
    H, W = 24, 32
    img = np.zeros((H, W, 4), np.uint8)
    colour = _jitter(rng, [(50, 50, 50), (80, 110, 140), (200, 200, 200), (40, 80, 40)][rng.integers(4)], 10).tolist()
    pitch = int(rng.choice([4, 6, 8]))
    for x in range(0, W, pitch):
        cv2.rectangle(img, (x, 0), (x + max(1, pitch // 3), H), colour + [255], -1)
    cv2.rectangle(img, (0, 2), (W, 4), colour + [255], -1)
    cv2.rectangle(img, (0, H - 5), (W, H - 3), colour + [255], -1)
    return Texture(img)


def make_stone_wall(rng: np.random.Generator) -> Texture:
    img = _wall(rng, "stone", 32, 64)
    return Texture(np.clip(img, 0, 255).astype(np.uint8))


def make_hedge(rng: np.random.Generator) -> Texture:
    n = _noise(rng, (32, 64), 1.2)
    img = np.stack([40 + 15 * n, 95 + 35 * n, 45 + 15 * n], -1)
    return Texture(np.clip(img, 0, 255).astype(np.uint8))


def make_noise(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Tileable grain in [-1, 1] for asphalt, pavement and grass."""
    return (0.6 * _noise(rng, (size, size), 0.7) + 0.4 * _noise(rng, (size, size), 3.0)).astype(np.float32)
