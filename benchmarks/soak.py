"""Soak test of EdgeVPR: many frames through one instance, RSS and open files over time; and
N threads with one EdgeVPR each, compared with the same frames run serially.

    python benchmarks/soak.py --model structvprpp --frames 100000          # RSS / open files over time
    python benchmarks/soak.py --model structvprpp --parallel 8 --frames 400 # 8 threads == serial?

The frames cycle through a few camera sizes (more than the preprocessor caches, so its bound is
exercised) with the temporal filter on, against a synthetic map (bench/soak.py).
A shipped model name is exported to ONNX first (needs torch once).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from structvpr_edge.bench.soak import parallel, soak
from structvpr_edge.demo import export_shipped


def print_soak(rows: list[tuple[int, float, int]], warm: int, times: dict, frames: int) -> None:
    print("| frames | RSS MB | open files |\n| --- | --- | --- |")
    for count, rss, files in rows:
        print(f"| {count} | {rss:.1f} | {files} |")
    after_warm = [r for r in rows if r[0] >= warm]
    growth = max(r[1] for r in after_warm) - after_warm[0][1]
    print(f"{frames} frames in {frames * times['mean'] / 1000:.0f} s (localize p50 {times['p50']:.2f} ms, p99 {times['p99']:.2f} ms); "
          f"after warm-up ({warm} frames): RSS growth {growth:+.2f} MB, open files {after_warm[0][2]} -> {rows[-1][2]}")


def print_parallel(result: dict, workers: int, frames: int) -> None:
    print(f"{workers} threads x {frames} frames, one EdgeVPR each: {result['identical']}/{workers} threads identical to serial "
          f"(rows, similarities, pose, confident); serial runs identical to each other: {result['serial_identical']}; "
          f"{result['serial_s']:.1f} s serial, {result['threaded_s']:.1f} s threaded")


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
            print_parallel(parallel(model, args.frames, args.map_entries, args.parallel), args.parallel, args.frames)
        else:
            print_soak(*soak(model, args.frames, args.map_entries), args.frames)


if __name__ == "__main__":
    main()
