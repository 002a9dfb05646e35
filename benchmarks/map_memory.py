"""Peak memory of building and of opening a large map, against the map's bytes on disk (issue 29:
building a 1M x 512 map peaks at most 1.5x its size on disk).

    python benchmarks/map_memory.py --size 1000000 --dim 512              # auto index (ivfpq at 1M)
    python benchmarks/map_memory.py --size 1000000 --dim 512 --index flat

The build runs in a fresh process the way build-map does (random unit descriptors added in
chunks, then one save); a second fresh process opens the saved map. Each reports its peak RSS
(ru_maxrss) and the peak RSS seen in each phase (sampled every 20 ms), so an excess names its phase.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import threading
from pathlib import Path

import numpy as np
from tqdm import tqdm

from structvpr_edge.bench.killtest import MODEL_SHA
from structvpr_edge.bench import disk_bytes, in_fresh_process, rss_mb
from structvpr_edge.runtime.map import Place, PlaceMap


class PhasePeaks:
    """Peak RSS per named phase, sampled from /proc/self/statm by a background thread."""

    def __init__(self) -> None:
        self.phase, self.peaks, self._stop = "start", {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss_mb() * 2**20)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def _build(directory: str, size: int, dim: int, index: str, chunk: int, queue) -> None:
    peaks = PhasePeaks()
    place_map = PlaceMap(dim, "layout", MODEL_SHA, index, expected_size=size)
    rng = np.random.default_rng(0)
    peaks.phase = "add"
    for start in tqdm(range(0, size, chunk), desc="add", unit="chunk"):
        rows = rng.standard_normal((min(chunk, size - start), dim), dtype=np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        place_map.add(rows, [Place(str(i), float(i), 0.0) for i in range(start, start + len(rows))])
    peaks.phase = "save"
    place_map.save(directory)
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, peaks.stop()))


def _load(directory: str, queue) -> None:
    peaks = PhasePeaks()
    peaks.phase = "load"
    place_map = PlaceMap.load(directory)
    peaks.phase = "search"
    place_map.search(np.eye(1, place_map.dim, dtype=np.float32), 5)
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, peaks.stop()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--index", default="auto", help="auto, flat, ivf, hnsw, ivfpq")
    parser.add_argument("--chunk", type=int, default=50_000, help="descriptors per add (build-map adds in chunks)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="map-memory-") as tmp:
        directory = Path(tmp) / "map"
        build_peak, build_phases = in_fresh_process(_build, str(directory), args.size, args.dim, args.index, args.chunk)
        load_peak, load_phases = in_fresh_process(_load, str(directory))
        disk = disk_bytes(directory)
    gib = 2**30
    print(f"{args.size} x {args.dim} map, index {args.index}: {disk / gib:.2f} GiB on disk")
    for name, peak, phases in (("build", build_peak, build_phases), ("load", load_peak, load_phases)):
        detail = ", ".join(f"{phase} {rss / gib:.2f}" for phase, rss in phases.items())
        print(f"  {name}: peak RSS {peak / gib:.2f} GiB = {peak / disk:.2f}x the map on disk (target <= 1.5x); per phase GiB: {detail}")


if __name__ == "__main__":
    main()
