"""The shipped street segmenter (ESPNet) on real street frames: how right, how fast.

    python benchmarks/segmenter_iou.py --camvid ../shared/data/camvid [--sizes 320x240,480x360] [--frames 1000]
        [--split train --every 3] [--weights tuned.pth]

1. Per network input size: ESPNet labels CamVid val (or every ``--every``-th frame of ``--split``)
   through ``deploy.segmenter.label_folder``, graded against CamVid's own labels on our six label
   groups (``eval.label_iou.folder_iou``; CamVid void ignored); then, at the default size, the
   other decisions (no mirrored average; the void channel allowed to win; the best group). The
   default input size and the decision are chosen on this table, on val or a train subset.
2. ``structvpr-edge labels`` (the real command, default segmenter and size) on a folder of
   ``--frames`` frames made by cycling CamVid train + val (links under --work): wall time with
   the export, and frames per second.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from structvpr_edge.bench.quality import segmenter_rows, time_labels_command
from structvpr_edge.deploy.segmenter import DEFAULT_WEIGHTS, SIZE
from structvpr_edge.labels import LABEL_GROUPS

SHARED_CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def sizes(text: str) -> list[tuple[int, int]]:
    return [(int(w), int(h)) for w, h in (size.split("x") for size in text.split(","))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camvid", type=Path, default=SHARED_CAMVID)
    parser.add_argument("--sizes", type=sizes, default=[(320, 240), (384, 288), (480, 360), (512, 384), (640, 480)])
    parser.add_argument("--frames", type=int, default=1000, help="frames to label in the timing run (0: skip it)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/segmenter-iou"))
    parser.add_argument("--split", choices=("train", "val"), default="val")
    parser.add_argument("--every", type=int, default=1, help="grade every N-th frame of the split, in name order")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="ESPNet weights (default: the default of structvpr-edge labels)")
    args = parser.parse_args()
    if args.every < 1:
        parser.error(f"--every must be >= 1, got {args.every}")

    frames = len(list((args.camvid / "images" / args.split).glob("*.jpg"))[::args.every])
    print(f"ESPNet ({args.weights.name}) on CamVid {args.split} ({frames} frames), IoU per label group, void ignored")
    print("| input | decision | " + " | ".join(LABEL_GROUPS) + " | mean | s/frame |")
    print("|" + " --- |" * (len(LABEL_GROUPS) + 4))
    for (width, height), decision, result, seconds in segmenter_rows(args.camvid, args.sizes, args.work, args.split, args.every, args.weights):
        print(f"| {width}x{height} | {decision.tag} | "
              + " | ".join(f"{v:.3f}" for v in result.iou.values()) + f" | {result.mean:.3f} | {seconds:.3f} |", flush=True)
    if args.frames:
        seconds, load = time_labels_command(args.camvid, args.frames, args.work)
        print(f"structvpr-edge labels, {args.frames} CamVid frames at {SIZE[0]}x{SIZE[1]}: {seconds:.1f} s wall "
              f"({args.frames / seconds:.2f} frames/s, ONNX export included) on {os.cpu_count()} cores, load {load:.1f} at the end")


if __name__ == "__main__":
    main()
