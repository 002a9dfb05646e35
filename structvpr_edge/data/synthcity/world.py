"""City generation: a jittered street grid with building frontages, trees, poles and barriers.

World frame: x = east, y = north, z = up (metres). Blocks reuse a limited set of facade
templates, so one facade aliases across the city and only the layout of several elements
(heights, setbacks, gaps, trees, poles) identifies a place.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...labels import CLASS_ID
from . import textures as tx

DISTRICTS = ("downtown", "mixed", "residential")

# Ground materials: the renderer colours them, their class is fixed.
GROUND_MATERIALS = ("asphalt", "marking", "curb", "sidewalk", "grass", "paved", "far")
GROUND_CLASS = np.array([CLASS_ID["road"], CLASS_ID["road"], CLASS_ID["sidewalk"], CLASS_ID["sidewalk"],
                         CLASS_ID["terrain"], CLASS_ID["sidewalk"], CLASS_ID["terrain"]], np.uint8)
ASPHALT, MARKING, CURB, SIDEWALK, GRASS, PAVED, FAR = range(len(GROUND_MATERIALS))


@dataclass(frozen=True)
class CityConfig:
    """Size and character of one procedural city."""

    blocks: int = 8              # blocks per axis, including the outer ring that is never driven
    block_min: float = 75.0      # metres between street centre lines
    block_max: float = 125.0
    templates: int = 60          # facade templates shared by the whole city
    tree_variants: int = 3       # sprites per tree species
    max_depth: float = 16.0      # building depth limit behind the frontage


@dataclass(frozen=True)
class Building:
    x0: float
    y0: float
    x1: float
    y1: float
    height: float
    template: int
    front: int  # outward normal of the street facade: 0 east, 1 north, 2 west, 3 south
    uid: int


@dataclass(frozen=True)
class Tree:
    x: float
    y: float
    sprite: int
    scale: float


@dataclass(frozen=True)
class Pole:
    kind: str  # lamp | sign | tlight
    x: float
    y: float
    nx: float  # unit vector from the pole towards the road
    ny: float
    height: float
    variant: int


@dataclass(frozen=True)
class Barrier:
    kind: str  # fence | wall | hedge
    x0: float
    y0: float
    x1: float
    y1: float
    height: float
    variant: int


@dataclass(frozen=True)
class Street:
    """A drivable grid line; the camera drives it in one direction in the right lane."""

    sid: int
    axis: str  # "ns" (x = coord) or "ew" (y = coord)
    coord: float
    half_width: float
    start: float
    end: float
    heading: float  # compass degrees: 0 north, 90 east


@dataclass(frozen=True)
class Place:
    street: int
    s: float           # along-street coordinate (y for ns, x for ew)
    x: float           # right-lane camera position, world metres
    y: float
    heading: float


@dataclass
class World:
    seed: int
    config: CityConfig
    xs: np.ndarray        # ns street centre lines (east)
    ys: np.ndarray        # ew street centre lines (north)
    hx: np.ndarray        # road half widths of the ns streets
    hy: np.ndarray
    sw: float             # sidewalk width
    yard: np.ndarray      # (blocks, blocks) material of open ground inside a block
    streets: list[Street]
    buildings: list[Building]
    trees: list[Tree]
    poles: list[Pole]
    barriers: list[Barrier]
    templates: list[tx.FacadeTemplate]
    tree_sprites: list[tx.TreeSprite]
    people: list[tx.Texture]
    signs: list[tx.Texture]
    fences: list[tx.Texture]
    walls: list[tx.Texture]
    hedges: list[tx.Texture]
    noise: np.ndarray
    objects: list = field(default_factory=list)
    centres: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    radii: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kinds: np.ndarray = field(default_factory=lambda: np.zeros(0))  # 0 building, 1 tree, 2 other
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))  # x0 y0 z0 x1 y1 z1
    skyline: dict = field(default_factory=dict)  # axis -> (lines, side, metre) street-wall height


    def index(self) -> None:
        """Flatten all static objects into arrays for fast view culling (centre, radius, 3D box)."""
        self.objects = [*self.buildings, *self.trees, *self.poles, *self.barriers]
        boxes = []
        for o in self.objects:
            if isinstance(o, Building):
                boxes.append((o.x0, o.y0, 0.0, o.x1, o.y1, o.height + 5.0))
            elif isinstance(o, Barrier):
                boxes.append((min(o.x0, o.x1) - 0.4, min(o.y0, o.y1) - 0.4, 0.0,
                              max(o.x0, o.x1) + 0.4, max(o.y0, o.y1) + 0.4, o.height))
            elif isinstance(o, Tree):
                sprite = self.tree_sprites[o.sprite]
                r = sprite.width * o.scale / 2
                boxes.append((o.x - r, o.y - r, 0.0, o.x + r, o.y + r, sprite.height * o.scale))
            else:
                boxes.append((o.x - 2.0, o.y - 2.0, 0.0, o.x + 2.0, o.y + 2.0, o.height))
        self.boxes = np.asarray(boxes, np.float64)
        self.centres = (self.boxes[:, :2] + self.boxes[:, 3:5]) / 2
        self.radii = np.hypot(*(self.boxes[:, 3:5] - self.boxes[:, :2]).T) / 2
        self.kinds = np.array([0 if isinstance(o, Building) else 1 if isinstance(o, Tree) else 2 for o in self.objects])
        self._skylines()

    def _skylines(self) -> None:
        """Height of the street wall along both sides of every grid line, per metre (for cast shadows)."""
        n = len(self.xs)
        self.skyline = {axis: np.zeros((n, 2, int(max(self.xs[-1], self.ys[-1])) + 2), np.float32) for axis in ("ns", "ew")}
        for b in self.buildings:
            # front 0 (east-facing) stands on the west side (0) of the ns street east of it, and so on.
            axis, line, side, lo, hi = {
                0: ("ns", np.searchsorted(self.xs, b.x1), 0, b.y0, b.y1),
                2: ("ns", np.searchsorted(self.xs, b.x0) - 1, 1, b.y0, b.y1),
                1: ("ew", np.searchsorted(self.ys, b.y1), 0, b.x0, b.x1),
                3: ("ew", np.searchsorted(self.ys, b.y0) - 1, 1, b.x0, b.x1),
            }[b.front]
            if 0 <= line < n:
                seg = self.skyline[axis][line, side, max(int(lo), 0):int(hi) + 1]
                np.maximum(seg, b.height, out=seg)

    def in_shadow(self, x: np.ndarray, y: np.ndarray, sun: np.ndarray) -> np.ndarray:
        """Ground points on streets shaded by the building wall between them and the sun (vectorised)."""
        shadow = np.zeros(x.shape, bool)
        if sun[2] <= 0.02:
            return shadow
        for axis, lines, half, across, along, s_across, s_along in (
                ("ns", self.xs, self.hx, x, y, sun[0], sun[1]), ("ew", self.ys, self.hy, y, x, sun[1], sun[0])):
            if abs(s_across) < 1e-3:
                continue
            i = _nearest(lines, across, np.searchsorted(lines, across))
            side = 0 if s_across < 0 else 1            # the wall on the sun's side
            wall = lines[i] + (2 * side - 1) * (half[i] + self.sw)
            t = (wall - across) / s_across                # distance along the sun ray to the wall plane
            on_street = np.abs(across - lines[i]) < half[i] + self.sw
            hit = np.clip((along + t * s_along).astype(np.int64), 0, self.skyline[axis].shape[2] - 1)
            shadow |= on_street & (t > 0) & (t * sun[2] < self.skyline[axis][i, side, hit])
        return shadow

    def ground(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground material code at world points (vectorised): roads, markings, curbs, sidewalks, yards."""
        sx, sy = np.searchsorted(self.xs, x), np.searchsorted(self.ys, y)
        ix, iy = _nearest(self.xs, x, sx), _nearest(self.ys, y, sy)
        dx, dy = np.abs(x - self.xs[ix]), np.abs(y - self.ys[iy])
        hx, hy = self.hx[ix], self.hy[iy]
        on_x, on_y = dx < hx, dy < hy
        mat = self.yard[np.clip(sx - 1, 0, self.yard.shape[0] - 1), np.clip(sy - 1, 0, self.yard.shape[1] - 1)]
        mat[(dx < hx + self.sw) | (dy < hy + self.sw)] = SIDEWALK
        mat[(dx < hx + 0.25) | (dy < hy + 0.25)] = CURB
        mat[on_x | on_y] = ASPHALT
        # Markings: dashed centre line and edge lines outside intersections, zebra crossings before them.
        free_x = on_x & (dy > hy + self.sw)
        free_y = on_y & (dx > hx + self.sw)
        dash_x = free_x & (((dx < 0.08) & (np.mod(y, 9.0) < 4.5)) | (np.abs(dx - hx + 0.35) < 0.07))
        dash_y = free_y & (((dy < 0.08) & (np.mod(x, 9.0) < 4.5)) | (np.abs(dy - hy + 0.35) < 0.07))
        zebra_x = on_x & (dy > hy + self.sw + 0.5) & (dy < hy + self.sw + 3.5) & (np.mod(x, 1.0) < 0.5)
        zebra_y = on_y & (dx > hx + self.sw + 0.5) & (dx < hx + self.sw + 3.5) & (np.mod(y, 1.0) < 0.5)
        mat[dash_x | dash_y | zebra_x | zebra_y] = MARKING
        outside = (x < self.xs[0] - 40) | (x > self.xs[-1] + 40) | (y < self.ys[0] - 40) | (y > self.ys[-1] + 40)
        mat[outside] = FAR
        return mat


