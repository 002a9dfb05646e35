"""Pinhole camera and a z-buffered polygon rasterizer that draws colour and labels together.

Every surface is a planar polygon: it is clipped at the near plane, filled with cv2.fillPoly over its
bounding box, depth-tested with the plane's inverse depth (linear in pixel coordinates) and, when
textured, coloured by warping the texture with the plane-induced homography.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from ...labels import CLASS_ID
from . import conditions as cond
from . import world as wd
from .textures import Texture, night_variants

NEAR = 0.1
ALPHA_CUT = 90  # sprite coverage that counts as solid; keeps distant twigs and fences labelled
UP = np.array([0.0, 0.0, 1.0])
LAMP_COLOUR = np.array([0.6, 0.85, 1.0], np.float32)
LAMP_POWER, LAMP_RANGE = 2.5, 6.0  # light pools: power / (1 + d^2 / range^2)^2
SKY = CLASS_ID["sky"]


@dataclass(frozen=True)
class Camera:
    """Pose in world metres/degrees (heading: compass, 0 = north, 90 = east) and intrinsics."""

    x: float
    y: float
    z: float
    heading: float
    pitch: float = 0.0
    roll: float = 0.0
    width: int = 320
    height: int = 240
    hfov: float = 80.0

    @cached_property
    def focal(self) -> float:
        return self.width / 2 / np.tan(np.radians(self.hfov) / 2)

    @cached_property
    def K(self) -> np.ndarray:
        return np.array([[self.focal, 0, self.width / 2], [0, self.focal, self.height / 2], [0, 0, 1]])

    @cached_property
    def R(self) -> np.ndarray:
        """World-to-camera rotation; camera axes: x right, y down, z forward."""
        h, p, r = np.radians([self.heading, self.pitch, self.roll])
        f0, right = np.array([np.sin(h), np.cos(h), 0]), np.array([np.cos(h), -np.sin(h), 0])
        forward = np.cos(p) * f0 + np.sin(p) * UP
        down = -np.cos(p) * UP + np.sin(p) * f0
        right, down = np.cos(r) * right + np.sin(r) * down, -np.sin(r) * right + np.cos(r) * down
        return np.stack([right, down, forward])

    @property
    def centre(self) -> np.ndarray:
        return np.array([self.x, self.y, self.z])


def _clip_near(p: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-space polygon against z >= NEAR."""
    inside = p[:, 2] >= NEAR
    if inside.all():
        return p
    out = []
    for i in range(len(p)):
        a, b = p[i], p[(i + 1) % len(p)]
        if inside[i]:
            out.append(a)
        if inside[i] != inside[(i + 1) % len(p)]:
            t = (NEAR - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.asarray(out)


class Canvas:
    """Colour (float BGR), label (uint8 class ids) and inverse-depth buffers of one view."""

    def __init__(self, cam: Camera) -> None:
        self.cam = cam
        self.img = np.zeros((cam.height, cam.width, 3), np.float32)
        self.label = np.full((cam.height, cam.width), SKY, np.uint8)
        self.inv = np.zeros((cam.height, cam.width), np.float32)
        self.glow = np.zeros((cam.height, cam.width, 3), np.float32)
        self.lamps = np.zeros((0, 3))  # lit street-lamp heads (world), set at dusk and night
        self._R, self._C, self._K = cam.R, cam.centre, cam.K
        self._c = np.array([cam.width / 2, cam.height / 2])
        self._us = np.arange(cam.width, dtype=np.float32) - np.float32(cam.width / 2)
        self._vs = np.arange(cam.height, dtype=np.float32) - np.float32(cam.height / 2)

    def lamp_light(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        """Light (BGR multiplier, (n, 3)) that the lit street lamps throw on world points at height z."""
        lx, ly, lz = self.lamps.T
        d2 = (x[:, None] - lx) ** 2 + (y[:, None] - ly) ** 2 + (z - lz) ** 2
        return (LAMP_POWER / (1 + d2 / LAMP_RANGE ** 2) ** 2).sum(axis=1, dtype=np.float32)[:, None] * LAMP_COLOUR

    def to_camera(self, pts: np.ndarray) -> np.ndarray:
        return (pts - self._C) @ self._R.T

    def polygon(self, pts: np.ndarray, cls: int, colour: np.ndarray | None = None,
                texture: Texture | None = None, frame: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                light: np.ndarray | float = 1.0, emissive: Texture | None = None) -> None:
        """Draw a planar world polygon (n,3) with a flat ``colour`` or a ``texture`` placed by ``frame``.

        ``frame`` = (origin, x step, y step): world position of texture pixel (0, 0) and the world
        vectors of one texture pixel along x and y. A texture with alpha cuts the polygon (sprites,
        fences); given both, the texture only cuts and ``colour`` fills.
        """
        cam = self.cam
        pc = _clip_near(self.to_camera(pts))
        n = len(pc)
        if n < 3:
            return
        uv = pc[:, :2] * (cam.focal / pc[:, 2:3]) + self._c
        lo, hi = uv.min(axis=0), uv.max(axis=0)
        x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
        x1, y1 = min(int(hi[0]) + 2, cam.width), min(int(hi[1]) + 2, cam.height)
        if x0 >= x1 or y0 >= y1:
            return
        zroi = self.inv[y0:y1, x0:x1]
        if 1.0 / pc[:, 2].min() <= zroi.min():  # entirely behind what is already drawn
            return
        # Plane normal from two crossing chords (exact for planar convex polygons), in camera space.
        (ax, ay, az), (bx, by, bz) = (pc[n // 2] - pc[0]).tolist(), (pc[3 * n // 4] - pc[n // 4]).tolist()
        nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
        px, py, pz = pc[0].tolist()
        d = nx * px + ny * py + nz * pz
        if abs(d) < 1e-9 * max(1.0, nx * nx + ny * ny + nz * nz):
            return
        f = cam.focal * d
        inv = np.add.outer(self._vs[y0:y1] * np.float32(ny / f) + np.float32(nz / d), self._us[x0:x1] * np.float32(nx / f))
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [((uv - (x0, y0)) * 16 + 0.5).astype(np.int32)], 1, cv2.LINE_8, 4)
        vis = mask.view(bool) & (inv > zroi)
        if not vis.any():
            return
        if texture is not None:
            warp = self._warp(texture, frame, pc[:, 2], x0, y0, x1 - x0, y1 - y0)
            if texture.has_alpha:
                vis &= warp[..., 3] > ALPHA_CUT
            if colour is None:
                col = warp[..., :3].astype(np.float32) * np.asarray(light, np.float32)
                if emissive is not None:
                    col += self._warp(emissive, frame, pc[:, 2], x0, y0, x1 - x0, y1 - y0)
        if colour is not None:
            col = np.empty((y1 - y0, x1 - x0, 3), np.float32)
            col[:] = np.asarray(colour, np.float32) * np.asarray(light, np.float32)
        # cv2.copyTo writes through the ROI views and is much faster than numpy masked assignment.
        m = vis.view(np.uint8)
        cv2.copyTo(inv, m, zroi)
        cv2.copyTo(np.full(m.shape, cls, np.uint8), m, self.label[y0:y1, x0:x1])
        cv2.copyTo(col, m, self.img[y0:y1, x0:x1])

    def _warp(self, texture: Texture, frame, depths: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        origin, ex, ey = frame
        # Mip level from how many texture pixels fall on one image pixel near the polygon's front.
        z = depths.min() + 0.25 * (depths.max() - depths.min())
        ratio = z / (self.cam.focal * float(np.linalg.norm(ex)))
        level = int(np.clip(np.floor(np.log2(max(ratio, 1e-6))), 0, len(texture.levels) - 1))
        tex = texture.levels[level]
        sx = texture.image.shape[1] / tex.shape[1]
        sy = texture.image.shape[0] / tex.shape[0]
        H = self._K @ self._R @ np.column_stack([ex * sx, ey * sy, origin - self._C])
        H = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]]) @ H
        return cv2.warpPerspective(tex, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)

    def add_glow(self, point: np.ndarray, colour, radius: float) -> None:
        """Emitted light (lamps, headlights) around a world point, hidden if something is in front."""
        pc = self.to_camera(point[None])[0]
        if pc[2] < 0.5:
            return
        u, v = pc[:2] / pc[2] * self.cam.focal + (self.cam.width / 2, self.cam.height / 2)
        r = self.cam.focal * radius / pc[2]
        if not (-r < u < self.cam.width + r and -r < v < self.cam.height + r):
            return
        ui, vi = int(np.clip(u, 0, self.cam.width - 1)), int(np.clip(v, 0, self.cam.height - 1))
        if self.inv[vi, ui] > 1.0 / pc[2] * 1.1:
            return
        cv2.circle(self.glow, (int(u), int(v)), max(1, int(r)), tuple(float(c) for c in colour), -1, cv2.LINE_AA)


# ----------------------------------------------------------------------------- scene parts

_RAY_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _pixel_grid(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    key = (cam.width, cam.height, cam.focal)
    if key not in _RAY_CACHE:
        v, u = np.mgrid[0:cam.height, 0:cam.width].astype(np.float32)
        _RAY_CACHE[key] = ((u - cam.width / 2) / cam.focal, (v - cam.height / 2) / cam.focal)
    return _RAY_CACHE[key]


def _rays(cam: Camera, step: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World directions of the pixel rays (camera-z component 1), every ``step`` pixels."""
    a, b = _pixel_grid(cam)
    a, b = a[::step, ::step], b[::step, ::step]
    R = cam.R.astype(np.float32)
    return tuple(R[0, k] * a + R[1, k] * b + R[2, k] for k in range(3))


def _sky(canvas: Canvas, world: wd.World, look: cond.Look) -> None:
    """Sky gradient with clouds, computed at quarter resolution (it is smooth) and upsampled."""
    dx, dy, dz = _rays(canvas.cam, 4)
    elev = dz / np.sqrt(dx * dx + dy * dy + dz * dz)
    t = np.clip(elev / 0.45, 0, 1)[..., None] ** 0.8
    sky = look.sky_horizon.astype(np.float32) * (1 - t) + look.sky_top.astype(np.float32) * t
    if look.cloudiness > 0:
        n = world.noise
        az = np.arctan2(dx, dy) / (2 * np.pi) + look.cloud_shift
        ci = (az * 4 * n.shape[1]).astype(np.int32) % n.shape[1]
        cj = (np.clip(elev, 0.01, 1) ** 0.5 * 1.5 * n.shape[0]).astype(np.int32) % n.shape[0]
        cloud = np.clip((n[cj, ci] + 0.35 * look.cloudiness) * 1.6, 0, 1)[..., None] * look.cloudiness
        cloud_col = (look.sky_horizon * 1.05 + 10).astype(np.float32)
        sky = sky * (1 - 0.7 * cloud) + cloud_col * 0.7 * cloud
    canvas.img[:] = cv2.resize(sky, (canvas.cam.width, canvas.cam.height), interpolation=cv2.INTER_LINEAR)


def _ground(canvas: Canvas, world: wd.World, look: cond.Look) -> None:
    """The ground plane, per pixel: material (road, marking, curb, sidewalk, yard) from the city map."""
    cam = canvas.cam
    dx, dy, dz = _rays(cam)
    idx = np.flatnonzero(dz < -cam.z / 2000)  # ground hits nearer than 2 km
    gd = cam.z / -dz.ravel()[idx]             # camera-z depth of the ground hit
    gx = cam.x + dx.ravel()[idx] * gd
    gy = cam.y + dy.ravel()[idx] * gd
    mat = world.ground(gx, gy)
    season = look.condition.season
    col = np.asarray(cond.GROUND_COLOURS[season], np.float32)[mat]
    n = world.noise
    grain = n[(gy * 6).astype(np.int32) % n.shape[0], (gx * 6).astype(np.int32) % n.shape[1]]
    factor = 1 + np.minimum(6.0 / gd, 1) * 0.18 * grain
    if season != "winter":  # paving joints near the camera
        joints = (mat == wd.SIDEWALK) & (gd < 25) & ((np.mod(gx, 1.2) < 0.05) | (np.mod(gy, 1.2) < 0.05))
        factor -= 0.25 * joints
    col *= factor[:, None]
    if season == "winter":  # trodden slush on the road
        slush = (mat <= wd.MARKING) & (n[(gy * 0.7).astype(np.int32) % n.shape[0], (gx * 0.7).astype(np.int32) % n.shape[1]] > 0.15)
        col[slush] = col[slush] * 0.4 + cond.SNOW.astype(np.float32) * 0.6
    wet = 0.7 if look.condition.weather == "rain" else 1.0  # wet road is darker
    light = np.empty((len(gx), 3), np.float32)
    light[:] = cond.shade(look, UP) * wet
    if look.diffuse > 0.2:  # cast shadows of the street walls: only ambient light there
        light[world.in_shadow(gx, gy, look.sun)] *= np.float32(look.ambient / (look.ambient + look.diffuse * look.sun[2]))
    if len(canvas.lamps):
        light += canvas.lamp_light(gx, gy, 0.0)
    col *= light
    canvas.img.reshape(-1, 3)[idx] = col
    canvas.label.reshape(-1)[idx] = wd.GROUND_CLASS[mat]
    canvas.inv.reshape(-1)[idx] = 1.0 / gd


def _hash01(*values: int) -> float:
    """Cheap deterministic hash of integers into [0, 1) (per building and traversal choices)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return (h & 0xFFFFFFFF) / 2 ** 32


FACE_NORMALS = np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]], float)


