"""Read datasets in the standard VPR folder layout.

    ROOT/images/SPLIT/database/@east@north@...@.jpg
    ROOT/images/SPLIT/queries/@east@north@...@.jpg
    ROOT/images/SPLIT/database_images_paths.txt   (optional list, paths relative to database/)
    ROOT/labels/SPLIT/.../*.png                   (optional label maps, same relative path)
    ROOT/metadata.csv                             (optional: place_id, condition, ... per image)

The same loader reads SynthCity output and real datasets (e.g. ``../shared/data/corridor``).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..metrics import within
from .names import parse_name

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_POSITIVE_RADIUS_M = 25.0
METADATA = "metadata.csv"
# Range search runs in float32 (centred UTM to better than 0.1 m within 1000 km of the mean): it
# gathers candidates this much beyond the radius, and metrics.within decides in float64.
SEARCH_SLACK_M = 1.0


def read_text(path: Path) -> str:
    """A dataset's text file as UTF-8, with or without the BOM spreadsheets write; else a DatasetError."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path} is not UTF-8 text (byte {error.start}): save it as UTF-8 (in Excel: CSV UTF-8)") from None


def read_csv(path: Path) -> csv.DictReader:
    """A dataset's CSV file (``read_text``'s UTF-8 rule), row by row as dicts."""
    return csv.DictReader(io.StringIO(read_text(path), newline=""))


def file_stamp(path: Path) -> str:
    """Size and modification time of ``path`` ("missing" if absent): a cache keyed by the stamps of
    its sources is rebuilt when one is re-made in place, not read stale."""
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def listing_file(folder: Path) -> Path:
    """The optional list of a subset's images, named in errors about what it lists."""
    return folder.parent / f"{folder.name}_images_paths.txt"


def list_images(folder: Path) -> list[Path]:
    """Images of one subset: from ``<folder>_images_paths.txt`` when present, else a sorted walk."""
    listing = listing_file(folder)
    if listing.exists():
        paths = [folder / line.strip() for line in read_text(listing).splitlines() if line.strip()]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise DatasetError(f"{listing} lists {len(missing)} missing images, e.g. {missing[0]}")
        return paths
    if not folder.is_dir():
        raise DatasetError(f"missing folder {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def read_metadata(root: Path) -> dict[str, dict[str, str]]:
    """``metadata.csv`` rows keyed by image path relative to the dataset root ({} if absent)."""
    path = root / METADATA
    if not path.exists():
        return {}
    rows = list(read_csv(path))
    if rows and "path" not in rows[0]:
        raise DatasetError(f"{path} has no 'path' column")
    return {row["path"]: row for row in rows}


@dataclass
class Subset:
    """The images of one subset (database or queries) with their UTM positions."""

    paths: list[Path]
    utm: np.ndarray  # (N, 2) float64 east, north
    headings: np.ndarray  # (N,) degrees, NaN where the name has none
    label_paths: list[Path] | None  # None unless every image has a label map
    metadata: list[dict[str, str]] = field(default_factory=list)  # [] unless metadata.csv covers all

    def __len__(self) -> int:
        return len(self.paths)

    def column(self, name: str) -> list[str] | None:
        """A metadata column for every image, or None if metadata lacks it."""
        if not self.metadata or name not in self.metadata[0]:
            return None
        return [row[name] for row in self.metadata]


def _load_subset(root: Path, split: str, subset: str, metadata: dict[str, dict[str, str]]) -> Subset:
    folder = root / "images" / split / subset
    paths = list_images(folder)
    if not paths:
        raise DatasetError(f"no images in {folder}")
    outside = next((p for p in paths if not p.is_relative_to(root / "images")), None)
    if outside is not None:  # a listing's absolute path outside the root as given (e.g. a relative root)
        raise DatasetError(f"{listing_file(folder)} lists {outside}, which is not under {root / 'images'}: list paths relative to {folder}")
    names = [parse_name(p) for p in paths]
    labels = [root / "labels" / p.relative_to(root / "images").with_suffix(".png") for p in paths]
    rows = [metadata.get(p.relative_to(root).as_posix()) for p in paths]
    return Subset(
        paths=paths,
        utm=np.array([[n.east, n.north] for n in names], dtype=np.float64),
        headings=np.array([np.nan if n.heading is None else n.heading for n in names]),
        label_paths=labels if all(p.exists() for p in labels) else None,
        metadata=rows if all(r is not None for r in rows) else [],
    )


@dataclass
class VPRDataset:
    """One split of a VPR dataset: database, queries and the ground truth between them."""

    root: Path
    split: str
    database: Subset
    queries: Subset
    positive_radius: float = DEFAULT_POSITIVE_RADIUS_M

    @cached_property
    def positives(self) -> list[np.ndarray]:
        """Per query, the database indices within ``positive_radius`` metres, nearest first."""
        import faiss  # noqa: PLC0415 - heavy import kept out of module import time

        origin = self.database.utm.mean(axis=0)  # float32 keeps cm precision only near 0
        index = faiss.IndexFlatL2(2)
        index.add((self.database.utm - origin).astype(np.float32))
        lims, _, ids = index.range_search((self.queries.utm - origin).astype(np.float32), (self.positive_radius + SEARCH_SLACK_M) ** 2)
        result = []
        for q, truth in enumerate(self.queries.utm):
            near = np.sort(ids[lims[q] : lims[q + 1]]).astype(np.int64)
            near = near[within(self.database.utm[near], truth, self.positive_radius)]  # the same test as every metric
            result.append(near[np.argsort(np.linalg.norm(self.database.utm[near] - truth, axis=1), kind="stable")])
        return result

    @property
    def has_labels(self) -> bool:
        return self.database.label_paths is not None and self.queries.label_paths is not None

    def __repr__(self) -> str:
        return (
            f"VPRDataset({self.root.name}/{self.split}: {len(self.database)} database, "
            f"{len(self.queries)} queries, labels={self.has_labels})"
        )


def load_dataset(root: str | Path, split: str = "test", positive_radius: float = DEFAULT_POSITIVE_RADIUS_M) -> VPRDataset:
    """Load ``root/images/<split>/{database,queries}``; see the module docstring for the layout."""
    root = Path(root)
    if not (root / "images").is_dir():
        raise DatasetError(f"{root} is not a VPR dataset: no images/ folder")
    if not (root / "images" / split).is_dir():
        found = sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
        raise DatasetError(f"{root} has no split {split!r}; found {found}")
    if positive_radius <= 0:
        raise DatasetError(f"positive_radius must be > 0, got {positive_radius}")
    metadata = read_metadata(root)
    return VPRDataset(
        root=root,
        split=split,
        database=_load_subset(root, split, "database", metadata),
        queries=_load_subset(root, split, "queries", metadata),
        positive_radius=positive_radius,
    )
