"""Drive ingestion in the lab (benchmarks/bag_throughput.py): one drive written as a folder of
``@east@north@`` files and as an MCAP bag, the same bytes in both, described through each path
in turn; and a long bag streamed while resident memory is sampled."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.drives import Skipped, check_drive, compressed_image, nav_sat_fix, read_drive, read_track, utm_to_latlon, write_bag
from ..data.names import ImageName, format_name
from ..data.synthcity.bags import CAMERA_TOPIC, FIX_TOPIC, FRAME_PERIOD_NS, START_NS, TOPICS, UTM_EPSG
from ..runtime.edgevpr import EdgeVPR
from ..runtime.mapping import describe_frames, describe_paths
from ..runtime.preprocess import read_image
from ..timing import time_calls
from . import rss_mb

FIXED_COST = "bag: fixed cost (check topics, read poses)"


EAST, NORTH, STEP_M = 520_000.0, 4_000_000.0, 4.5  # the straight road, driving north


def drive_folder(folder: Path, jpegs: list[bytes], frames: int) -> list[Path]:
    """The frames of ``drive_bag`` as ``@east@north@`` files."""
    folder.mkdir(parents=True)
    paths = [folder / format_name(ImageName(EAST, NORTH + STEP_M * i, pano_id=f"f{i:06d}")) for i in range(frames)]
    for i, path in enumerate(paths):
        path.write_bytes(jpegs[i % len(jpegs)])
    return paths


def drive_bag(path: Path, jpegs: list[bytes], frames: int) -> Path:
    """``frames`` frames cycling through ``jpegs`` along the straight road, a fix per frame."""
    lat, lon = utm_to_latlon(np.full(frames, EAST), NORTH + STEP_M * np.arange(frames), UTM_EPSG)

    def records():
        for i in range(frames):
            stamp = START_NS + i * FRAME_PERIOD_NS
            yield CAMERA_TOPIC, stamp, compressed_image(jpegs[i % len(jpegs)], stamp)
            yield FIX_TOPIC, stamp, nav_sat_fix(float(lat[i]), float(lon[i]), stamp)

    return write_bag(path, TOPICS, tqdm(records(), desc="write bag", total=2 * frames, unit="msg", mininterval=5))


def best_seconds(vpr: EdgeVPR, paths: list[Path], bag: Path, repeats: int) -> dict[str, float]:
    """Best of ``repeats`` seconds of each way in (decoding alone, then described by ``vpr``), the
    ways alternating so that a change in the machine's load hits all alike; FIXED_COST on its own."""
    def bag_frames():
        return read_drive(bag, CAMERA_TOPIC, FIX_TOPIC)[0]

    runs = {
        "folder: read + decode": lambda: [read_image(p) for p in paths],
        "bag: read + decode + pose": lambda: sum(1 for _ in bag_frames()),
        "folder: describe_paths": lambda: describe_paths(vpr, paths),
        "bag: read_drive + describe_frames": lambda: describe_frames(vpr, bag_frames()),
        FIXED_COST: lambda: (check_drive(bag, CAMERA_TOPIC, FIX_TOPIC), read_track(bag, FIX_TOPIC, Skipped())),
    }
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], time_calls(run, 1)[0] / 1000)
    return best


def stream_long_bag(bag: Path) -> tuple[int, float, Skipped, list[tuple[int, float]]]:
    """Frames streamed (decoded and posed), seconds, what was skipped, and (frames, RSS MB) every 5 %."""
    skipped = Skipped()
    frames, _, total = read_drive(bag, CAMERA_TOPIC, FIX_TOPIC, skipped)
    rows, every, started = [(0, rss_mb())], max(1, total // 20), time.perf_counter()
    for i, _ in enumerate(tqdm(frames, desc="stream long bag", total=total, unit="frame", mininterval=5), 1):
        if i % every == 0:
            rows.append((i, rss_mb()))
    return total, time.perf_counter() - started, skipped, rows
