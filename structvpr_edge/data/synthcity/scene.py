"""One image: the static city plus this traversal's vehicles and pedestrians, then the look's effects.

Dynamic objects are sampled anew for every image from its own RNG, so they never identify a place.
"""
from __future__ import annotations

import numpy as np

from ...labels import CLASS_ID
from . import conditions as cond
from . import render as rd
from . import world as wd

CAR_COLOURS = [(30, 30, 30), (230, 230, 230), (160, 160, 160), (40, 40, 160), (140, 60, 30), (60, 90, 40),
               (90, 90, 95), (20, 120, 200), (120, 30, 30), (200, 200, 210)]
VEHICLES = {  # length, width, height, class
    "car": (4.4, 1.8, 1.5, "car"), "van": (5.5, 2.0, 2.4, "truck"), "truck": (8.0, 2.5, 3.4, "truck"),
    "bus": (12.0, 2.55, 3.2, "bus"),
}


def _vehicle(canvas: rd.Canvas, kind: str, centre: np.ndarray, yaw: float, colour: np.ndarray,
             look: cond.Look, towards_camera: bool) -> None:
    length, width, height, cls_name = VEHICLES[kind]
    cls = CLASS_ID[cls_name]
    dark = np.array([35, 35, 38.0])
    glass = np.array([80, 65, 55.0])
    f = np.array([np.sin(yaw), np.cos(yaw)])
    r = np.array([f[1], -f[0]])
    if kind == "car":
        rd.box(canvas, centre, yaw, length, width, 0.3, 0.95, cls, colour, look)
        rd.box(canvas, centre - f * 0.25, yaw, length * 0.55, width * 0.86, 0.95, height, cls, glass, look, top=colour)
    else:
        rd.box(canvas, centre, yaw, length, width, 0.35, height, cls, colour, look)
        rd.box(canvas, centre, yaw, length * 0.97, width + 0.02, height * 0.55, height * 0.82, cls, glass, look)
    for sign_f in (-1, 1):  # axles with their wheels, drawn last: mostly hidden under the body
        rd.box(canvas, centre + f * sign_f * length * 0.32, yaw, 0.65, width - 0.1, 0.0, 0.62, cls, dark, look)
    if look.condition.time_of_day != "day":
        front = centre + f * length / 2 * (1.02)
        back = centre - f * length / 2 * (1.02)
        for sign_r in (-1, 1):
            if towards_camera:
                canvas.add_glow(np.array([*(front + r * sign_r * width * 0.38), 0.7]), (200, 235, 255), 0.45)
            else:
                canvas.add_glow(np.array([*(back + r * sign_r * width * 0.4), 0.8]), (30, 30, 230), 0.22)


def draw_dynamic(canvas: rd.Canvas, world: wd.World, street: wd.Street, look: cond.Look,
                 rng: np.random.Generator) -> None:
    """Parked and moving vehicles and pedestrians around the camera, density from the condition."""
    cam = canvas.cam
    density = look.condition.traffic
    h = np.radians(street.heading)
    f, r = np.array([np.sin(h), np.cos(h)]), np.array([np.cos(h), -np.sin(h)])
    axis_centre = np.array([street.coord, cam.y]) if street.axis == "ns" else np.array([cam.x, street.coord])
    hw = street.half_width

    def at(along: float, lateral: float) -> np.ndarray:
        return axis_centre + f * along + r * lateral

    items: list[tuple[float, float, str, float, bool]] = []  # along, lateral, kind, yaw, towards camera
    for side in (-1, 1) if hw >= 4.5 else ():  # parked along both curbs of roads wide enough
        for along in np.arange(rng.uniform(-3, 3), 80, 6.2):
            if rng.random() < 0.7 * density:
                kind = "car" if rng.random() < 0.85 else "van"
                items.append((along, side * (hw - 1.15), kind, h if side > 0 else h + np.pi, side < 0))
    if hw >= 4.5:  # moving traffic in both lanes
        for along in rng.uniform(6, 90, rng.poisson(2.5 * density)):
            items.append((along, hw / 2, str(rng.choice(list(VEHICLES), p=[.7, .12, .08, .1])), h, False))
        for along in rng.uniform(6, 120, rng.poisson(2.5 * density)):
            items.append((along, -hw / 2, str(rng.choice(list(VEHICLES), p=[.7, .12, .08, .1])), h + np.pi, True))
    if rng.random() < 0.35 * density:  # a large vehicle right ahead hides much of the view
        kind = str(rng.choice(["bus", "truck", "van"]))
        items.insert(0, (rng.uniform(7, 14) + VEHICLES[kind][0] / 2, hw / 2 if hw >= 4.5 else hw - 1.3, kind, h, False))
    placed = [(0.0, (cam.x - axis_centre[0]) * r[0] + (cam.y - axis_centre[1]) * r[1], 4.5)]  # our own car
    for along, lateral, kind, yaw, towards in items:
        length = VEHICLES[kind][0]
        if any(abs(along - a2) < (length + l2) / 2 + 0.5 and abs(lateral - b2) < 2.2 for a2, b2, l2 in placed):
            continue
        placed.append((along, lateral, length))
        colour = np.asarray(CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))], np.float64)
        if kind == "bus":
            colour = np.array([40, 120, 220.0]) if rng.random() < 0.5 else np.array([200, 140, 40.0])
        _vehicle(canvas, kind, at(along, lateral), float(yaw), colour, look, towards)
    light = cond.shade(look, None)
    for _ in range(rng.poisson(10 * density)):
        along, side = rng.uniform(2, 55), rng.choice([-1, 1])
        p = at(along, side * (hw + rng.uniform(0.6, 2.8)))
        person = world.people[int(rng.integers(len(world.people)))]
        height = rng.uniform(1.55, 1.9)
        rd.billboard(canvas, float(p[0]), float(p[1]), height * 0.36, height, person, CLASS_ID["person"], light)


def render_view(world: wd.World, cam: rd.Camera, street: wd.Street, look: cond.Look,
                rng: np.random.Generator, variation: int = 0, dynamic: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Render one view: returns (BGR uint8 HxWx3 image, uint8 HxW Cityscapes train-id labels).

    ``variation`` selects per-traversal facade changes (repaint, lit windows); ``rng`` drives the
    dynamic objects and sensor noise of this image.
    """
    canvas = rd.Canvas(cam)
    rd.draw_static(canvas, world, look, variation)
    if dynamic:
        draw_dynamic(canvas, world, street, look, rng)
    return cond.finish(canvas.img, canvas.inv, canvas.glow, look, rng), canvas.label
