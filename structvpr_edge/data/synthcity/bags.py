"""SynthCity drives as real ROS 2 bags, so drive reading is tested on genuine files and the demo
route can be replayed like a recording.

The demo route's two traversals (reference by day, queries in their condition; route.py) become
``drive1`` and ``drive2``: rosbag2 folders in MCAP storage, each frame's JPEG bytes, unchanged,
as a ``sensor_msgs/msg/CompressedImage`` and a ``sensor_msgs/msg/NavSatFix`` at the frame's
position and time. SynthCity's east/north are UTM metres; they are placed in zone 32N, where
the cities' origins (500-540 km east, 4,000 km north) lie at about 36 N, 9 E.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DatasetError
from ..dataset import load_dataset
from ..drives import FIX_TYPE, compressed_image, nav_sat_fix, utm_to_latlon, write_bag
from .generate import holds_synthcity
from .route import generate_route

UTM_EPSG = "EPSG:32632"  # zone 32N
CAMERA_TOPIC, FIX_TOPIC = "/camera/image/compressed", "/gnss/fix"
TOPICS = {CAMERA_TOPIC: "sensor_msgs/msg/CompressedImage", FIX_TOPIC: FIX_TYPE}
START_NS = 1_700_000_000_000_000_000  # 2023-11-14, a day apart per drive
DAY_NS = 86_400_000_000_000
FRAME_PERIOD_NS = 500_000_000  # 2 Hz: 4.5 m between places is about 32 km/h
DRIVES = {"drive1": "database", "drive2": "queries"}


def _records(paths: list[Path], lat: np.ndarray, lon: np.ndarray, start: int) -> Iterator[tuple[str, int, Any]]:
    """A frame and its fix per period, read one at a time."""
    for i, path in enumerate(paths):
        stamp = start + i * FRAME_PERIOD_NS
        yield CAMERA_TOPIC, stamp, compressed_image(path.read_bytes(), stamp)
        yield FIX_TOPIC, stamp, nav_sat_fix(float(lat[i]), float(lon[i]), stamp)


def generate_route_bags(out: str | Path, seed: int = 3, places: int = 120, group: str = "hard", preset: str = "smoke") -> dict[str, Path]:
    """``out/drive1`` and ``out/drive2``, driving order, from the route (route.generate_route) that
    is rendered into ``out/route`` first (the same frames in the folder layout). Bags beside such a
    route are this function's own (a rerun, the demo's, one cut short) and are written again;
    bags anywhere else are refused."""
    out = Path(out)
    targets = {name: out / name for name in DRIVES}
    taken = [str(p) for p in targets.values() if p.exists()]
    if taken and not holds_synthcity(out / "route"):
        raise DatasetError(f"{', '.join(taken)} exists already and {out / 'route'} holds no SynthCity route: "
                           "a bag is written into a new folder")
    dataset = load_dataset(generate_route(out / "route", seed=seed, places=places, group=group, preset=preset), "test")
    for day, (name, subset) in enumerate(DRIVES.items()):
        shutil.rmtree(targets[name], ignore_errors=True)
        images = getattr(dataset, subset)
        order = np.argsort([int(v) for v in images.column("place_id")], kind="stable")
        lat, lon = utm_to_latlon(images.utm[order, 0], images.utm[order, 1], UTM_EPSG)
        write_bag(targets[name], TOPICS, _records([images.paths[i] for i in order], lat, lon, START_NS + day * DAY_NS))
    return targets
