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

import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..artifacts import MODEL_SUFFIXES, backend_for, check_kit_member
from ..data.dataset import DEFAULT_POSITIVE_RADIUS_M
from ..errors import ConfigError, MapError, ModelError, UncalibratedWarning
from ..modelinfo import info_digest, sha256_file, verified_weights
from .backends import Backend, open_backend
from .map import PlaceMap
from .ort_session import MAX_THREADS
from .preprocess import Preprocessor, check_colour, check_frame
from .temporal import PlaceFilter, TemporalConfig
from .tiles import DEFAULT_BUDGET_MB, TiledMap, TileView, is_tiled


@dataclass(frozen=True)
class Match:
    """One map entry retrieved for a frame.

    row: the entry's row in the map (PlaceMap.places[row])
    id: the entry's place id (Place.id)
    east, north: the entry's position, metres in the map's frame (PlaceMap.manifest.frame_id)
    heading: the entry's compass heading in degrees (0 = north, 90 = east), NaN when unknown
    similarity: cosine similarity of the frame's descriptor to the entry's, in [-1, 1]
    """

    row: int
    id: str
    east: float
    north: float
    heading: float
    similarity: float


@dataclass
class Localization:
    """One frame's answer: the retrieved map entries, the pose estimate and whether to trust it.

    matches: the top_k map entries (Match), best first
    east, north: the estimated position, metres in the map's frame: the chosen entry's (the top-1,
        or with temporal=True the filter's choice)
    heading: the chosen entry's compass heading in degrees, NaN when the map has none
    confident: whether the chosen entry passes the map's calibrated threshold (score and margin);
        always False on a map without one (see calibrated)
    margin: similarity of the chosen entry minus the best entry at another place (> 25 m away),
        among the best max(top_k, 10) entries, as calibrate-threshold measures it; when all of them
        are near the chosen one, its lead over the last (a lower bound); inf on a map of one entry
    timing_ms: milliseconds per stage for this frame: preprocess, inference, search and total
    calibrated: whether the map has a confidence threshold (structvpr-edge calibrate-threshold);
        when False, confident says nothing about the match
    """

    matches: list[Match]
    east: float
    north: float
    heading: float
    confident: bool
    margin: float
    timing_ms: dict[str, float] = field(default_factory=dict)
    calibrated: bool = True

    def to_json(self) -> dict:
        """A JSON-safe dict: a heading or margin that is not finite (unknown, or unbounded) becomes null."""
        return {
            "east": self.east, "north": self.north, "heading": finite_or_none(self.heading),
            "confident": self.confident, "calibrated": self.calibrated, "margin": finite_or_none(self.margin),
            "matches": [{**m.__dict__, "heading": finite_or_none(m.heading)} for m in self.matches],
            "timing_ms": self.timing_ms,
        }


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or inf: null stands for them."""
    return value if math.isfinite(value) else None


MARGIN_CANDIDATES = 10  # the margin looks this far down the ranking, in localize and calibration alike


def search_depth(top_k: int) -> int:
    """Entries to retrieve per frame: the top_k listed, and enough that the margin is the one calibration measured."""
    return max(top_k, MARGIN_CANDIDATES)


def margin_to_other_places(scores: np.ndarray, rows: np.ndarray, poses: np.ndarray, chosen: int = 0) -> float:
    """Similarity of candidate ``chosen`` (the top-1 by default) minus the best similarity of a
    candidate at another place (farther from it than the positive radius, 25 m).

    Neighbouring entries of the same place are not ambiguity; when every retrieved entry is
    near the chosen one, the k-th score bounds the margin from below.
    """
    valid = rows >= 0
    scores, rows = scores[valid], rows[valid]
    if len(rows) < 2:
        return float("inf")
    others = np.delete(np.arange(len(rows)), chosen)
    distance = np.linalg.norm(poses[rows[others], :2] - poses[rows[chosen], :2], axis=1)
    far = others[distance > DEFAULT_POSITIVE_RADIUS_M]
    return float(scores[chosen] - (scores[far[0]] if len(far) else scores[others[-1]]))


# The most each count option may ask for: beyond these it is a typo, and 2**40 threads or a 10**7
# frame input buffer would fail deep inside ONNX Runtime or numpy instead of here.
LIMITS = {"top_k": 1000, "max_batch": 1024, "threads": MAX_THREADS, "batch_size": 1024}


def positive_int(name: str, value: object) -> int:
    """A count option (top_k, max_batch, threads, batch_size): a real int in 1..LIMITS[name], not "5", 2.5 or True."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= LIMITS[name]:
        raise ConfigError(f"{name} must be an integer in 1..{LIMITS[name]}, got {value!r}")
    return int(value)


