"""EdgeVPR: one camera frame in, a place on the map out.

    from structvpr_edge import EdgeVPR
    with EdgeVPR(model="model.int8.cpu.onnx", map="maps/route") as vpr:
        result = vpr.localize(frame)          # HxWx3 uint8, BGR by default
        if result.confident:
            print(result.east, result.north, result.heading)

Thread safety: an EdgeVPR owns preallocated buffers, one inference session and (TensorRT) one
CUDA stream, so one instance serves one thread at a time; use one instance per camera thread.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, MapError
from .backends import Backend, open_backend
from .map import PlaceMap
from .preprocess import Preprocessor
from .temporal import PlaceFilter, TemporalConfig

DISTINCT_PLACE_M = 25.0  # entries farther than this from the top-1 count as another place for the margin


@dataclass(frozen=True)
class Match:
    row: int
    id: str
    east: float
    north: float
    heading: float
    similarity: float


@dataclass
class Localization:
    """Top-k map entries, the pose estimate and how sure it is; times in milliseconds."""

    matches: list[Match]
    east: float
    north: float
    heading: float
    confident: bool
    margin: float
    timing_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "east": self.east, "north": self.north, "heading": None if np.isnan(self.heading) else self.heading,
            "confident": self.confident, "margin": self.margin,
            "matches": [{**m.__dict__, "heading": None if np.isnan(m.heading) else m.heading} for m in self.matches],
            "timing_ms": self.timing_ms,
        }


def margin_to_other_places(scores: np.ndarray, rows: np.ndarray, poses: np.ndarray) -> float:
    """Top-1 similarity minus the best similarity of an entry at another place (> 25 m away).

    Neighbouring entries of the same place are not ambiguity; when every retrieved entry is
    near the top-1, the k-th score bounds the margin from below.
    """
    valid = rows >= 0
    scores, rows = scores[valid], rows[valid]
    if len(rows) < 2:
        return float("inf")
    distance = np.linalg.norm(poses[rows[1:], :2] - poses[rows[0], :2], axis=1)
    other = np.flatnonzero(distance > DISTINCT_PLACE_M)
    return float(scores[0] - (scores[1 + other[0]] if len(other) else scores[-1]))


class EdgeVPR:
    def __init__(
        self,
        model: str | Path,
        map: str | Path | PlaceMap | None = None,  # noqa: A002 - the natural name for users
        backend: str = "auto",
        top_k: int = 5,
        colour: str = "BGR",
        threads: int | None = None,
        max_batch: int = 1,
        temporal: bool | TemporalConfig = False,
        gpu_index: bool = False,
    ) -> None:
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        self.backend: Backend = open_backend(model, backend, threads=threads, max_batch=max_batch)
        self.info = self.backend.info
        self.preprocess = Preprocessor(self.info, colour, max_batch=max(1, min(max_batch, self.backend.max_batch)))
        self.top_k = top_k
        self.map: PlaceMap | None = None
        self.filter: PlaceFilter | None = None
        if map is not None:
            self.set_map(map, temporal, gpu_index)

    def set_map(self, place_map: str | Path | PlaceMap, temporal: bool | TemporalConfig = False, gpu_index: bool = False) -> None:
        place_map = place_map if isinstance(place_map, PlaceMap) else PlaceMap.load(place_map)
        place_map.check_compatible(self.info.layout.hash(), self.info.checkpoint_sha256)
        if gpu_index:
            place_map.to_gpu()
        self.map = place_map
        self.filter = None
        if temporal:
            self.filter = PlaceFilter(place_map.poses, temporal if isinstance(temporal, TemporalConfig) else None)

    def describe_batch(self, frames: list[np.ndarray]) -> np.ndarray:
        """(B, D) L2-normalised descriptors; batches larger than the runtime's are split."""
        chunk = len(self.preprocess.input)
        out = [self.backend.infer(self.preprocess(frames[i : i + chunk])) for i in range(0, len(frames), chunk)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def describe(self, frame: np.ndarray) -> np.ndarray:
        return self.describe_batch([frame])[0]

    def localize(self, frame: np.ndarray) -> Localization:
        return self.localize_batch([frame])[0]

    def localize_batch(self, frames: list[np.ndarray]) -> list[Localization]:
        """Per frame: the top-k entries, the pose estimate and the confidence flag, with stage times."""
        if self.map is None:
            raise MapError("no map loaded: pass map=... or call set_map()")
        results = []
        chunk = len(self.preprocess.input)
        for start in range(0, len(frames), chunk):
            part = frames[start : start + chunk]
            t0 = time.perf_counter()
            batch = self.preprocess(part)
            t1 = time.perf_counter()
            descriptors = self.backend.infer(batch)
            t2 = time.perf_counter()
            scores, rows = self.map.search(descriptors, self.top_k)
            t3 = time.perf_counter()
            per_frame = {"preprocess": (t1 - t0) * 1e3 / len(part), "inference": (t2 - t1) * 1e3 / len(part), "search": (t3 - t2) * 1e3 / len(part)}
            results += [self._result(scores[i], rows[i], per_frame) for i in range(len(part))]
        return results

    def _result(self, scores: np.ndarray, rows: np.ndarray, timing: dict[str, float]) -> Localization:
        poses = self.map.poses
        matches = [
            Match(int(r), self.map.places[r].id, *map(float, poses[r]), float(s)) for s, r in zip(scores, rows) if r >= 0
        ]
        best = int(rows[0])
        if self.filter is not None:
            posterior = self.filter.update(rows, scores)
            best = int(self.filter.rows[int(np.argmax(posterior))])
        margin = margin_to_other_places(scores, rows, poses)
        threshold = self.map.manifest.threshold
        confident = threshold is not None and bool(scores[0] >= threshold.score and margin >= threshold.margin)
        east, north, heading = map(float, poses[best])
        return Localization(matches, east, north, heading, confident, margin, {**timing, "total": sum(timing.values())})

    def close(self) -> None:
        """Free the session / engine buffers; the instance is unusable afterwards."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def __enter__(self) -> "EdgeVPR":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