def _nearest(lines: np.ndarray, v: np.ndarray, insert: np.ndarray) -> np.ndarray:
    """Index of the line nearest to each value, given ``np.searchsorted(lines, v)``."""
    i = np.clip(insert, 1, len(lines) - 1)
    return np.where(v - lines[i - 1] < lines[i] - v, i - 1, i)


def _lines(rng: np.random.Generator, cfg: CityConfig) -> np.ndarray:
    gaps = rng.uniform(cfg.block_min, cfg.block_max, cfg.blocks)
    return np.concatenate([[0.0], np.cumsum(gaps)])


def _frontage(rng: np.random.Generator, world: World, district: str, p: np.ndarray, a: np.ndarray,
              n: np.ndarray, length: float, depth: float, by_kind: dict[str, list[int]]) -> None:
    """Fill one block side with buildings, gaps/yards (trees, hedges, fences, walls)."""
    front = {(1, 0): 0, (0, 1): 1, (-1, 0): 2, (0, -1): 3}[(int(n[0]), int(n[1]))]
    pool = by_kind[district]
    p_gap = {"downtown": 0.08, "mixed": 0.2, "residential": 0.35}[district]
    base_setback = {"downtown": 0.0, "mixed": 1.0, "residential": 3.5}[district]
    u = 0.0 if rng.random() < 0.7 else rng.uniform(2, 8)
    while u < length - 4:
        if rng.random() < p_gap:
            gap = min(rng.uniform(3, 14), length - u)
            for _ in range(int(gap // 5) + int(rng.random() < 0.6)):
                q = p + a * rng.uniform(u + 1, u + gap - 1) - n * rng.uniform(2, min(9, depth))
                sprite = _tree_sprite(rng, world, rng.choice(len(tx.SPECIES), p=YARD_SPECIES))
                world.trees.append(Tree(float(q[0]), float(q[1]), sprite, float(rng.uniform(0.8, 1.2))))
            if rng.random() < 0.5:
                _barrier(rng, world, p + a * u, p + a * (u + gap), district)
            u += gap
            continue
        tmpl = pool[int(rng.integers(len(pool)))]
        width = min(world.templates[tmpl].width, length - u)
        if width < 5:
            break
        setback = max(0.0, base_setback + rng.normal(0, 1.2 if district != "downtown" else 0.4))
        bdepth = min(depth - setback, rng.uniform(9, 16))
        q0 = p + a * u - n * setback
        q1 = p + a * (u + width) - n * (setback + bdepth)
        world.buildings.append(Building(float(min(q0[0], q1[0])), float(min(q0[1], q1[1])),
                                        float(max(q0[0], q1[0])), float(max(q0[1], q1[1])),
                                        world.templates[tmpl].height, tmpl, front, len(world.buildings)))
        if setback > 2.0 and rng.random() < 0.6:
            _barrier(rng, world, p + a * u, p + a * (u + width), district)
            if rng.random() < 0.5:
                q = p + a * rng.uniform(u + 1, u + width - 1) - n * setback * 0.5
                sprite = _tree_sprite(rng, world, rng.choice(len(tx.SPECIES), p=YARD_SPECIES))
                world.trees.append(Tree(float(q[0]), float(q[1]), sprite,
                                        float(rng.uniform(0.6, 0.9))))
        u += width
        if district != "downtown" and rng.random() < 0.15:
            u += rng.uniform(1.5, 3.0)  # alley


# Species frequencies (order of textures.SPECIES): street rows are mostly deciduous, yards mixed.
STREET_SPECIES = np.array([0.3, 0.2, 0.2, 0.15, 0.15])
YARD_SPECIES = np.array([0.2, 0.15, 0.1, 0.4, 0.15])


def _tree_sprite(rng: np.random.Generator, world: World, species: int) -> int:
    """Index of a random sprite variant of ``species`` (index into textures.SPECIES)."""
    return species * world.config.tree_variants + int(rng.integers(world.config.tree_variants))


def _barrier(rng: np.random.Generator, world: World, q0: np.ndarray, q1: np.ndarray, district: str) -> None:
    kind = str(rng.choice(["fence", "wall", "hedge"], p=[.4, .25, .35] if district == "residential" else [.5, .4, .1]))
    height = {"fence": rng.uniform(1.0, 1.8), "wall": rng.uniform(0.6, 1.6), "hedge": rng.uniform(0.8, 1.6)}[kind]
    variant = int(rng.integers({"fence": len(world.fences), "wall": len(world.walls), "hedge": len(world.hedges)}[kind]))
    world.barriers.append(Barrier(kind, float(q0[0]), float(q0[1]), float(q1[0]), float(q1[1]), float(height), variant))


def _furniture(rng: np.random.Generator, world: World, axis: str, i: int) -> None:
    """Street trees, lamps, signs and traffic lights along both sides of one grid line."""
    lines, cross, h, hc = (world.xs, world.ys, world.hx, world.hy) if axis == "ns" else (world.ys, world.xs, world.hy, world.hx)
    for j in range(len(cross) - 1):
        lo, hi = cross[j] + hc[j] + world.sw, cross[j + 1] - hc[j + 1] - world.sw
        for side in (-1, 1):
            lateral = lines[i] + side * (h[i] + 0.7)

            def at(s: float) -> tuple[float, float]:
                return (lateral, s) if axis == "ns" else (s, lateral)

            towards_road = (-side, 0.0) if axis == "ns" else (0.0, -side)
            if rng.random() < 0.55:
                species = rng.choice(len(tx.SPECIES), p=STREET_SPECIES)
                spacing = rng.uniform(7, 13)
                for s in np.arange(lo + rng.uniform(2, spacing), hi - 2, spacing):
                    if rng.random() < 0.85:
                        sprite = _tree_sprite(rng, world, species)
                        world.trees.append(Tree(*at(s + rng.normal(0, 0.7)), sprite, float(rng.uniform(0.75, 1.15))))
            if rng.random() < 0.8:
                spacing = rng.uniform(22, 36)
                for s in np.arange(lo + rng.uniform(3, spacing), hi - 3, spacing):
                    world.poles.append(Pole("lamp", *at(s), *towards_road, float(rng.uniform(6, 8.5)), int(rng.integers(2))))
            for _ in range(int(rng.integers(0, 3))):
                s = rng.uniform(lo + 2, hi - 2)
                world.poles.append(Pole("sign", *at(s), *towards_road, float(rng.uniform(2.3, 3.0)), int(rng.integers(len(world.signs)))))
            if rng.random() < 0.35:
                s = lo + 1.0 if side > 0 else hi - 1.0
                world.poles.append(Pole("tlight", *at(s), *towards_road, float(rng.uniform(3.5, 5.0)), 0))


def build_world(seed: int, config: CityConfig = CityConfig()) -> World:
    """Generate the whole city deterministically from ``seed``."""
    rng = np.random.default_rng([seed, 0xC17])
    xs, ys = _lines(rng, config), _lines(rng, config)
    n = len(xs)
    templates, by_kind = [], {d: [] for d in DISTRICTS}
    for t in range(config.templates):
        kind = DISTRICTS[t % 3]
        templates.append(tx.make_facade(rng, kind))
        by_kind[kind].append(t)
    tree_sprites = [tx.make_tree(rng, s) for s in tx.SPECIES for _ in range(config.tree_variants)]
    world = World(
        seed=seed, config=config, xs=xs, ys=ys,
        hx=rng.choice([3.5, 4.5, 5.5, 7.0], n), hy=rng.choice([3.5, 4.5, 5.5, 7.0], n), sw=3.0,
        yard=np.where(rng.random((n - 1, n - 1)) < 0.5, GRASS, PAVED).astype(np.uint8),
        streets=[], buildings=[], trees=[], poles=[], barriers=[], templates=templates,
        tree_sprites=tree_sprites, people=[tx.make_person(rng) for _ in range(12)], signs=tx.make_signs(),
        fences=[tx.make_fence(rng) for _ in range(4)], walls=[tx.make_stone_wall(rng) for _ in range(3)],
        hedges=[tx.make_hedge(rng) for _ in range(2)], noise=tx.make_noise(rng),
    )
    # Districts vary smoothly: downtown near a random centre, residential towards the edges.
    centre = rng.uniform(0.3, 0.7, 2) * (n - 1)
    for bi in range(n - 1):
        for bj in range(n - 1):
            dist = np.hypot(bi + 0.5 - centre[0], bj + 0.5 - centre[1]) / (n - 1) + rng.normal(0, 0.12)
            district = DISTRICTS[0 if dist < 0.2 else 1 if dist < 0.45 else 2]
            bx0, bx1 = xs[bi] + world.hx[bi] + world.sw, xs[bi + 1] - world.hx[bi + 1] - world.sw
            by0, by1 = ys[bj] + world.hy[bj] + world.sw, ys[bj + 1] - world.hy[bj + 1] - world.sw
            de = min(config.max_depth, (by1 - by0) / 2 - 1)
            dn = min(config.max_depth, (bx1 - bx0) / 2 - 1)
            for p, a, nn, length, depth in (
                ((bx0, by0), (1, 0), (0, -1), bx1 - bx0, de),
                ((bx0, by1), (1, 0), (0, 1), bx1 - bx0, de),
                ((bx0, by0 + de), (0, 1), (-1, 0), by1 - by0 - 2 * de, dn),
                ((bx1, by0 + de), (0, 1), (1, 0), by1 - by0 - 2 * de, dn),
            ):
                _frontage(rng, world, district, np.asarray(p, float), np.asarray(a, float),
                          np.asarray(nn, float), length, depth, by_kind)
    for axis in ("ns", "ew"):
        for i in range(n):
            _furniture(rng, world, axis, i)
    for i in range(1, n - 1):
        forward = bool(rng.random() < 0.5)
        world.streets.append(Street(len(world.streets), "ns", float(xs[i]), float(world.hx[i]),
                                    float(ys[1]), float(ys[-2]), 0.0 if forward else 180.0))
        forward = bool(rng.random() < 0.5)
        world.streets.append(Street(len(world.streets), "ew", float(ys[i]), float(world.hy[i]),
                                    float(xs[1]), float(xs[-2]), 90.0 if forward else 270.0))
    world.index()
    return world


def street_places(street: Street, spacing: float) -> list[Place]:
    """Camera places every ``spacing`` metres in the right lane, in driving order."""
    s_values = np.arange(street.start + spacing / 2, street.end - spacing / 2, spacing)
    if street.heading in (180.0, 270.0):
        s_values = s_values[::-1]
    h = np.radians(street.heading)
    right = np.array([np.cos(h), -np.sin(h)])
    out = []
    for s in s_values:
        centre = np.array([street.coord, s]) if street.axis == "ns" else np.array([s, street.coord])
        pos = centre + right * street.half_width / 2
        out.append(Place(street.sid, float(s), float(pos[0]), float(pos[1]), street.heading))
    return out
