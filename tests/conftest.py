"""Shared fixtures: the real corridor images and a tiny hand-made dataset in the standard layout."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from structvpr_edge.data.names import ImageName, format_name

CORRIDOR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corridor"


@pytest.fixture(scope="session")
def corridor() -> Path:
    if not (CORRIDOR / "images").is_dir():
        pytest.skip(f"real corridor images not found at {CORRIDOR}")
    return CORRIDOR


def write_tiny_dataset(root: Path, with_labels: bool = True, with_metadata: bool = True) -> Path:
    """3 database images at x = 0, 100, 200 m and 3 queries near them; the third query has no positive."""
    rng = np.random.default_rng(0)
    rows = []
    db_east = [0.0, 100.0, 200.0]
    q_east = [3.0, 104.0, 500.0]
    for subset, easts in (("database", db_east), ("queries", q_east)):
        for i, east in enumerate(easts):
            name = format_name(ImageName(east=east, north=10.0, heading=90.0, pano_id=f"{subset}{i}"))
            path = root / "images" / "test" / subset / name
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
            if with_labels:
                label = root / "labels" / "test" / subset / name.replace(".jpg", ".png")
                label.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(label), np.full((24, 32), (2, 8, 10)[i], np.uint8))  # building, vegetation, sky
            rows.append({"path": path.relative_to(root).as_posix(), "place_id": i, "condition": "night" if i else "dynamic"})
    if with_metadata:
        with (root / "metadata.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "tiny")


CLASS_COLOURS = {2: (90, 90, 160), 8: (40, 140, 40), 0: (90, 90, 90), 5: (30, 30, 30), 10: (230, 200, 150), 13: (20, 20, 200)}


def write_place_dataset(root: Path, splits: dict[str, int], per_place: int = 4, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """A tiny learnable dataset: each place has its own block layout of label classes; its images
    are that layout coloured with noise and a brightness change. Image 0 of a place is in the
    database, the others are queries; places lie 100 m apart."""
    rng = np.random.default_rng(seed)
    rows = []
    width, height = size
    for split, num_places in splits.items():
        for place in range(num_places):
            layout = rng.choice(list(CLASS_COLOURS), size=(3, 4))
            label = cv2.resize(layout.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
            for view in range(per_place):
                subset = "database" if view == 0 else "queries"
                colour = np.array([CLASS_COLOURS[c] for c in label.ravel()], np.float32).reshape(height, width, 3)
                image = np.clip(colour * rng.uniform(0.5, 1.2) + rng.normal(0, 12, colour.shape), 0, 255).astype(np.uint8)
                name = format_name(ImageName(east=100.0 * place + view, north=0.0, heading=0.0, pano_id=f"{split}_{place}_{view}"))
                path = root / "images" / split / subset / name
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), image)
                label_path = root / "labels" / split / subset / name.replace(".jpg", ".png")
                label_path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(label_path), label)
                rows.append({"path": path.relative_to(root).as_posix(), "place_id": place, "condition": "night" if view % 2 else "season"})
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def place_dataset(tmp_path_factory) -> Path:
    return write_place_dataset(tmp_path_factory.mktemp("places"), {"train": 24, "val": 6, "test": 6})
