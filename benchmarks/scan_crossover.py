"""Where the 8-bit exact scan starts to pay: search time per frame inside EdgeVPR, 8-bit scan
vs float32 scan, interleaved frame by frame on maps of growing size (runtime/quantized_scan.py
picks the float32 scan below MIN_ENTRIES).

    python benchmarks/scan_crossover.py --model M.int8.cpu.onnx --sizes 512 2048 4096 8192
"""
from __future__ import annotations

import argparse

from structvpr_edge.bench.rig import scan_crossover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 4096, 8192])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print("| map entries | 8-bit scan p50 ms | float32 scan p50 ms |\n| --- | --- | --- |")
    for size, scan_ms, float_ms in scan_crossover(args.model, args.sizes, args.frames, args.threads):
        print(f"| {size} | {scan_ms:.3f} | {float_ms:.3f} |")


if __name__ == "__main__":
    main()
