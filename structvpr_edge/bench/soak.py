"""Soak test of EdgeVPR (benchmarks/soak.py): many frames through one instance with RSS and open
files sampled, and N threads with one EdgeVPR each against the same frames run serially. The
frames cycle through more camera sizes than the preprocessor caches, with the temporal filter on."""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..runtime.edgevpr import EdgeVPR
from ..runtime.map import PlaceMap
from ..timing import stage_stats, time_calls
from . import rss_mb
from .rig import camera_frames, synthetic_map

SIZES = [(640, 480), (320, 240), (1280, 720)] + [(300 + 7 * i, 200 + 5 * i) for i in range(9)]  # width, height


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def mixed_frames(count: int) -> list[np.ndarray]:
    """Random frames cycling through SIZES."""
    return [camera_frames(1, SIZES[i % len(SIZES)], seed=i)[0] for i in range(count)]


def soak(model: Path, frames: int, entries: int, samples: int = 20) -> tuple[list[tuple[int, float, int]], int, dict]:
    """(frames done, RSS MB, open files) at ``samples`` points and after the warm-up (a tenth of the
    frames), the warm-up's length, and the localize() times over all frames (stage_stats)."""
    pool = mixed_frames(48)
    warm, every = max(1, frames // 10), max(1, frames // samples)
    stops = sorted({warm, frames, *range(every, frames + 1, every)})
    rows, times = [], []
    with EdgeVPR(model, threads=1) as vpr:
        vpr.set_map(synthetic_map(vpr, entries, "flat")[0], temporal=True)
        for start, stop in tqdm(list(zip([0, *stops], stops)), desc="soak", unit="sample"):
            batch = (pool[i % len(pool)] for i in range(start, stop))
            times += time_calls(lambda: vpr.localize(next(batch)), stop - start)
            if stop % every == 0 or stop == warm:
                rows.append((stop, rss_mb(), open_files()))
    return rows, warm, stage_stats(times)


def run_sequence(model: Path, place_map: PlaceMap, frames: list[np.ndarray]) -> list[tuple]:
    """One instance, the frames in order (temporal filter on): rows, similarities and pose per frame."""
    with EdgeVPR(model, threads=1) as vpr:
        vpr.set_map(place_map, temporal=True)
        out = []
        for frame in frames:
            result = vpr.localize(frame)
            out.append((tuple(m.row for m in result.matches), tuple(m.similarity for m in result.matches), result.east, result.north, result.confident))
        return out


def parallel(model: Path, frames: int, entries: int, workers: int) -> dict:
    """``workers`` threads, one EdgeVPR each, against the same sequence run serially ``workers`` times."""
    pool = mixed_frames(frames)
    with EdgeVPR(model, threads=1) as vpr:
        place_map = synthetic_map(vpr, entries, "flat")[0]
    started = time.perf_counter()
    serial = [run_sequence(model, place_map, pool) for _ in range(workers)]
    serial_s = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as executor:
        threaded = list(executor.map(lambda _: run_sequence(model, place_map, pool), range(workers)))
    return {"identical": sum(t == serial[0] for t in threaded), "serial_identical": all(s == serial[0] for s in serial),
            "serial_s": serial_s, "threaded_s": time.perf_counter() - started}
