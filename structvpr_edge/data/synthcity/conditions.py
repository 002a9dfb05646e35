"""Traversal conditions (time of day, season, weather, traffic) and the image effects they cause.

A :class:`Condition` is what the metadata reports; a :class:`Look` holds the concrete lighting and
camera parameters sampled for one traversal of one street. Labels never depend on the look.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

GROUPS = ("reference", "dynamic", "night", "season", "weather", "hard")
QUERY_GROUPS = GROUPS[1:]

# Choices per condition group: time of day, season, weather, traffic density.
_GROUP_CHOICES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[float, float]]] = {
    "reference": (("day",), ("summer",), ("clear",), (0.1, 0.35)),
    "dynamic": (("day",), ("summer",), ("clear",), (0.85, 1.0)),
    "night": (("night",), ("summer",), ("clear",), (0.2, 0.5)),
    "season": (("day",), ("autumn", "winter"), ("clear", "overcast"), (0.2, 0.5)),
    "weather": (("day",), ("summer",), ("fog", "rain", "overcast"), (0.2, 0.5)),
    "hard": (("night", "dusk"), ("autumn", "winter"), ("rain", "fog"), (0.3, 0.7)),
}


@dataclass(frozen=True)
class Condition:
    group: str
    time_of_day: str  # day | dusk | night
    season: str       # summer | autumn | winter
    weather: str      # clear | overcast | fog | rain
    traffic: float    # 0..1 density of parked/moving vehicles and pedestrians


def sample_condition(group: str, rng: np.random.Generator) -> Condition:
    times, seasons, weathers, traffic = _GROUP_CHOICES[group]
    return Condition(group, str(rng.choice(times)), str(rng.choice(seasons)), str(rng.choice(weathers)),
                     float(rng.uniform(*traffic)))


def fixed_condition(group: str, time_of_day: str, season: str, weather: str, traffic: float = 0.4) -> Condition:
    """A hand-picked condition (preview rows, tests)."""
    return Condition(group, time_of_day, season, weather, traffic)


@dataclass(frozen=True)
class Look:
    """Lighting, atmosphere and camera response for one traversal of one street."""

    condition: Condition
    sun: np.ndarray            # unit vector towards the sun (world)
    ambient: float
    diffuse: float
    tint: np.ndarray           # BGR multiplier of scene light
    sky_horizon: np.ndarray
    sky_top: np.ndarray
    cloudiness: float
    fog: np.ndarray            # fog colour
    visibility: float          # metres; aerial perspective / fog
    lit_windows: bool
    exposure: float
    white_balance: np.ndarray
    noise: float
    blur: float
    jpeg_quality: int
    gamma: float
    repaint: float             # fraction of facades repainted for this traversal
    camera_height: float
    cloud_shift: float


def make_look(condition: Condition, rng: np.random.Generator) -> Look:
    """Sample concrete light, sky, fog and camera response for ``condition`` (sun position, exposure...)."""
    tod, weather = condition.time_of_day, condition.weather
    elevation = {"day": rng.uniform(25, 60), "dusk": rng.uniform(2, 8), "night": -20.0}[tod]
    azimuth = rng.uniform(0, 360)
    el, az = np.radians(elevation), np.radians(azimuth)
    sun = np.array([np.cos(el) * np.sin(az), np.cos(el) * np.cos(az), np.sin(el)])
    if tod == "day":
        ambient, diffuse, tint = 0.5, 0.75, np.array([1.0, 1.0, 1.0])
        horizon, top = np.array([235, 215, 195.0]), np.array([215, 150, 90.0])
    elif tod == "dusk":
        ambient, diffuse, tint = 0.35, 0.35, np.array([0.75, 0.85, 1.1])
        horizon, top = np.array([120, 150, 235.0]), np.array([120, 70, 60.0])
    else:
        ambient, diffuse, tint = 0.12, 0.0, np.array([1.1, 1.0, 0.92])
        horizon, top = np.array([60, 50, 45.0]), np.array([30, 16, 10.0])
    cloudiness = {"clear": rng.uniform(0.0, 0.35), "overcast": 1.0, "fog": 1.0, "rain": 1.0}[weather]
    if weather != "clear":
        diffuse *= 0.15
        ambient *= 0.85 if tod != "night" else 1.0
        grey = horizon.mean() * (0.85 if weather == "rain" else 1.0)
        horizon = top = np.full(3, grey) * (0.9 if tod == "day" else 1.0)
    visibility = {"clear": rng.uniform(500, 900), "overcast": rng.uniform(300, 500),
                  "fog": rng.uniform(35, 90), "rain": rng.uniform(120, 220)}[weather]
    fog = horizon * (0.95 if tod == "day" else 1.2)
    if weather == "fog" and tod != "day":
        fog = np.array([70, 70, 70.0]) if tod == "dusk" else np.array([40, 40, 40.0])
    night = tod == "night"
    return Look(
        condition=condition, sun=sun, ambient=ambient, diffuse=diffuse, tint=tint,
        sky_horizon=horizon, sky_top=top, cloudiness=cloudiness, fog=fog, visibility=float(visibility),
        lit_windows=tod != "day",
        exposure=float(rng.uniform(1.4, 2.1) if night else rng.uniform(0.75, 1.25)),
        white_balance=rng.uniform(0.88, 1.12, 3) * (np.array([1.1, 1.0, 0.85]) if rng.random() < 0.3 else 1.0),
        noise=float(rng.uniform(5, 10) if night else rng.uniform(1, 4)),
        blur=float(rng.uniform(0.0, 1.1)),
        jpeg_quality=int(rng.integers(60, 95)),
        gamma=float(rng.uniform(0.75, 1.3)),
        repaint=float(rng.uniform(0.05, 0.2)) if condition.group != "reference" else 0.0,
        camera_height=float(rng.uniform(1.5, 2.0)),
        cloud_shift=float(rng.uniform(0, 1)),
    )


def shade(look: Look, normal: np.ndarray | None) -> np.ndarray:
    """BGR light multiplier for a surface with world ``normal`` (None: camera-facing sprite)."""
    lambert = 0.55 if normal is None else max(0.0, float(normal @ look.sun))
    return (look.ambient + look.diffuse * lambert) * look.tint


# Ground material colours (BGR) per season; order as world.GROUND_MATERIALS.
GROUND_COLOURS = {
    "summer": [(78, 78, 80), (215, 215, 215), (165, 165, 165), (150, 152, 155), (60, 125, 85), (130, 135, 140), (75, 130, 110)],
    "autumn": [(75, 75, 78), (205, 205, 205), (160, 160, 160), (140, 145, 150), (50, 110, 110), (120, 128, 135), (60, 110, 120)],
    "winter": [(140, 138, 135), (190, 190, 190), (225, 225, 225), (232, 232, 228), (240, 240, 236), (230, 230, 226), (235, 235, 232)],
}
SNOW = np.array([238, 238, 235.0])


@lru_cache(maxsize=4)
def _vignette(h: int, w: int) -> np.ndarray:
    yy, xx = np.ogrid[-1:1:complex(0, h), -1:1:complex(0, w)]
    return (1 - 0.22 * (xx * xx + yy * yy))[..., None].astype(np.float32)


def finish(img: np.ndarray, inv_depth: np.ndarray, glow: np.ndarray, look: Look,
           rng: np.random.Generator) -> np.ndarray:
    """Atmosphere, emitted light, rain and camera response; returns BGR uint8."""
    # Fog / aerial perspective: transmittance exp(-depth / visibility); the sky (inv 0) is all fog.
    keep = cv2.exp(-1.0 / (np.maximum(inv_depth, np.float32(1e-6)) * np.float32(look.visibility)))[..., None]
    fog = look.fog.astype(np.float32)
    img = (img - fog) * keep + fog
    if glow.any():
        img += cv2.GaussianBlur(glow, (0, 0), 5 if look.condition.weather == "fog" else 1.5) * (0.5 + 0.5 * keep)
    h, w = img.shape[:2]
    if look.condition.weather == "rain":
        streaks = np.zeros((h, w), np.float32)
        slant = rng.uniform(-0.3, 0.3)
        for x, y, length in zip(rng.uniform(0, w, 160), rng.uniform(-20, h, 160), rng.uniform(6, 22, 160)):
            cv2.line(streaks, (int(x), int(y)), (int(x + slant * length), int(y + length)), 1.0, 1)
        img = img * 0.85 + 18 + 45 * cv2.GaussianBlur(streaks, (3, 3), 0)[..., None]
    img *= (look.exposure * look.white_balance).astype(np.float32)
    if look.blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), look.blur)
    img *= _vignette(h, w)
    noise = np.empty((h, w), np.float32)
    cv2.setRNGSeed(int(rng.integers(2 ** 31)))  # seeded per image: deterministic in any worker
    cv2.randn(noise, 0.0, look.noise)
    img += noise[..., None]
    tone = (255 * (np.arange(256) / 255) ** look.gamma).astype(np.uint8)  # camera tone curve
    return cv2.LUT(np.clip(img, 0, 255).astype(np.uint8), tone)
