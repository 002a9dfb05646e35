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
