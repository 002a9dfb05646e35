"""Real street frames without GPS as a training signal: places from video sequences.

A labelled video set such as CamVid (``ROOT/images/SPLIT/SEQ_FRAME.jpg`` with
``ROOT/labels/SPLIT/SEQ_FRAME.png``) has no poses and no second traversal, so it cannot teach
"same place, other day". What it can teach is what SynthCity lacks: real pixels, and real label
maps for the mask head and the teacher. A "place" here is a window of consecutive labelled frames
of one sequence (a car moves a few metres between them); its images are photometric and
crop views of those frames, written once to disk with their label maps (Cityscapes train ids)
so the trainer's caches and samplers treat them like any other place.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import DatasetError
from ..images import imread, imwrite_whole
from ..labels import check_scheme, to_cityscapes
from .dataset import file_stamp
from .places import PlaceGroups

FRAME_NAME = re.compile(r"^(?P<sequence>.+)_\D*(?P<frame>\d+)$")  # 0001TP_006690, 0006R0_f00930
# A step between frames up to this many times the usual one is jitter (CamVid: 29 or 31 for 30), not a gap.
GAP_STEPS = 1.5
FRAME_RATE = 30.0  # frame numbers count video frames (CamVid: 30 a second)
SEQUENCES_APART_M = 1e6  # sequences have no shared coordinates: each is placed far from the others


@dataclass(frozen=True)
class FrameViews:
    """How real frames become places: ``window`` consecutive frames a place, ``views`` images each."""

    window: int = 2
    views: int = 4
    crop_min: float = 0.75  # smallest crop side, as a share of the frame's side
    seed: int = 0
    relight: bool = True  # each view under a random light (photometric); False: crops only


def sequence_frames(images: Path) -> dict[str, list[tuple[int, Path]]]:
    """(frame number, path) per sequence, in frame order, from ``SEQ_FRAME.jpg`` names."""
    sequences: dict[str, list[tuple[int, Path]]] = {}
    for path in sorted(images.glob("*.jpg")) + sorted(images.glob("*.png")):
        match = FRAME_NAME.match(path.stem)
        if match is None:
            raise DatasetError(f"{path}: real frames are named SEQUENCE_FRAME (e.g. 0001TP_006690.jpg)")
        sequences.setdefault(match["sequence"], []).append((int(match["frame"]), path))
    if not sequences:
        raise DatasetError(f"no .jpg or .png frames in {images}")
    return {name: sorted(frames) for name, frames in sorted(sequences.items())}


def frame_windows(frames: list[tuple[int, Path]], size: int) -> list[list[Path]]:
    """``size`` consecutive frames a window, never across a gap: a step over ``GAP_STEPS`` times the
    sequence's median step means frames left out (CamVid 0016E5 jumps 65 s, and 9 s over the val
    frames), so a window there would join places far apart. A window before a gap or at the end may be shorter."""
    steps = np.diff([number for number, _ in frames])
    gaps: list[int] = (np.flatnonzero(steps > GAP_STEPS * np.median(steps)) + 1).tolist() if len(steps) else []
    bounds = [0, *gaps, len(frames)]
    return [[path for _, path in frames[i : min(i + size, end)]] for start, end in zip(bounds, bounds[1:]) for i in range(start, end, size)]


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, gamma, per-channel gain and sensor noise: the same place in other light."""
    x = image.astype(np.float32) / 255
    x = x ** rng.uniform(0.6, 1.6)
    x = (x - 0.5) * rng.uniform(0.6, 1.3) + 0.5 + rng.uniform(-0.15, 0.15)
    x = x * rng.uniform(0.85, 1.15, size=3)
    x = x + rng.normal(0, rng.uniform(0, 0.03), size=x.shape)
    return np.clip(x * 255, 0, 255).astype(np.uint8)


