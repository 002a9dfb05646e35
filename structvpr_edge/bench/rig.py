"""EdgeVPR under test: synthetic maps and camera frames, and the ``Rig`` that times cameras of one
model on one map through the timing harness (timing.py)."""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError
from ..runtime.edgevpr import EdgeVPR
from ..runtime.map import Place, PlaceMap
from ..runtime.quantized_scan import QuantizedScan
from ..timing import stage_stats, time_calls

EXACT_QUERIES = 500  # revisit queries compared with exact search (fewer on a smaller map)


def synthetic_map(vpr, size: int, index: str, seed: int = 0, chunk: int = 100_000, keep: bool = False):
    """``size`` entries for ``vpr``'s model along synthetic routes: unit vectors clustered around
    route points, so maps can reach millions. Returns the map and, with ``keep``, the raw vectors."""
    dim = vpr.info.layout.dim
    place_map = PlaceMap(dim, vpr.info.layout.hash(), vpr.model_sha256, index, expected_size=size)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, size // 50), dim)).astype(np.float32)
    kept = []
    for start in tqdm(range(0, size, chunk), desc=f"map ({size} entries)", unit="chunk", leave=False):
        n = min(chunk, size - start)
        rows = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        place_map.add(rows, [Place(str(i), 5.0 * i, 0.0, 0.0) for i in range(start, start + n)])
        if keep:
            kept.append(rows)
    return place_map, (np.concatenate(kept) if keep else None)


def camera_frames(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``count`` random HxWx3 uint8 frames of ``size`` (W, H)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(count)]


def exact_agreement(place_map, vectors: np.ndarray, queries: int = EXACT_QUERIES, seed: int = 1) -> tuple[float, int, dict]:
    """Share of queries whose top-1 equals exact search's, how many queries that was, and the map's
    search time on them. Queries are distinct map entries with noise (a revisit of a mapped place):
    at most one per entry, so a map smaller than ``queries`` gets one query per entry."""
    import faiss  # noqa: PLC0415

    queries = min(queries, len(vectors))
    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), queries, replace=False)] + 0.03 * rng.normal(size=(queries, vectors.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(q, 1)
    rows, found = iter(q), []
    times = time_calls(lambda: found.append(place_map.search(next(rows)[None], 1)[1][0, 0]), queries)
    return float(np.mean(truth[:, 0] == np.array(found))), queries, stage_stats(times)


@dataclass(frozen=True)
class RunSpec:
    """One EdgeVPR configuration to time: ``cameras`` instances of ``model`` in one process."""

    name: str
    model: str
    backend: str = "auto"
    threads: int | str = "auto"
    top_k: int = 5
    map_size: int = 10_000
    index: str = "flat"
    nprobe: int | None = None
    frame_size: tuple[int, int] = (640, 480)
    cameras: int = 1
    fps: float | None = None  # pace frames like a camera (idle gaps between frames); None: back to back

    def __post_init__(self) -> None:
        """Options checked when the spec is made, before a map is built or a worker spawned."""
        if self.cameras < 1:
            raise ConfigError(f"--cameras must be >= 1, got {self.cameras}")
        if self.map_size < 1:
            raise ConfigError(f"--map-size must be >= 1, got {self.map_size}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ConfigError(f"--fps must be a finite number > 0, got {self.fps}")

    def open(self) -> "Rig":
        return Rig(self)


class Rig:
    """``spec.cameras`` EdgeVPR instances of one model on one shared synthetic map, each camera
    localizing in its own thread with all cameras triggered together, as a vehicle runs them."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.cameras = [EdgeVPR(spec.model, backend=spec.backend, threads=spec.threads, top_k=spec.top_k) for _ in range(spec.cameras)]
        started = time.perf_counter()
        self.map, _ = synthetic_map(self.cameras[0], spec.map_size, spec.index)
        self.map_build_s = time.perf_counter() - started
        self.map.set_search_effort(nprobe=spec.nprobe)
        for vpr in self.cameras:
            vpr.set_map(self.map)
        self.frames = camera_frames(16, spec.frame_size)
        self.pool = ThreadPoolExecutor(spec.cameras) if spec.cameras > 1 else None
        self.done = 0

    def setup(self) -> dict:
        """What runs: the threading each camera ended up with (after all were opened), the index."""
        threading = [getattr(vpr.backend, "threading", None) for vpr in self.cameras]
        return {**asdict(self.spec), "threading": threading, "index_factory": self.map.factory, "map_build_s": self.map_build_s}

    def run(self, frames: int) -> list[dict[str, float]]:
        """Stage times per frame (camera 0's; ``frame`` is the wall time until every camera is done).
        With ``spec.fps`` a frame starts one camera period after the previous one started, so
        thread pools see the idle gaps a camera leaves (their threads stop spinning and sleep)."""
        out, start = [], None
        for _ in range(frames):
            frame = self.frames[self.done % len(self.frames)]
            self.done += 1
            if self.spec.fps is not None and start is not None:
                time.sleep(max(0.0, start + 1 / self.spec.fps - time.perf_counter()))
            start = time.perf_counter()
            if self.pool is None:
                timing = self.cameras[0].localize(frame).timing_ms
            else:
                timing = [f.result() for f in [self.pool.submit(vpr.localize, frame) for vpr in self.cameras]][0].timing_ms
            out.append({**timing, "frame": 1000 * (time.perf_counter() - start)})
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        for vpr in self.cameras:
            vpr.close()


def scan_crossover(model: str, sizes: list[int], frames: int, threads: int) -> Iterator[tuple[int, float, float]]:
    """(map entries, 8-bit scan p50 ms, float32 scan p50 ms) of EdgeVPR's search, the two scans
    interleaved frame by frame on a synthetic map of each size (benchmarks/scan_crossover.py)."""
    camera = camera_frames(8, (640, 480))
    with EdgeVPR(model, threads=threads) as vpr:
        for size in sizes:
            place_map, _ = synthetic_map(vpr, size, "flat")
            vpr.set_map(place_map)
            scan, times = QuantizedScan(place_map.faiss, place_map.index, min_entries=0), {True: [], False: []}  # the scan at every size
            for i in range(frames):
                place_map.scan = scan if i % 2 == 0 else None
                times[i % 2 == 0].append(vpr.localize(camera[i % len(camera)]).timing_ms["search"])
            warm = len(times[True]) // 10  # the first frames of each size warm caches up
            yield size, float(np.median(times[True][warm:])), float(np.median(times[False][warm:]))
