"""Build maps from geo-tagged images and calibrate the confidence threshold; torch-free."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.dataset import DEFAULT_POSITIVE_RADIUS_M, list_images, load_dataset
from ..data.drives import NO_PIXELS, DriveFrame, Skipped, read_pose_csv
from ..data.names import parse_name
from ..errors import ConfigError, DatasetError, MapError, ThresholdError
from ..metrics import within
from .edgevpr import EdgeVPR, margin_to_other_places, positive_int, search_depth
from .map import INDEX_TYPES, Place, PlaceMap, Threshold, check_writable
from .preprocess import bgr_as, describe_files, read_image


def reference_images(source: str | Path, split: str = "test", subset: str = "database") -> list[Path]:
    """A dataset root (its ``split``/``subset`` images) or any folder of ``@east@north@...`` images."""
    source = Path(source)
    if (source / "images").is_dir():
        dataset = load_dataset(source, split)
        return getattr(dataset, subset).paths
    if not source.is_dir():
        raise DatasetError(f"{source} is neither a dataset nor a folder of images")
    return list_images(source)


def source_of(path: Path, root: Path) -> str:
    """What a place records as its source: the image file, relative to the dataset when inside it."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def place_of(path: Path, root: Path) -> Place:
    name = parse_name(path)
    heading = float("nan") if name.heading is None else name.heading
    return Place(name.pano_id or path.stem, name.east, name.north, heading, name.timestamp, source_of(path, root))


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of ``size`` consecutive items (the last may be shorter), drawn lazily from ``items``."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def describe_paths(vpr: EdgeVPR, paths: list[Path], batch_size: int = 16, desc: str = "describe") -> np.ndarray:
    """Descriptors of image files as ``vpr`` computes them for camera frames."""
    return describe_files(lambda frames: vpr.describe_batch(bgr_as(vpr.preprocess.colour, frames)), paths, read_image,
                          positive_int("batch_size", batch_size), desc)


def open_target(vpr: EdgeVPR, out: str | Path | None, index_type: str, append: bool, frame_id: str = "") -> PlaceMap | None:
    """Checks before any describing, so a path mistake does not cost the whole run: the index
    type, a writable folder and, to ``append``, the map there (same model, same frame), returned."""
    if index_type not in INDEX_TYPES:
        raise MapError(f"index type must be one of {INDEX_TYPES}, got {index_type!r}")
    if out is not None:
        check_writable(out)
    if not append:
        return None
    if out is None:
        raise MapError("append needs the map folder to add to")
    place_map = PlaceMap.load(out)
    place_map.check_compatible(vpr.info.layout.hash(), vpr.model_sha256, vpr.weights_sha256)
    if place_map.manifest.frame_id != frame_id:
        raise MapError(f"the map in {out} holds places in frame {place_map.manifest.frame_id or 'unknown'!r}, "
                       f"these are in {frame_id or 'unknown'!r}: positions of two frames cannot share a map")
    return place_map


def new_map(vpr: EdgeVPR, index_type: str, count: int, frame_id: str) -> PlaceMap:
    place_map = PlaceMap(vpr.info.layout.dim, vpr.info.layout.hash(), vpr.model_sha256, index_type, expected_size=count)
    place_map.manifest.frame_id, place_map.manifest.weights_sha256 = frame_id, vpr.weights_sha256
    return place_map


def finish_map(place_map: PlaceMap, descriptors: np.ndarray, places: list[Place], out: str | Path | None) -> PlaceMap:
    """Add the described places and write the map whole (nothing is written before this)."""
    place_map.add(descriptors, places)
    if out is not None:
        place_map.save(out)
    return place_map


