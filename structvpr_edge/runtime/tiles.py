"""Map tiles: a map cut into square geographic cells, loaded around a GNSS prior.

A fleet's city map does not fit a vehicle; the part around it does. ``cut_tiles`` writes each
cell (with ``overlap_m`` of its neighbours, so a place near a border is in both) as a normal
map folder with its own manifest, and ``tiles.json`` listing them. A ``TiledMap`` opens that
index, checks every tile is there and was built with the same model, and keeps the tiles under
the prior loaded: a new prior loads the missing tiles in a background thread and swaps them in
whole, so a frame never waits on a load (EdgeVPR reads ``TiledMap.view`` per batch).

Which tiles a prior needs: those whose cell meets the circle of radius ``radius - overlap``
around it; every point of the prior's circle then lies in one of their extended squares. With
a radius up to the overlap that is one tile, so a swap holds at most two. A cell of that inner
circle without a tile (no places: a gap in the coverage) lends no overlap, so the tiles next to
it that meet the prior's circle are loaded too: every place within the radius is in the view.
"""
from __future__ import annotations

import bisect
import json
import math
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, MapError
from ..files import open_regular, replace_whole
from .map import MAX_SMALL_FILE, Place, PlaceMap, _check_field, _read_manifest, check_writable, read_current

FORMAT = "structvpr-edge/tiles/1"
INDEX = "tiles.json"
DEFAULT_BUDGET_MB = 256.0  # without a prior, a tiled map this small (index files) is loaded whole


@dataclass(frozen=True)
class Tile:
    """One cell: columns and rows count ``size_m`` from east = north = 0; ``count`` places."""

    name: str
    col: int
    row: int
    count: int

    def __post_init__(self) -> None:
        _check_field("tile", "name", self.name, str)
        for name in ("col", "row"):
            _check_field("tile", name, getattr(self, name), int)
        _check_field("tile", "count", self.count, int, lambda v: v >= 0, "an integer >= 0")


@dataclass
class TileIndex:
    """The schema of tiles.json."""

    format: str
    size_m: float
    overlap_m: float
    frame_id: str
    layout_hash: str
    model_sha256: str
    tiles: list[Tile] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Typed and bounded when read, not when a prior first meets a wrong field."""
        for name in ("format", "frame_id", "layout_hash", "model_sha256"):
            _check_field("tiles", name, getattr(self, name), str)
        _check_field("tiles", "size_m", self.size_m, (int, float), lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
        _check_field("tiles", "overlap_m", self.overlap_m, (int, float), lambda v: 0 <= v < self.size_m / 2, "a number in [0, size_m / 2)")


def _cells(east: np.ndarray, north: np.ndarray, size: float, margin: float) -> list[tuple[int, int]]:
    """The cells whose square grown by ``margin`` holds (east, north)."""
    cols = range(math.floor((east - margin) / size), math.floor((east + margin) / size) + 1)
    rows = range(math.floor((north - margin) / size), math.floor((north + margin) / size) + 1)
    return [(c, r) for c in cols for r in rows]


def cut_tiles(place_map: PlaceMap, out: str | Path, size_m: float = 500.0, overlap_m: float = 50.0) -> TileIndex:
    """Write ``place_map`` as tiles of ``size_m`` with ``overlap_m`` into ``out``; tiles.json last."""
    if not (math.isfinite(size_m) and size_m > 0 and math.isfinite(overlap_m) and 0 <= overlap_m < size_m / 2):
        raise ConfigError(f"tiles need a size > 0 and an overlap in [0, size/2), got {size_m} and {overlap_m}")
    if place_map.vectors is None and place_map.factory != "Flat":
        raise MapError(f"tiles are cut from a flat or ivfpq map (their exact rows), not {place_map.factory}")
    out = Path(out)
    check_writable(out)
    count = len(place_map)
    descriptors = place_map.vectors.rows(np.arange(count)) if place_map.vectors is not None else place_map.index.reconstruct_n(0, count)
    members: dict[tuple[int, int], list[int]] = {cell: [] for e, n in place_map.poses[:, :2] for cell in _cells(e, n, size_m, 0.0)}
    for i, (east, north) in enumerate(place_map.poses[:, :2]):  # a cell exists where places are; its overlap joins its neighbours'
        for cell in _cells(east, north, size_m, overlap_m):
            if cell in members:
                members[cell].append(i)
    manifest = place_map.manifest
    index = TileIndex(FORMAT, float(size_m), float(overlap_m), manifest.frame_id, manifest.layout_hash, manifest.model_sha256)
    for (col, row), rows in sorted(members.items()):
        tile = PlaceMap(manifest.dim, manifest.layout_hash, manifest.model_sha256, "auto", expected_size=len(rows))
        tile.manifest.frame_id, tile.manifest.threshold, tile.manifest.weights_sha256 = manifest.frame_id, manifest.threshold, manifest.weights_sha256
        tile.add(descriptors[rows], [place_map.places[i] for i in rows])
        name = f"tile_{col}_{row}"
        tile.save(out / name)
        index.tiles.append(Tile(name, col, row, len(rows)))
    replace_whole(out / INDEX, lambda tmp: tmp.write_text(json.dumps(asdict(index), indent=1) + "\n"))
    return index


def is_tiled(folder: str | Path) -> bool:
    return (Path(folder) / INDEX).is_file()


LOADER_NICE = 19  # the lowest CPU priority
LOADER_SWITCH_S = 0.0005  # the interpreter's thread switch interval while a tile loads (default 0.005)


@contextmanager
def giving_way_to_frames() -> Iterator[None]:
    """Run a background tile load so that frames keep their latency on a small CPU: this thread at
    the lowest priority (Linux, where a thread has its own nice value), and a short interpreter
    switch interval meanwhile, so a frame waits ~0.5 ms, not 5 ms, for the loader's Python work."""
    if sys.platform.startswith("linux"):
        with suppress(OSError):  # a sandbox without setpriority: load at normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICE)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(LOADER_SWITCH_S)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def check_prior(prior: object) -> tuple[float, float, float]:
    """(east, north, radius): finite numbers, a radius > 0."""
    if not isinstance(prior, (tuple, list)) or len(prior) != 3 or not all(
            isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v) for v in prior) or prior[2] <= 0:
        raise ConfigError(f"prior must be (east, north, radius) in metres, finite, radius > 0, got {prior!r:.80}")
    return float(prior[0]), float(prior[1]), float(prior[2])