def _building(canvas: Canvas, world: wd.World, b: wd.Building, look: cond.Look, variation: int) -> None:
    tmpl = world.templates[b.template]
    tint = np.ones(3)
    if _hash01(variation, b.uid, 1) < look.repaint:  # repainted facade for this traversal
        tint = np.array([_hash01(variation, b.uid, k) for k in (2, 3, 4)]) * 0.9 + 0.55
    emissive = None
    if look.lit_windows:
        if not tmpl.night:
            tmpl.night.extend(night_variants(tmpl, np.random.default_rng([world.seed, b.template, 7])))
        emissive = tmpl.night[int(_hash01(variation, b.uid, 5) * len(tmpl.night))]
        if look.condition.time_of_day == "dusk" and _hash01(variation, b.uid, 6) < 0.5:
            emissive = None
    corners = np.array([[b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1], [b.x0, b.y0]])  # ccw from south-east
    # Each face: (start, end) corners in ccw order so the outward normal is to the right of start->end.
    faces = {0: (corners[0], corners[1]), 1: (corners[1], corners[2]), 2: (corners[2], corners[3]), 3: (corners[3], corners[0])}
    cam_xy = np.array([canvas.cam.x, canvas.cam.y])
    mpp = tmpl.texture.metres_per_px
    roof = tmpl.roof
    depth_axis = 0 if b.front in (0, 2) else 1  # footprint axis that runs away from the street
    span_depth = (b.x1 - b.x0) if depth_axis == 0 else (b.y1 - b.y0)
    span_width = (b.y1 - b.y0) if depth_axis == 0 else (b.x1 - b.x0)
    ridge = min(0.38 * (span_depth if roof == "pitched" else span_width), 5.0)
    roof_colour = cond.SNOW if look.condition.season == "winter" else np.asarray(tmpl.roof_colour)
    wall_colour = tmpl.texture.mean
    for k, (p0, p1) in faces.items():
        n = FACE_NORMALS[k]
        if n[:2] @ (cam_xy - (p0 + p1) / 2) <= 0:
            continue
        light = cond.shade(look, n) * tint
        if len(canvas.lamps):  # walls catch less lamp light than the ground below
            light += 0.4 * canvas.lamp_light(*((p0 + p1)[:, None] / 2), 3.0)[0] * tint
        quad = np.array([[*p0, 0], [*p1, 0], [*p1, b.height], [*p0, b.height]])
        along = np.append((p1 - p0) / np.linalg.norm(p1 - p0), 0)
        frame = (np.array([*p0, b.height]), along * mpp, -UP * mpp)
        canvas.polygon(quad, CLASS_ID["building"], texture=tmpl.texture, frame=frame, light=light,
                       emissive=emissive if k == b.front else None)
        # Gable ends: a triangle above the wall on the faces that cut the roof ridge.
        gable_face = (roof == "gable" and k == b.front) or (roof == "pitched" and k % 2 != b.front % 2)
        if gable_face:
            mid = (p0 + p1) / 2
            tri = np.array([[*p0, b.height], [*p1, b.height], [*mid, b.height + ridge]])
            canvas.polygon(tri, CLASS_ID["building"], colour=wall_colour, light=light)
    if roof == "flat":
        return
    # Sloped roof planes visible from the street (from below only the ones facing the camera).
    c = np.array([(b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2])
    for k, (p0, p1) in faces.items():
        if (roof == "pitched") != (k % 2 == b.front % 2):
            continue
        offset = c - (p0 + p1) / 2
        ridge_a, ridge_b = p0 + offset, p1 + offset
        plane = np.array([[*p0, b.height], [*p1, b.height], [*ridge_b, b.height + ridge], [*ridge_a, b.height + ridge]])
        normal = np.cross(plane[1] - plane[0], plane[3] - plane[0])
        if normal @ (canvas.cam.centre - plane[0]) <= 0:
            continue
        canvas.polygon(plane, CLASS_ID["building"], colour=roof_colour, light=cond.shade(look, normal / np.linalg.norm(normal)))


def billboard(canvas: Canvas, x: float, y: float, width: float, height: float, texture: Texture, cls: int,
               light: np.ndarray) -> None:
    """A camera-facing vertical sprite standing at (x, y)."""
    d = np.array([x - canvas.cam.x, y - canvas.cam.y])
    dist = np.linalg.norm(d)
    if dist < 0.3:
        return
    right = np.array([d[1], -d[0], 0]) / dist
    base = np.array([x, y, 0.0])
    quad = np.array([base - right * width / 2, base + right * width / 2,
                     base + right * width / 2 + UP * height, base - right * width / 2 + UP * height])
    h_px, w_px = texture.image.shape[:2]
    frame = (quad[3], right * width / w_px, -UP * height / h_px)
    canvas.polygon(quad, cls, texture=texture, frame=frame, light=light)


def _tree(canvas: Canvas, world: wd.World, t: wd.Tree, look: cond.Look) -> None:
    sprite = world.tree_sprites[t.sprite]
    billboard(canvas, t.x, t.y, sprite.width * t.scale, sprite.height * t.scale,
               sprite.seasons[look.condition.season], CLASS_ID["vegetation"], cond.shade(look, None))


def _vertical_quad(p0: np.ndarray, p1: np.ndarray, z0: float, z1: float) -> np.ndarray:
    return np.array([[*p0, z0], [*p1, z0], [*p1, z1], [*p0, z1]])


POLE_GREY = np.array([70, 72, 75.0])


def _pole(canvas: Canvas, world: wd.World, p: wd.Pole, look: cond.Look) -> None:
    light = cond.shade(look, None)
    base = np.array([p.x, p.y])
    road = np.array([p.nx, p.ny])
    d = base - (canvas.cam.x, canvas.cam.y)
    side = np.array([d[1], -d[0]]) / max(np.linalg.norm(d), 1e-3)
    width = 0.16 if p.kind == "lamp" else 0.08
    canvas.polygon(_vertical_quad(base - side * width / 2, base + side * width / 2, 0, p.height),
                   CLASS_ID["pole"], colour=POLE_GREY, light=light)
    if p.kind == "lamp":
        tip = base + road * 1.8
        canvas.polygon(_vertical_quad(base, tip, p.height - 0.12, p.height), CLASS_ID["pole"], colour=POLE_GREY, light=light)
        canvas.polygon(_vertical_quad(tip - road * 0.3 - side * 0.2, tip + side * 0.2, p.height - 0.25, p.height - 0.05),
                       CLASS_ID["pole"], colour=np.array([40, 40, 42.0]), light=light)
        if look.condition.time_of_day != "day":
            canvas.add_glow(np.array([*tip, p.height - 0.3]), (120, 200, 255), 0.9)
        return
    forward = np.array([p.ny, -p.nx])  # traffic on this side drives this way; plates face it
    facing = forward @ d < 0
    across = -road
    centre = np.array([*base, p.height - (0.35 if p.kind == "sign" else 0.5)])
    half_w, half_h = (0.35, 0.35) if p.kind == "sign" else (0.2, 0.5)
    a3 = np.append(across, 0)
    quad = np.array([centre - a3 * half_w - UP * half_h, centre + a3 * half_w - UP * half_h,
                     centre + a3 * half_w + UP * half_h, centre - a3 * half_w + UP * half_h])
    cls = CLASS_ID["traffic sign"] if p.kind == "sign" else CLASS_ID["traffic light"]
    if p.kind == "sign":
        tex = world.signs[p.variant]
        frame = (quad[3], a3 * 2 * half_w / tex.image.shape[1], -UP * 2 * half_h / tex.image.shape[0])
        canvas.polygon(quad, cls, texture=tex, frame=frame, light=light, colour=None if facing else POLE_GREY)
        return
    canvas.polygon(quad, cls, colour=np.array([30, 30, 30.0]), light=light)
    if facing and look.condition.time_of_day != "day":
        green = _hash01(int(p.x * 10), int(p.y * 10)) < 0.5
        lamp = centre + (UP * (-0.3 if green else 0.3)) + np.append(-forward, 0) * 0.05
        canvas.add_glow(lamp, (120, 230, 60) if green else (40, 40, 255), 0.6)


def box(canvas: Canvas, centre: np.ndarray, yaw: float, length: float, width: float, z0: float, z1: float,
         cls: int, colour: np.ndarray, look: cond.Look, texture: Texture | None = None,
         top: np.ndarray | None = None) -> None:
    """An oriented box (vehicles, hedges); only faces turned towards the camera are drawn.

    ``top`` colours the lid (default: the side colour), drawn when the camera looks down on it.
    """
    f = np.array([np.sin(yaw), np.cos(yaw)])
    r = np.array([f[1], -f[0]])
    c = [centre + f * length / 2 + r * width / 2, centre + f * length / 2 - r * width / 2,
         centre - f * length / 2 - r * width / 2, centre - f * length / 2 + r * width / 2]
    cam = canvas.cam.centre
    for i in range(4):
        p0, p1 = c[i], c[(i + 1) % 4]
        edge = p1 - p0
        n = np.array([edge[1], -edge[0], 0]) / max(np.linalg.norm(edge), 1e-6)
        if n[:2] @ (cam[:2] - p0) <= 0:
            continue
        quad = _vertical_quad(p0, p1, z0, z1)
        if texture is None:
            canvas.polygon(quad, cls, colour=colour, light=cond.shade(look, n))
        else:
            mpp = texture.metres_per_px
            frame = (np.array([*p0, z1]), np.append(edge / np.linalg.norm(edge), 0) * mpp, -UP * mpp)
            canvas.polygon(quad, cls, texture=texture, frame=frame, light=cond.shade(look, n))
    if cam[2] > z1:
        lid = colour if texture is None else texture.mean
        canvas.polygon(np.array([[*p, z1] for p in c]), cls, colour=lid if top is None else top,
                       light=cond.shade(look, UP))


def _barrier(canvas: Canvas, world: wd.World, b: wd.Barrier, look: cond.Look) -> None:
    p0, p1 = np.array([b.x0, b.y0]), np.array([b.x1, b.y1])
    length = float(np.linalg.norm(p1 - p0))
    if b.kind == "hedge":
        yaw = np.arctan2(*(p1 - p0))
        colour = cond.SNOW * 0.8 if look.condition.season == "winter" else world.hedges[b.variant].mean
        tex = None if look.condition.season == "winter" else world.hedges[b.variant]
        box(canvas, (p0 + p1) / 2, yaw, length, 0.8, 0, b.height, CLASS_ID["vegetation"], colour, look, tex)
        return
    tex = world.fences[b.variant] if b.kind == "fence" else world.walls[b.variant]
    along = np.append((p1 - p0) / length, 0)
    n = np.array([along[1], -along[0], 0])
    light = cond.shade(look, n if n[:2] @ (np.array([canvas.cam.x, canvas.cam.y]) - p0) > 0 else -n)
    scale = b.height / tex.image.shape[0] if b.kind == "fence" else tex.metres_per_px
    frame = (np.array([*p0, b.height]), along * scale, -UP * scale)
    canvas.polygon(_vertical_quad(p0, p1, 0, b.height), CLASS_ID[b.kind], texture=tex, frame=frame, light=light)


# ----------------------------------------------------------------------------- views

DRAW_DISTANCE = 260.0
LATERAL_RANGE = 45.0


def visible_objects(world: wd.World, cam: Camera) -> np.ndarray:
    """Indices of static objects near the view frustum, nearest first (so the z-buffer fills early)."""
    h = np.radians(cam.heading)
    f, r = np.array([np.sin(h), np.cos(h)]), np.array([np.cos(h), -np.sin(h)])
    rel = world.centres - (cam.x, cam.y)
    along, lateral = rel @ f, rel @ r
    half = np.tan(np.radians(cam.hfov / 2 + 6))
    keep = ((along + world.radii > 0) & (along - world.radii < DRAW_DISTANCE)
            & (np.abs(lateral) - world.radii < np.minimum(LATERAL_RANGE, np.maximum(along, 0) * half + 2)))
    # Thin things vanish with distance: skip poles, signs and barriers that would be sub-pixel.
    keep &= (world.kinds != 2) | (along < 80)
    idx = np.flatnonzero(keep)
    return idx[np.argsort(np.hypot(along[idx], lateral[idx]) - world.radii[idx])]


_CORNERS = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], float)


