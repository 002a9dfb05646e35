"""The shipped street segmenter (ESPNet, Cityscapes) on real street frames: how right, how fast.

    python benchmarks/segmenter_iou.py --camvid ../shared/data/camvid [--sizes 320x240,480x360] [--frames 1000]

1. Per network input size: ESPNet labels CamVid val through ``deploy.segmenter.label_folder``,
   graded against CamVid's own labels on our six label groups (``eval.label_iou.folder_iou``;
   CamVid void ignored); then, at the default size, the two ablations of the shipped decision
   (no mirrored average; the void channel allowed to win). The default input size and the
   decision are chosen on this table, on val only.
2. ``structvpr-edge labels`` (the real command, default segmenter and size) on a folder of
   ``--frames`` frames made by cycling CamVid train + val (links under --work): wall time with
   the export, and frames per second.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from structvpr_edge.deploy.segmenter import SIZE, Decision, label_folder
from structvpr_edge.eval.label_iou import folder_iou
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
    args = parser.parse_args()

    val_images, val_labels = args.camvid / "images" / "val", args.camvid / "labels" / "val"
    print(f"ESPNet (Cityscapes) on CamVid val ({len(list(val_images.glob('*.jpg')))} frames), IoU per label group, void ignored")
    print("| input | decision | " + " | ".join(LABEL_GROUPS) + " | mean | s/frame |")
    print("|" + " --- |" * (len(LABEL_GROUPS) + 4))
    rows = [(size, Decision()) for size in args.sizes] + [(SIZE, Decision(mirror=False)), (SIZE, Decision(void=True))]
    for (width, height), decision in rows:
        out = args.work / f"val-{width}x{height}-mirror{int(decision.mirror)}-void{int(decision.void)}"
        start = time.perf_counter()
        summary = label_folder(val_images, out, size=(width, height), overwrite=True, decision=decision)
        seconds = (time.perf_counter() - start) / summary.written  # the ONNX export (a few s) included
        result = folder_iou(out, val_labels, label_scheme="camvid")
        print(f"| {width}x{height} | mirror={decision.mirror} void={decision.void} | "
              + " | ".join(f"{v:.3f}" for v in result.iou.values()) + f" | {result.mean:.3f} | {seconds:.3f} |", flush=True)

    if args.frames:
        sources = sorted((args.camvid / "images" / "train").glob("*.jpg")) + sorted(val_images.glob("*.jpg"))
        folder = args.work / f"frames-{args.frames}"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for i in range(args.frames):
            link = folder / "images" / f"{i:05d}_{sources[i % len(sources)].name}"
            if not link.exists():
                link.symlink_to(sources[i % len(sources)].resolve())
        command = [sys.executable, "-m", "structvpr_edge.cli", "labels", "--images", str(folder / "images"),
                   "--out", str(folder / "labels"), "--overwrite"]
        start = time.perf_counter()
        subprocess.run(command, check=True)  # its progress bar shows on this terminal
        seconds = time.perf_counter() - start
        load = os.getloadavg()[0]
        print(f"structvpr-edge labels, {args.frames} CamVid frames at {SIZE[0]}x{SIZE[1]}: {seconds:.1f} s wall "
              f"({args.frames / seconds:.2f} frames/s, ONNX export included) on {os.cpu_count()} cores, load {load:.1f} at the end")


if __name__ == "__main__":
    main()