class TileView:
    """Loaded tiles searched as one map (the interface EdgeVPR uses: search, poses, places, manifest);
    a place in two overlapping tiles is answered once."""

    def __init__(self, tiles: list[PlaceMap]) -> None:
        self.tiles = tiles
        self.offsets = np.cumsum([0] + [len(t) for t in tiles])
        self.poses = np.concatenate([t.poses for t in tiles])
        self.manifest = tiles[0].manifest
        self.places = self  # places[row] -> Place

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, row: int) -> Place:
        tile = bisect.bisect_right(self.offsets, row) - 1
        return self.tiles[tile].places[int(row - self.offsets[tile])]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = [(t.search(queries, k), offset) for t, offset in zip(self.tiles, self.offsets)]
        if len(found) == 1:
            return found[0][0]
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        for q in range(len(queries)):
            candidates = sorted(((s, r + offset) for (tile_scores, tile_rows), offset in found
                                 for s, r in zip(tile_scores[q], tile_rows[q]) if r >= 0), key=lambda c: -c[0])
            seen: set[tuple[str, str]] = set()
            for score, row in candidates:
                place = self[row]
                if (place.id, place.source) not in seen and len(seen) < k:
                    scores[q, len(seen)], rows[q, len(seen)] = score, row
                    seen.add((place.id, place.source))
        return scores, rows