def crop_box(shape: tuple[int, int], crop_min: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop with the frame's aspect ratio."""
    height, width = shape
    scale = rng.uniform(crop_min, 1.0)
    h, w = int(round(height * scale)), int(round(width * scale))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return top, left, h, w


def write_view(image: np.ndarray, label: np.ndarray, box: tuple[int, int, int, int], image_out: Path, label_out: Path) -> None:
    top, left, h, w = box
    size = (image.shape[1], image.shape[0])
    view = cv2.resize(image[top : top + h, left : left + w], size, interpolation=cv2.INTER_AREA)
    view_label = cv2.resize(label[top : top + h, left : left + w], size, interpolation=cv2.INTER_NEAREST)
    imwrite_whole(image_out, view, [cv2.IMWRITE_JPEG_QUALITY, 92], "image")  # whole or absent: an interrupted run redoes only what is missing
    imwrite_whole(label_out, view_label, what="label map")


def window_position(sequence: int, frame_numbers: list[int], speed_mps: float) -> np.ndarray:
    """Where a window is, in metres, without GPS: its mean frame time times an assumed speed along
    its sequence's own line, so windows a few seconds apart are neighbours and sequences never are."""
    return np.array([sequence * SEQUENCES_APART_M, np.mean(frame_numbers) / FRAME_RATE * speed_mps])


def real_places(root: str | Path, split: str, scheme: str, out: Path, conf: FrameViews, labels_root: str | Path | None = None,
                speed_mps: float = 8.0) -> PlaceGroups:
    """Places of a labelled real video set, their views written under ``out`` (kept as a cache).

    ``labels_root``: label maps of another origin (a segmenter's) instead of ``ROOT/labels``;
    ``scheme`` names their class ids (``camvid``, ``cityscapes``, ``ade20k``); ``speed_mps``: the
    assumed driving speed that places the windows (``window_position``).
    """
    check_scheme(scheme)
    if conf.window < 1 or conf.views < 2 or not 0 < conf.crop_min <= 1:
        raise DatasetError(f"real frames need window >= 1, views >= 2 and 0 < crop_min <= 1, got {conf}")
    root = Path(root)
    images = root / "images" / split
    labels = Path(labels_root) / split if labels_root is not None else root / "labels" / split
    sequences = list(sequence_frames(images).values())
    # each source file's size and time in the key: frames or label maps re-made in place give new views
    stamps = "|".join(f"{p.name}:{file_stamp(p)}" for frames in sequences for _, frame in frames for p in (frame, labels / f"{frame.stem}.png"))
    key = hashlib.sha256(f"{images.resolve()}|{labels.resolve()}|{scheme}|{conf}|{stamps}".encode()).hexdigest()[:16]
    folder = Path(out) / f"real-views-{key}"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    paths, label_paths = [], []
    windows = [(k, window) for k, frames in enumerate(sequences) for window in frame_windows(frames, conf.window)]
    for place, (_, frames) in enumerate(tqdm(windows, desc=f"real views {split}", unit="place", leave=False)):
        for view in range(conf.views):
            frame = frames[view % len(frames)]
            image_out = folder / "images" / f"{frame.stem}_v{view}.jpg"
            label_out = folder / "labels" / f"{frame.stem}_v{view}.png"
            if not (image_out.exists() and label_out.exists()):
                label_file = labels / f"{frame.stem}.png"
                image, label = imread(frame), imread(label_file, cv2.IMREAD_UNCHANGED, what="label map")
                if label.ndim != 2 or label.shape != image.shape[:2]:
                    raise DatasetError(f"{frame}: needs a readable image and a one-channel label map of its size at {label_file}")
                rng = np.random.default_rng([conf.seed, place, view])  # one stream a view: a resumed run draws the same
                box = crop_box(image.shape[:2], conf.crop_min, rng)
                lit = photometric(image, rng) if conf.relight else image
                write_view(lit, to_cityscapes(label, scheme), box, image_out, label_out)
            paths.append(image_out)
            label_paths.append(label_out)
    places = [np.arange(place * conf.views, (place + 1) * conf.views) for place in range(len(windows))]
    number = {path: n for frames in sequences for n, path in frames}
    positions = np.stack([window_position(sequence, [number[f] for f in frames], speed_mps) for sequence, frames in windows])
    return PlaceGroups(paths=paths, label_paths=label_paths, places=places, positions=positions)