def build_map(vpr: EdgeVPR, source: str | Path, out: str | Path | None = None, index_type: str = "auto", append: bool = False, split: str = "test",
              poses: str | Path | None = None, min_spacing_m: float = 0.0, skipped: Skipped | None = None,
              describe: Callable[[list[Path]], np.ndarray] | None = None) -> PlaceMap:
    """Describe every reference image and store it with its pose; ``append`` adds to an existing map.
    ``poses``: a pose CSV for the images in the folder ``source`` (data/drives.py), instead of
    poses in their names; its rows closer than ``min_spacing_m`` to the last kept are ``skipped``.
    ``describe``: paths to descriptors, by default ``vpr`` in this process (cluster.ray_describer on Ray)."""
    root = Path(source)
    if poses is None:
        existing, frame_id = open_target(vpr, out, index_type, append), ""
        paths = reference_images(source, split)
        places = [place_of(p, root) for p in paths]
    else:  # the CSV is read and checked whole first: it names the frame
        paths, track = read_pose_csv(poses, root, min_spacing_m, skipped)
        existing, frame_id = open_target(vpr, out, index_type, append, track.frame_id), track.frame_id
        places = [Place(p.stem, float(e), float(n), float(h), str(t), source_of(p, root))
                  for p, (e, n), h, t in zip(paths, track.xy, track.heading, track.stamps_ns)]
    if not paths:
        raise DatasetError(f"no images in {source}")
    if existing is not None:  # a retried append adds nothing twice: an image is known by its place id and file
        known = {(p.id, p.source) for p in existing.places}
        new = [i for i, place in enumerate(places) if (place.id, place.source) not in known]
        if not new:
            return existing
        paths, places = [paths[i] for i in new], [places[i] for i in new]
    place_map = existing if existing is not None else new_map(vpr, index_type, len(paths), frame_id)
    descriptors = describe(paths) if describe is not None else describe_paths(vpr, paths, desc="map")
    return finish_map(place_map, descriptors, places, out)


def describe_frames(vpr: EdgeVPR, frames: Iterable[DriveFrame], batch_size: int = 16, total: int | None = None) -> tuple[np.ndarray, list[DriveFrame]]:
    """Descriptors of a stream of frames, a batch at a time (the frames' pixels are not kept),
    and the frames without their pixels."""
    batch_size = positive_int("batch_size", batch_size)
    chunks, kept = [], []
    for batch in batched(tqdm(frames, desc="map", unit="frame", total=total, leave=False), batch_size):
        chunks.append(vpr.describe_batch(bgr_as(vpr.preprocess.colour, [frame.image for frame in batch])))
        kept += [replace(frame, image=NO_PIXELS) for frame in batch]
    return (np.concatenate(chunks) if chunks else np.zeros((0, vpr.info.layout.dim), np.float32)), kept


def build_map_from_frames(vpr: EdgeVPR, frames: Iterable[DriveFrame], frame_id: str, out: str | Path | None = None, index_type: str = "auto",
                          append: bool = False, total: int | None = None,
                          describe: Callable[[list[DriveFrame]], np.ndarray] | None = None) -> PlaceMap:
    """A map of posed drive frames (data/drives.py), streamed: described a batch at a time,
    written whole at the end, or not at all when the drive turns out damaged on the way.
    ``describe``: listed frames (no pixels) to descriptors, instead of ``vpr`` on the frames'
    pixels in this process (cluster.ray_frame_describer on Ray)."""
    existing = open_target(vpr, out, index_type, append, frame_id)
    if describe is None:
        descriptors, posed = describe_frames(vpr, frames, total=total)
    else:
        posed = list(frames)
    if not posed:
        raise DatasetError("no frame of the drive has a pose within the gap: nothing to map")
    if describe is not None:
        descriptors = describe(posed)
    places = [Place(f"t{f.stamp_ns}", f.east, f.north, f.heading, str(f.stamp_ns), f.source) for f in posed]
    return finish_map(existing or new_map(vpr, index_type, len(places), frame_id), descriptors, places, out)


def check_precision(precision: float) -> int:
    """The number of accepted queries needed to measure ``precision``: one error must move it by <= 1 - precision."""
    if isinstance(precision, bool) or not isinstance(precision, (int, float)) or not 0 < precision < 1:
        raise ConfigError(f"precision must be a number in (0, 1) (1 cannot be measured on a finite set), got {precision!r}")
    return math.ceil(1 / (1 - precision) - 1e-9)


