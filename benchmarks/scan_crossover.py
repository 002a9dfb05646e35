"""Where the 8-bit exact scan starts to pay: search time per frame inside EdgeVPR, 8-bit scan
vs float32 scan, interleaved frame by frame on maps of growing size (runtime/quantized_scan.py
picks the float32 scan below MIN_ENTRIES).

    python benchmarks/scan_crossover.py --model M.int8.cpu.onnx --sizes 512 2048 4096 8192
"""
from __future__ import annotations

import argparse

import numpy as np

from structvpr_edge import EdgeVPR
from structvpr_edge.runtime.quantized_scan import QuantizedScan
from structvpr_edge.runtime.profiling import camera_frames, synthetic_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 4096, 8192])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    frames = camera_frames(8, (640, 480))
    print("| map entries | 8-bit scan p50 ms | float32 scan p50 ms |\n| --- | --- | --- |")
    with EdgeVPR(args.model, threads=args.threads) as vpr:
        for size in args.sizes:
            place_map, _ = synthetic_map(vpr, size, "flat")
            vpr.set_map(place_map)
            scan, times = QuantizedScan(place_map.faiss, place_map.index, min_entries=0), {True: [], False: []}  # the scan at every size
            for i in range(args.frames):
                place_map.scan = scan if i % 2 == 0 else None
                times[i % 2 == 0].append(vpr.localize(frames[i % len(frames)]).timing_ms["search"])
            warm = len(times[True]) // 10  # the first frames of each size warm caches up
            print(f"| {size} | {np.median(times[True][warm:]):.3f} | {np.median(times[False][warm:]):.3f} |")


if __name__ == "__main__":
    main()
