"""Soak test of EdgeVPR: many frames through one instance, RSS and open files over time; and
N threads with one EdgeVPR each, compared with the same frames run serially.

    python benchmarks/soak.py --model structvprpp --frames 100000          # RSS / open files over time
    python benchmarks/soak.py --model structvprpp --parallel 8 --frames 400 # 8 threads == serial?

The frames cycle through a few camera sizes (more than the preprocessor caches, so its bound is
exercised) with the temporal filter on, against a synthetic map (runtime/profiling.py).
A shipped model name is exported to ONNX first (needs torch once).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from structvpr_edge.demo import export_shipped
from structvpr_edge.runtime.edgevpr import EdgeVPR
from structvpr_edge.runtime.map import PlaceMap
from structvpr_edge.runtime.profiling import camera_frames, synthetic_map

SIZES = [(640, 480), (320, 240), (1280, 720)] + [(300 + 7 * i, 200 + 5 * i) for i in range(9)]  # width, height


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def mixed_frames(count: int) -> list[np.ndarray]:
    """Random frames cycling through SIZES."""
    return [camera_frames(1, SIZES[i % len(SIZES)], seed=i)[0] for i in range(count)]


def soak(model: Path, frames: int, entries: int, samples: int = 20) -> None:
    pool = mixed_frames(48)
    with EdgeVPR(model, threads=1) as vpr:
        vpr.set_map(synthetic_map(vpr, entries, "flat")[0], temporal=True)
        warm = max(1, frames // 10)
        every = max(1, frames // samples)
        rows, started = [], time.perf_counter()
        for i in tqdm(range(frames), desc="soak", unit="frame", mininterval=5):
            vpr.localize(pool[i % len(pool)])
            if (i + 1) % every == 0 or i + 1 == warm:
                rows.append((i + 1, rss_mb(), open_files()))
        seconds = time.perf_counter() - started
    print("| frames | RSS MB | open files |\n| --- | --- | --- |")
    for count, rss, files in rows:
        print(f"| {count} | {rss:.1f} | {files} |")
    after_warm = [r for r in rows if r[0] >= warm]
    base = after_warm[0]
    growth = max(r[1] for r in after_warm) - base[1]
    print(f"{frames} frames in {seconds:.0f} s ({1e3 * seconds / frames:.2f} ms/frame); after warm-up ({warm} frames): "
          f"RSS growth {growth:+.2f} MB, open files {base[2]} -> {rows[-1][2]}")


def run_sequence(model: Path, place_map: PlaceMap, frames: list[np.ndarray]) -> list[tuple]:
    """One instance, the frames in order (temporal filter on): rows, similarities and pose per frame."""
    with EdgeVPR(model, threads=1) as vpr:
        vpr.set_map(place_map, temporal=True)
        out = []
        for frame in frames:
            result = vpr.localize(frame)
            out.append((tuple(m.row for m in result.matches), tuple(m.similarity for m in result.matches), result.east, result.north, result.confident))
        return out


def parallel(model: Path, frames: int, entries: int, workers: int) -> None:
    pool = mixed_frames(frames)
    with EdgeVPR(model, threads=1) as vpr:
        place_map = synthetic_map(vpr, entries, "flat")[0]
    started = time.perf_counter()
    serial = [run_sequence(model, place_map, pool) for _ in range(workers)]
    serial_s = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as executor:
        threaded = list(executor.map(lambda _: run_sequence(model, place_map, pool), range(workers)))
    threaded_s = time.perf_counter() - started
    equal = sum(t == serial[0] for t in threaded)
    print(f"{workers} threads x {frames} frames, one EdgeVPR each: {equal}/{workers} threads identical to serial "
          f"(rows, similarities, pose, confident); serial runs identical to each other: {all(s == serial[0] for s in serial)}; "
          f"{serial_s:.1f} s serial, {threaded_s:.1f} s threaded")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="structvprpp", help="ONNX file or shipped model name")
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--map-entries", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=0, help="threads, one EdgeVPR each, compared with serial")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        model = export_shipped(Path(tmp), args.model)
        if args.parallel:
            parallel(model, args.frames, args.map_entries, args.parallel)
        else:
            soak(model, args.frames, args.map_entries)


if __name__ == "__main__":
    main()
