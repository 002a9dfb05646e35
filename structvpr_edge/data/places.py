"""Place-grouped training view: which images show the same place.

Place-balanced P x K batches need groups of images of one place. SynthCity's metadata names
the place of every image; for gsv-style real data, places come from UTM (and heading)
clustering, as in CosPlace / GSV-Cities.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .dataset import METADATA, VPRDataset


@dataclass
class PlaceGroups:
    """Images of a split (database then queries) grouped by place."""

    paths: list  # list[Path], database images first, then queries
    label_paths: list | None
    places: list[np.ndarray]  # per place, indices into ``paths``
    positions: np.ndarray  # (places, 2) metres: where each place is, to tell its neighbours

    def __len__(self) -> int:
        return len(self.places)


def cluster_utm(utm: np.ndarray, headings: np.ndarray, cell_m: float = 10.0, heading_bins: int = 8) -> np.ndarray:
    """Place id per image from a UTM grid cell of ``cell_m`` metres and a heading sector."""
    if cell_m <= 0:
        raise DatasetError(f"cell_m must be > 0, got {cell_m}")
    cells = np.floor(utm / cell_m).astype(np.int64)
    sector = np.where(np.isnan(headings), 0, np.floor((np.nan_to_num(headings) % 360) / (360 / heading_bins)))
    keys = np.column_stack([cells, sector.astype(np.int64)])
    _, place = np.unique(keys, axis=0, return_inverse=True)
    return place.reshape(-1)


def place_id(row: dict[str, str], metadata: Path) -> int:
    """The row's ``place_id`` as an integer; anything else a DatasetError naming the file and image."""
    try:
        return int(row["place_id"])
    except (TypeError, ValueError):  # TypeError: a row short of the column (csv gives None)
        raise DatasetError(f"{metadata}: place_id of {row['path']} must be an integer, got {row['place_id']!r}") from None


def place_groups(dataset: VPRDataset, min_images: int = 4, cell_m: float = 10.0) -> PlaceGroups:
    """Group the split's images by place (metadata ``place_id`` if present, else UTM clustering)."""
    subsets = (dataset.database, dataset.queries)
    paths = [p for s in subsets for p in s.paths]
    utm = np.concatenate([s.utm for s in subsets])
    if all(s.column("place_id") is not None for s in subsets):
        place = np.array([place_id(row, dataset.root / METADATA) for s in subsets for row in s.metadata], dtype=np.int64)
    else:
        headings = np.concatenate([s.headings for s in subsets])
        place = cluster_utm(utm, headings, cell_m)
    order = np.argsort(place, kind="stable")
    boundaries = np.flatnonzero(np.diff(place[order])) + 1
    groups = [g for g in np.split(order, boundaries) if len(g) >= min_images]
    if not groups:
        raise DatasetError(f"{dataset!r}: no place has >= {min_images} images")
    labels = [p for s in subsets for p in s.label_paths] if dataset.has_labels else None
    positions = np.stack([utm[g].mean(axis=0) for g in groups])
    return PlaceGroups(paths=paths, label_paths=labels, places=groups, positions=positions)
