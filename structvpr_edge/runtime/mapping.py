"""Build maps from geo-tagged images and calibrate the confidence threshold; torch-free."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.dataset import DEFAULT_POSITIVE_RADIUS_M, list_images, load_dataset
from ..data.names import parse_name
from ..errors import ConfigError, DatasetError, MapError
from .edgevpr import EdgeVPR, margin_to_other_places, positive_int
from .map import INDEX_TYPES, Place, PlaceMap, Threshold, check_writable
from .preprocess import describe_files, read_image


def reference_images(source: str | Path, split: str = "test", subset: str = "database") -> list[Path]:
    """A dataset root (its ``split``/``subset`` images) or any folder of ``@east@north@...`` images."""
    source = Path(source)
    if (source / "images").is_dir():
        dataset = load_dataset(source, split)
        return getattr(dataset, subset).paths
    if not source.is_dir():
        raise DatasetError(f"{source} is neither a dataset nor a folder of images")
    return list_images(source)


def place_of(path: Path, root: Path) -> Place:
    name = parse_name(path)
    return Place(
        id=name.pano_id or path.stem,
        east=name.east,
        north=name.north,
        heading=float("nan") if name.heading is None else name.heading,
        timestamp=name.timestamp,
        source=str(path.relative_to(root)) if path.is_relative_to(root) else str(path),
    )


def describe_paths(vpr: EdgeVPR, paths: list[Path], batch_size: int = 16, desc: str = "describe") -> np.ndarray:
    """Descriptors of image files as ``vpr`` computes them for camera frames."""
    return describe_files(vpr.describe_batch, paths, read_image, positive_int("batch_size", batch_size), desc)


def build_map(vpr: EdgeVPR, source: str | Path, out: str | Path | None = None, index_type: str = "auto", append: bool = False, split: str = "test") -> PlaceMap:
    """Describe every reference image and store it with its pose; ``append`` adds to an existing map."""
    if index_type not in INDEX_TYPES:
        raise MapError(f"index type must be one of {INDEX_TYPES}, got {index_type!r}")
    if out is not None:  # before describing: a path mistake must not cost the whole run
        check_writable(out)
    paths = reference_images(source, split)
    if not paths:
        raise DatasetError(f"no images in {source}")
    if append:
        if out is None:
            raise MapError("append needs the map folder to add to")
        place_map = PlaceMap.load(out)
        place_map.check_compatible(vpr.info.layout.hash(), vpr.model_sha256)
    else:
        place_map = PlaceMap(vpr.info.layout.dim, vpr.info.layout.hash(), vpr.model_sha256, index_type, expected_size=len(paths))
    root = Path(source)
    place_map.add(describe_paths(vpr, paths, desc="map"), [place_of(p, root) for p in paths])
    if out is not None:
        place_map.save(out)
    return place_map


def check_precision(precision: float) -> int:
    """The number of accepted queries needed to measure ``precision``: one error must move it by <= 1 - precision."""
    if isinstance(precision, bool) or not isinstance(precision, (int, float)) or not 0 < precision < 1:
        raise ConfigError(f"precision must be a number in (0, 1) (1 cannot be measured on a finite set), got {precision!r}")
    return math.ceil(1 / (1 - precision) - 1e-9)


def threshold_for_precision(scores: np.ndarray, margins: np.ndarray, correct: np.ndarray, precision: float) -> Threshold:
    """The (score, margin) rule with the most confident queries whose measured precision reaches the
    target, among rules that accept enough queries to measure it; a MapError when there is none."""
    needed = check_precision(precision)
    if correct.sum() < needed:
        raise MapError(
            f"the validation queries have {int(correct.sum())} correct top-1 matches; measuring a precision of {precision} "
            f"needs at least {needed}: use more validation queries or a lower --precision"
        )
    finite = margins[np.isfinite(margins)]
    best = None
    for margin in np.unique(np.concatenate([[0.0], np.quantile(finite, np.linspace(0, 0.9, 10)) if len(finite) else []])):
        keep_margin = margins >= margin
        order = np.argsort(-scores)
        hits = np.cumsum((correct & keep_margin)[order])
        kept = np.cumsum(keep_margin[order])
        with np.errstate(invalid="ignore", divide="ignore"):
            running = np.where(kept > 0, hits / kept, 0)
        ok = np.flatnonzero((running >= precision) & (kept >= needed))
        if len(ok):
            i = ok[-1]
            found = Threshold(float(scores[order][i]), float(margin), float(running[i]), float(hits[i] / len(correct)))
            if best is None or found.recall > best.recall:
                best = found
    if best is None:
        raise MapError(f"no threshold reaches a precision of {precision} on at least {needed} of {len(correct)} validation queries")
    return best


def calibrate_threshold(vpr: EdgeVPR, map_dir: str | Path, val: str | Path, precision: float = 0.99, split: str = "val",
                        radius: float = DEFAULT_POSITIVE_RADIUS_M) -> Threshold:
    """Pick the threshold on validation queries and store it (with the precision measured) in the map."""
    check_precision(precision)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
        raise ConfigError(f"radius must be a finite number of metres > 0, got {radius!r}")
    check_writable(map_dir)
    place_map = PlaceMap.load(map_dir)
    vpr.set_map(place_map)
    dataset = load_dataset(val, split, positive_radius=radius)
    frames_paths = dataset.queries.paths
    descriptors = describe_paths(vpr, frames_paths, desc="queries")
    scores, rows = place_map.search(descriptors, max(vpr.top_k, 10))
    top = place_map.poses[rows[:, 0], :2]
    correct = np.linalg.norm(top - dataset.queries.utm, axis=1) <= radius
    margins = np.array([margin_to_other_places(s, r, place_map.poses) for s, r in zip(scores, rows)])
    threshold = threshold_for_precision(scores[:, 0], margins, correct, precision)
    place_map.set_threshold(threshold)
    place_map.save(map_dir)
    return threshold