class EdgeVPR:
    """Localize camera frames in a place map with an exported model; one instance per camera thread.

    model: an ONNX file (.onnx), a TensorRT engine (.engine/.plan), a checkpoint (.pt, needs torch)
        or a shipped model name (structvprpp, student-nokd, baseline; needs torch)
    map: a map folder (structvpr-edge build-map), a tile folder (structvpr-edge cut-tiles) or a PlaceMap;
        None to set one later with set_map
    backend: "auto" (by the model's suffix), "tensorrt", "onnxruntime" or "torch"
    top_k: how many map entries each Localization lists
    colour: channel order of the frames given: "BGR" (OpenCV's) or "RGB"
    threads: CPU inference threads: "auto" (timed once per model and machine, cached; None means the
        same) or a count. The torch backend's count is torch's, for the whole process
    max_batch: the most frames one inference call takes; larger batches are split
    temporal: True (or a TemporalConfig) to filter the frames of a moving vehicle over time
    gpu_index: search the map on the GPU when faiss has GPU support
    trust_checkpoint: also open a .pt that holds more than tensors and plain data; loading it runs
        the code it carries (docs/security.md)
    prior: (east, north, radius) in metres, for a tile folder: only the tiles under it are loaded;
        set_prior moves it (tiles swap in the background; docs/maps.md)
    tile_budget_mb: without a prior, a tile folder is loaded whole when its index files fit this
        many MB, else a MapError asks for a prior

    Frames are HxWx3 uint8 arrays at the camera's resolution; a frame smaller than the model's input
    is enlarged, with an UpscaleWarning. A map answers only to the model it was built with (MapError).
    Attributes: info (the model's ModelInfo), map (the PlaceMap or None), top_k, model_sha256 (the model file's
    bytes), weights_sha256 (the fingerprint of its weights, what a map answers to; "" for a model exported before it).
    """

    def __init__(
        self,
        model: str | Path,
        map: str | Path | PlaceMap | None = None,  # noqa: A002 - the natural name for users
        backend: str = "auto",
        top_k: int = 5,
        colour: str = "BGR",
        threads: int | str | None = "auto",  # "auto": measured per model and machine (ort_session.py)
        max_batch: int = 1,
        temporal: bool | TemporalConfig = False,
        gpu_index: bool = False,
        trust_checkpoint: bool = False,  # a .pt that needs code to load is refused unless True (docs/security.md)
        prior: tuple[float, float, float] | None = None,
        tile_budget_mb: float = DEFAULT_BUDGET_MB,
    ) -> None:
        if not isinstance(model, (str, os.PathLike)) or not str(model):
            raise ConfigError(f"model must be a file path or a shipped model name, got {model!r}")
        if Path(model).suffix in MODEL_SUFFIXES and not Path(model).is_file():
            raise ModelError(f"model file {model} not found (or not a file)")
        top_k, max_batch = positive_int("top_k", top_k), positive_int("max_batch", max_batch)
        if threads not in (None, "auto"):
            positive_int("threads", threads)
        check_colour(colour)  # every argument before the backend opens: a refused instance touches no other
        self.backend: Backend | None = open_backend(model, backend, threads=threads, max_batch=max_batch, trust_checkpoint=trust_checkpoint)
        self.info = self.backend.info
        # A map answers to the weights (their fingerprint, checked against the graph actually loaded:
        # metadata alone would pass edited weights), or, for a model without one, to the file's bytes.
        self.model_sha256 = sha256_file(model) if Path(model).is_file() else self.info.checkpoint_sha256
        check_kit_member(model, self.model_sha256, info_digest(self.info))
        self.weights_sha256 = verified_weights(model, self.info) if backend_for(model) == "onnxruntime" else self.info.weights_sha256
        self.preprocess = Preprocessor(self.info, colour, max_batch=max(1, min(max_batch, self.backend.max_batch)))
        self.top_k = top_k
        self.map: PlaceMap | TileView | None = None
        self.tiles: TiledMap | None = None
        self.tile_budget_mb = tile_budget_mb
        self.filter: PlaceFilter | None = None
        self.warned_uncalibrated = False  # UncalibratedWarning is given once per instance
        if map is not None:
            self.set_map(map, temporal, gpu_index, prior)

    def set_map(self, place_map: str | Path | PlaceMap, temporal: bool | TemporalConfig | None = None, gpu_index: bool = False,
                prior: tuple[float, float, float] | None = None) -> None:
        """Switch to another map (a folder, a tile folder with ``prior``, or a PlaceMap); temporal=None
        keeps the current filter setting, re-started on the new map. A refused map changes nothing:
        frames are still localized in the map loaded before."""
        if not isinstance(place_map, (str, os.PathLike, PlaceMap)):
            raise ConfigError(f"map must be a map folder or a PlaceMap, got {type(place_map).__name__}")
        if temporal is None:
            temporal = self.filter.config if self.filter is not None else False
        if not isinstance(temporal, (bool, TemporalConfig)):
            raise ConfigError(f"temporal must be True, False or a TemporalConfig, got {temporal!r}")
        tiles = None
        loaded: PlaceMap | TileView
        if not isinstance(place_map, PlaceMap) and is_tiled(place_map):
            tiles = TiledMap(place_map)
            tiles.set_prior(prior, wait=True) if prior is not None else tiles.load_all(self.tile_budget_mb)
            loaded = tiles.current()
            loaded.tiles[0].check_compatible(self.info.layout.hash(), self.model_sha256, self.weights_sha256)  # all tiles share it
        elif prior is not None:
            raise ConfigError("prior= goes with a tile folder (structvpr-edge cut-tiles); this map is loaded whole")
        else:
            loaded = place_map if isinstance(place_map, PlaceMap) else PlaceMap.load(place_map)
            loaded.check_compatible(self.info.layout.hash(), self.model_sha256, self.weights_sha256)
        if gpu_index and isinstance(loaded, PlaceMap):  # tiles stay on the CPU: they swap
            loaded.to_gpu()
        self.tiles, self.map = tiles, loaded
        self.filter = PlaceFilter(temporal if isinstance(temporal, TemporalConfig) else None) if temporal else None

    def set_prior(self, east: float, north: float, radius: float) -> None:
        """Move the prior of a tile folder: tiles it needs load in the background while frames are
        localized in the tiles loaded; a prior outside every tile is a MapError (the tiles stay)."""
        if self.tiles is None:
            raise ConfigError("set_prior needs a tile folder as the map (structvpr-edge cut-tiles)")
        self.tiles.set_prior((east, north, radius))

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """The backend's descriptors, refused when not finite: a NaN descriptor has no nearest place."""
        assert self.backend is not None  # _frames refused a closed instance
        descriptors = np.asarray(self.backend.infer(batch), dtype=np.float32)
        if descriptors.shape != (len(batch), self.info.layout.dim):
            raise ModelError(f"the model returned descriptors of shape {descriptors.shape}, its metadata says ({len(batch)}, {self.info.layout.dim})")
        if not np.isfinite(descriptors).all():
            raise ModelError("the model returned a NaN or inf descriptor: the model file is damaged or not a descriptor model")
        return descriptors

    def _frames(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        if self.backend is None:
            raise ConfigError("this EdgeVPR is closed; create a new one")
        if not isinstance(frames, (list, tuple)) or not frames:
            raise ConfigError(f"expected a non-empty list of frames, got {frames!r:.60}")
        for frame in frames:  # every frame before any work: a refused batch changes nothing
            check_frame(frame, self.preprocess.colour)
        return list(frames)

    def describe_batch(self, frames: list[np.ndarray]) -> np.ndarray:
        """(B, D) L2-normalised descriptors; batches larger than the runtime's are split."""
        frames = self._frames(frames)
        chunk = len(self.preprocess.input)
        out = [self._infer(self.preprocess(frames[i : i + chunk])) for i in range(0, len(frames), chunk)]
        return np.concatenate(out)

    def describe(self, frame: np.ndarray) -> np.ndarray:
        """The (D,) L2-normalised descriptor of one HxWx3 uint8 frame, without a map."""
        return self.describe_batch([frame])[0]

    def localize(self, frame: np.ndarray) -> Localization:
        """Where one HxWx3 uint8 frame (BGR unless colour="RGB") was taken, on the loaded map."""
        return self.localize_batch([frame])[0]

    def localize_batch(self, frames: list[np.ndarray]) -> list[Localization]:
        """Per frame: the top-k entries, the pose estimate and the confidence flag, with stage times.
        Every frame is searched before the temporal filter sees one: a refused batch leaves it as it was."""
        frames = self._frames(frames)
        if self.tiles is not None and self.map is not self.tiles.view:  # the tiles of the latest prior, now loaded
            self.map = self.tiles.current()
            if self.filter is not None:  # its rows were those of the tiles swapped out
                self.filter = PlaceFilter(self.filter.config)
        if self.map is None:
            raise MapError("no map loaded: pass map=... or call set_map()")
        if self.map.manifest.threshold is None and not self.warned_uncalibrated:
            self.warned_uncalibrated = True
            warnings.warn("the map has no confidence threshold, so every result's confident is False: run structvpr-edge "
                          "calibrate-threshold on it with queries of its area", UncalibratedWarning, stacklevel=2)
        found = []
        chunk = len(self.preprocess.input)
        for start in range(0, len(frames), chunk):
            part = frames[start : start + chunk]
            t0 = time.perf_counter()
            batch = self.preprocess(part)
            t1 = time.perf_counter()
            descriptors = self._infer(batch)
            t2 = time.perf_counter()
            scores, rows = self.map.search(descriptors, search_depth(self.top_k))
            t3 = time.perf_counter()
            per_frame = {"preprocess": (t1 - t0) * 1e3 / len(part), "inference": (t2 - t1) * 1e3 / len(part), "search": (t3 - t2) * 1e3 / len(part)}
            found += [(scores[i], rows[i], per_frame) for i in range(len(part))]
        return [self._result(self.map, *one) for one in found]

    def _result(self, place_map: PlaceMap | TileView, scores: np.ndarray, rows: np.ndarray, timing: dict[str, float]) -> Localization:
        """Matches and filter see the top_k candidates; the margin all of them (search_depth), as calibration does."""
        poses = place_map.poses
        top_scores, top_rows = scores[: self.top_k], rows[: self.top_k]
        matches = [
            Match(int(r), place_map.places[r].id, float(poses[r, 0]), float(poses[r, 1]), float(poses[r, 2]), float(s))
            for s, r in zip(top_scores, top_rows) if r >= 0
        ]
        chosen = 0  # the candidate whose pose is returned; the confidence is about that pose
        if self.filter is not None:
            self.filter.update(top_rows, top_scores, poses)
            chosen = int(np.flatnonzero(top_rows == self.filter.choice)[0])
        margin = margin_to_other_places(scores, rows, poses, chosen)
        threshold = place_map.manifest.threshold
        confident = threshold is not None and bool(scores[chosen] >= threshold.score and margin >= threshold.margin)
        east, north, heading = map(float, poses[rows[chosen]])
        return Localization(matches, east, north, heading, confident, margin, {**timing, "total": sum(timing.values())}, threshold is not None)

    def close(self) -> None:
        """Free the session / engine buffers; the instance is unusable afterwards."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def __enter__(self) -> "EdgeVPR":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