def draw_static(canvas: Canvas, world: wd.World, look: cond.Look, variation: int) -> None:
    """Everything that belongs to the city: sky, ground, buildings, trees, poles, barriers.

    Objects whose whole bounding box lies behind what is already drawn are skipped (occlusion culling).
    """
    cam = canvas.cam
    idx = visible_objects(world, cam)
    if look.condition.time_of_day != "day":
        lamps = [world.objects[i] for i in idx[:80] if isinstance(world.objects[i], wd.Pole) and world.objects[i].kind == "lamp"]
        canvas.lamps = np.array([[p.x + p.nx * 1.8, p.y + p.ny * 1.8, p.height - 0.3] for p in lamps[:10]]).reshape(-1, 3)
    _sky(canvas, world, look)
    _ground(canvas, world, look)
    boxes = world.boxes[idx]
    corners = boxes[:, None, :3] + _CORNERS[None] * (boxes[:, None, 3:] - boxes[:, None, :3])
    pc = canvas.to_camera(corners)                       # (n, 8, 3)
    z = pc[..., 2]
    in_front = (z > NEAR).all(axis=1)
    uv = pc[..., :2] / np.maximum(z, NEAR)[..., None] * cam.focal + (cam.width / 2, cam.height / 2)
    lo = np.clip(np.floor(uv.min(axis=1)).astype(int), 0, (cam.width, cam.height))
    hi = np.clip(np.ceil(uv.max(axis=1)).astype(int) + 1, 0, (cam.width, cam.height))
    inv_near = 1.0 / np.maximum(z.min(axis=1), NEAR)
    for k, i in enumerate(idx):
        if in_front[k]:
            (x0, y0), (x1, y1) = lo[k], hi[k]
            if x0 >= x1 or y0 >= y1 or inv_near[k] <= canvas.inv[y0:y1, x0:x1].min():
                continue
        obj = world.objects[i]
        if isinstance(obj, wd.Building):
            _building(canvas, world, obj, look, variation)
        elif isinstance(obj, wd.Tree):
            _tree(canvas, world, obj, look)
        elif isinstance(obj, wd.Pole):
            _pole(canvas, world, obj, look)
        else:
            _barrier(canvas, world, obj, look)