def threshold_for_precision(scores: np.ndarray, margins: np.ndarray, correct: np.ndarray, precision: float) -> Threshold:
    """The (score, margin) rule with the most confident queries whose measured precision reaches the
    target, among rules that accept enough queries to measure it (check_precision); a ThresholdError,
    with the highest precision these queries can measure, when there is none."""
    needed = check_precision(precision)
    queries, positives = len(correct), int(correct.sum())
    finite = margins[np.isfinite(margins)]
    best, supported = None, 0.0
    order = np.argsort(-scores)
    ranked = scores[order]
    run_end = np.diff(ranked, append=-np.inf) != 0  # `score >= cut` accepts a whole run of tied scores: cut after one
    for margin in np.unique(np.concatenate([[0.0], np.quantile(finite, np.linspace(0, 0.9, 10)) if len(finite) else []])):
        keep_margin = margins >= margin
        hits = np.cumsum((correct & keep_margin)[order])
        kept = np.cumsum(keep_margin[order])
        with np.errstate(invalid="ignore", divide="ignore"):
            running = np.where(kept > 0, hits / kept, 0)
        # a rule accepting k queries at precision r measures any target up to min(r, 1 - 1/k)
        supported = max(supported, float(np.max(np.minimum(running, 1 - 1 / np.maximum(kept, 1))[run_end], initial=0.0)))
        ok = np.flatnonzero((running >= precision) & (kept >= needed) & run_end)
        if len(ok):
            i = ok[-1]
            found = Threshold(float(ranked[i]), float(margin), float(running[i]), float(hits[i] / queries), queries, positives)
            if best is None or found.recall > best.recall:
                best = found
    if best is None:
        raise ThresholdError(refusal(precision, needed, queries, positives, supported), queries, positives, supported)
    return best


def refusal(precision: float, needed: int, queries: int, positives: int, supported: float) -> str:
    """Why no threshold was picked, and the precision the queries can measure instead."""
    if positives < needed:
        why = f"{positives} of {queries} queries have a correct top-1 match; measuring a precision of {precision} needs at least {needed}"
    else:
        why = f"no threshold reaches a precision of {precision} on at least {needed} of {queries} queries ({positives} with a correct top-1 match)"
    usable = math.floor(supported * 100 + 1e-9) / 100
    if usable <= 0:
        return f"{why}; these queries can measure no precision: use more queries"
    return f"{why}; these queries can measure at most {supported:.3f}: use --precision {usable:g} or lower, or more queries"


def calibrate_threshold(vpr: EdgeVPR, map_dir: str | Path, val: str | Path, precision: float = 0.99, split: str = "val",
                        radius: float = DEFAULT_POSITIVE_RADIUS_M) -> Threshold:
    """Pick the threshold on the queries of ``split`` and store it, with what it measured, in the map.
    Any split whose queries lie in the map's area will do; on the split you also evaluate on, the
    precision it reports is measured on the queries it was picked on."""
    check_precision(precision)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
        raise ConfigError(f"radius must be a finite number of metres > 0, got {radius!r}")
    check_writable(map_dir)
    place_map = PlaceMap.load(map_dir)
    vpr.set_map(place_map)
    queries = load_dataset(val, split, positive_radius=radius).queries
    descriptors = describe_paths(vpr, queries.paths, desc="queries")
    scores, rows = place_map.search(descriptors, search_depth(vpr.top_k))
    correct = within(place_map.poses[rows[:, 0], :2], queries.utm, radius)
    margins = np.array([margin_to_other_places(s, r, place_map.poses) for s, r in zip(scores, rows)])
    threshold = threshold_for_precision(scores[:, 0], margins, correct, precision)
    place_map.set_threshold(threshold)
    place_map.save(map_dir)
    return threshold
