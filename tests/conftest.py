"""Shared fixtures: the real corridor images and a tiny hand-made dataset in the standard layout."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from structvpr_edge.data.names import ImageName, format_name

CORRIDOR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corridor"
CAMVID = CORRIDOR.parent / "camvid"


# Module fixtures that take more than ~10 s: a test that uses one is marked slow, so -m "not slow"
# never builds them.
SLOW_FIXTURES = {
    "smoke": "renders the SynthCity smoke preset (~34 s)",  # test_synthcity.py
    "trained": "trains a teacher and a student through the CLI (~23 s)",  # test_train.py
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _shared_data(root: Path, what: str) -> Path:
    """``root`` of real data in ../shared: missing in CI is a failure (the tests on real data would
    silently not run), elsewhere a skip that says where it is looked for."""
    if not (root / "images").is_dir():
        message = f"{what} not found at {root}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must provide them (the CI environment variable is set)")
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def corridor() -> Path:
    """The real corridor images."""
    return _shared_data(CORRIDOR, "real corridor images")


@pytest.fixture(scope="session")
def camvid() -> Path:
    """CamVid's real street frames and labels (images/, labels/; train and val)."""
    return _shared_data(CAMVID, "CamVid frames and labels")


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


def write_view(root: Path, split: str, place: int, view: int, image: np.ndarray, label: np.ndarray) -> dict:
    """One view of a place: image and label map on disk (view 0 in the database, places 100 m apart);
    returns its metadata row."""
    subset = "database" if view == 0 else "queries"
    name = format_name(ImageName(east=100.0 * place + view, north=0.0, heading=0.0, pano_id=f"{split}_{place}_{view}"))
    path = root / "images" / split / subset / name
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)
    label_path = root / "labels" / split / subset / name.replace(".jpg", ".png")
    label_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(label_path), label)
    return {"path": path.relative_to(root).as_posix(), "place_id": place, "condition": "night" if view % 2 else "season"}


def write_metadata(root: Path, rows: list[dict]) -> Path:
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def paint(label: np.ndarray) -> np.ndarray:
    """float32 BGR image of a label map in CLASS_COLOURS."""
    return np.array([CLASS_COLOURS[c] for c in label.ravel()], np.float32).reshape(*label.shape, 3)


def write_place_dataset(root: Path, splits: dict[str, int], per_place: int = 4, size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """A tiny learnable dataset: each place has its own block layout of label classes; its images
    are that layout coloured with noise and a brightness change. Image 0 of a place is in the
    database, the others are queries; places lie 100 m apart. Easy: untrained models solve it."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, num_places in splits.items():
        for place in range(num_places):
            layout = rng.choice(list(CLASS_COLOURS), size=(3, 4))
            label = cv2.resize(layout.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
            for view in range(per_place):
                colour = paint(label)
                image = np.clip(colour * rng.uniform(0.5, 1.2) + rng.normal(0, 12, colour.shape), 0, 255).astype(np.uint8)
                rows.append(write_view(root, split, place, view, image, label))
    return write_metadata(root, rows)


# Every place is this street: per row of its 3 x 4 cells, the classes a cell may take (sky or
# building; building, vegetation or pole; road or vegetation). Places differ only in the fill.
STREET = ((10, 10, 2), (2, 8, 5), (0, 0, 8))
CAR = 13


def write_hard_place_dataset(root: Path, splits: dict[str, int], seed: int = 0) -> Path:
    """Like write_place_dataset at 64 x 48, but places share one street layout and differ only in
    the fill of its cells, and every view (database too) has its own nuisances: a shift of up to
    8 px, three parked cars over the lower 60 % (in image and label map) and a strong colour cast
    per channel. Untrained students and teachers score low here; training must learn invariance."""
    rng = np.random.default_rng(seed)
    rows = []
    width, height = 64, 48
    for split, num_places in splits.items():
        for place in range(num_places):
            layout = np.array([rng.choice(options, 4) for options in STREET], np.uint8)
            clean = cv2.resize(layout, (width, height), interpolation=cv2.INTER_NEAREST)
            for view in range(4):
                dx, dy = rng.integers(-8, 9, size=2)
                shift = np.float32([[1, 0, dx], [0, 1, dy]])
                label = cv2.warpAffine(clean, shift, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
                for _ in range(3):
                    w, h = rng.integers(16, 40), rng.integers(8, 20)
                    x, y = rng.integers(0, width - w + 1), rng.integers(int(0.4 * height), height - h + 1)
                    label[y : y + h, x : x + w] = CAR
                colour = paint(label)
                image = np.clip(colour * rng.uniform(0.25, 1.75, size=3) + rng.normal(0, 12, colour.shape), 0, 255).astype(np.uint8)
                rows.append(write_view(root, split, place, view, image, label))
    return write_metadata(root, rows)


@pytest.fixture(scope="session")
def place_dataset(tmp_path_factory) -> Path:
    return write_place_dataset(tmp_path_factory.mktemp("places"), {"train": 24, "val": 6, "test": 6})


@pytest.fixture(scope="session")
def hard_place_dataset(tmp_path_factory) -> Path:
    return write_hard_place_dataset(tmp_path_factory.mktemp("hard_places"), {"train": 96, "val": 6, "test": 40})


# The tiny student (random weights) as a checkpoint, its ONNX export and its calibration, built once
# a session for the export, calibration, kit, install and TensorRT tests. Imported when first used:
# torch and the deploy code stay out of the tests that need neither.
STUDENT_SIZE = (64, 48)


@pytest.fixture(scope="session")
def student_checkpoint(tmp_path_factory) -> Path:
    import torch

    from structvpr_edge.models.checkpoint import save_checkpoint
    from structvpr_edge.models.student import StructVPRStudent, StudentConfig

    torch.manual_seed(0)
    model = StructVPRStudent(StudentConfig(imagenet=False))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "student.pt", model, STUDENT_SIZE, {})


@pytest.fixture(scope="session")
def student_onnx(student_checkpoint, tmp_path_factory):
    """(path, ExportReport) of the tiny student, dynamic batch, float input."""
    from structvpr_edge.deploy.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "student.onnx"
    return out, export_onnx(student_checkpoint, out, batch="dynamic")


@pytest.fixture(scope="session")
def calibration_dir(student_onnx, place_dataset, tmp_path_factory) -> Path:
    """A calibration of the tiny student through the CLI, with the validation gate (budget 100 pp)."""
    from structvpr_edge.cli import main

    out = tmp_path_factory.mktemp("calibration") / "tiny"
    args = ["calibrate", "--model", str(student_onnx[0]), "--images", str(place_dataset), "--out", str(out), "--num", "12",
            "--val", str(place_dataset), "--max-recall-drop", "100", "--threads", "1"]
    assert main(args) == 0
    return out