class TiledMap:
    """A tile folder (cut_tiles); ``view`` is what to search now. Every tile must be of the model the
    index names (the caller checks its own model against a loaded tile, PlaceMap.check_compatible)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / INDEX
        with open_regular(path, MAX_SMALL_FILE, MapError, follow=False) as handle:
            text = handle.read()
        try:
            data = json.loads(text)
            self.index = TileIndex(**{**data, "tiles": [Tile(**t) for t in data["tiles"]]})
        except (ValueError, TypeError, KeyError) as exc:
            raise MapError(f"{path} is malformed: {exc}") from exc
        if self.index.format != FORMAT or not self.index.tiles:
            raise MapError(f"{path}: not a tile index of format {FORMAT} with at least one tile")
        for tile in self.index.tiles:  # every tile there and of this model, before any is used
            folder = self.folder / tile.name
            if Path(tile.name).name != tile.name or not folder.is_dir():
                raise MapError(f"{path} names tile {tile.name!r}, which is missing from {self.folder}")
            manifest = _read_manifest(folder / read_current(folder) / "manifest.json")
            if (manifest.layout_hash, manifest.model_sha256, manifest.count) != (self.index.layout_hash, self.index.model_sha256, tile.count):
                raise MapError(f"{folder}: built with another model, or not the tile {path} lists; cut the tiles again")
        self.loaded: dict[str, PlaceMap] = {}
        self.view: TileView | None = None
        self.wanted: tuple[str, ...] = ()
        self.worker: threading.Thread | None = None
        self.error: Exception | None = None
        self.waits = 0  # priors that jumped beyond the loaded tiles (set_prior)
        self.cells = {(t.col, t.row) for t in self.index.tiles}

    def _distance(self, col: int, row: int, east: float, north: float) -> float:
        """Metres from (east, north) to the square of cell (col, row) (0 inside it)."""
        size = self.index.size_m
        return math.hypot(max(col * size - east, 0, east - (col + 1) * size), max(row * size - north, 0, north - (row + 1) * size))

    def covers(self, east: float, north: float) -> bool:
        """Whether a loaded tile holds every place near (east, north): its square plus the overlap."""
        return any(self._distance(t.col, t.row, east, north) <= self.index.overlap_m for t in self.index.tiles if t.name in self.loaded)

    def current(self) -> TileView:
        """The loaded tiles as one map; a MapError before any has loaded."""
        if self.view is None:
            raise MapError(f"no tile of {self.folder} is loaded yet: give a prior or load them all")
        return self.view

    def needed(self, prior: tuple[float, float, float]) -> tuple[str, ...]:
        """The tiles holding every place in the prior's circle (module docstring); a MapError when
        the circle meets no tile."""
        east, north, radius = check_prior(prior)
        reach = max(radius - self.index.overlap_m, 0.0)
        names = tuple(t.name for t in self.index.tiles if (distance := self._distance(t.col, t.row, east, north)) <= reach
                      or distance <= radius and self._next_to_gap(t, east, north, reach))
        if not names:
            raise MapError(f"the prior ({east:.1f}, {north:.1f}, {radius:.1f} m) lies outside every tile of {self.folder}")
        return names

    def _next_to_gap(self, tile: Tile, east: float, north: float, reach: float) -> bool:
        """Whether a cell next to the tile's, within ``reach`` of (east, north), has no tile: this
        tile's places near that cell are then in no other needed tile's overlap."""
        return any((tile.col + dc, tile.row + dr) not in self.cells and self._distance(tile.col + dc, tile.row + dr, east, north) <= reach
                   for dc in (-1, 0, 1) for dr in (-1, 0, 1))

    def load_all(self, budget_mb: float = DEFAULT_BUDGET_MB) -> None:
        """Without a prior: every tile, when their index files fit ``budget_mb``."""
        size = sum((self.folder / t.name / read_current(self.folder / t.name) / "index.faiss").stat().st_size for t in self.index.tiles)
        if size > budget_mb * 2**20:
            raise MapError(f"{self.folder} holds {size / 2**20:.0f} MB of tiles, more than the {budget_mb:g} MB budget: "
                           "give a prior=(east, north, radius) or a larger tile budget")
        self._swap(tuple(t.name for t in self.index.tiles))

    def set_prior(self, prior: tuple[float, float, float], wait: bool = False) -> None:
        """Load the tiles under ``prior``: in the background (the current view stays searched until
        they are in), or now with ``wait``. A load that failed is raised here, at the next prior.
        A prior that jumped beyond what the loaded tiles hold (a restart, a GNSS reacquired far away)
        waits for its tiles: answering from tiles that cannot hold the place would be silently wrong.
        A moving vehicle stays inside the overlap while the next tile loads, and never waits."""
        names = self.needed(prior)
        jumped = bool(self.loaded) and not self.covers(prior[0], prior[1])
        self.waits += jumped
        if self.worker is not None and (jumped or names != self.wanted):
            self.worker.join()  # one load at a time; the vehicle moves slower than a tile loads
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if names == self.wanted:
            return
        self.wanted = names  # now: a second prior while these load does not load them again
        if wait or jumped:
            self._load(names)
            return
        self.worker = threading.Thread(target=self._background, args=(names,), daemon=True)
        self.worker.start()

    def _background(self, names: tuple[str, ...]) -> None:
        try:
            with giving_way_to_frames():
                self._load(names)
        except Exception as exc:  # noqa: BLE001 - kept and raised in the caller's thread
            self.error = exc

    def _load(self, names: tuple[str, ...]) -> None:
        """Swap in ``names``; after a failed load none are wanted, so the next prior loads them again."""
        try:
            self._swap(names)
        except BaseException:
            self.wanted = ()
            raise

    def _swap(self, names: tuple[str, ...]) -> None:
        tiles = {n: self.loaded.get(n) or PlaceMap.load(self.folder / n) for n in names}
        self.view = TileView(list(tiles.values()))
        self.loaded = tiles  # tiles no longer needed are released with the old view
