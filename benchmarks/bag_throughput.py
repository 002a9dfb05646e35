"""Drive ingestion: frames/s of a ROS 2 bag against the folder layout of the same frames, side by
side in one run, and resident memory over a long bag.

    python benchmarks/bag_throughput.py --frames 1000 --long 20000

1. A drive of ``--frames`` frames (the JPEGs of a SynthCity route's reference traversal, over
   and over along a straight road, 4.5 m apart) is written twice: as a folder of
   ``@east@north@`` files and as an MCAP bag with a fix per frame, the same bytes in both. It is
   described through each path in turn, alternating, ``--repeats`` times: the folder path
   (describe_paths: files read and decoded on a thread pool, a batch at a time) and the bag path
   (read_drive: topics checked, poses read, frames decoded and posed one at a time, described a
   batch at a time). Decoding alone (no model) is timed the same way, to show the overhead the
   model hides. The best time of each is compared; the bag's fixed cost per drive (opening it,
   reading the poses, the UTM zone lookup) is printed on its own.
2. A ``--long``-frame bag (the same construction) is streamed through read_drive, decoded and
   posed, with the resident set sampled every 5 %: flat memory means frames are never all held.

A shipped model name is exported to ONNX first (needs torch once), as the vehicle would run it.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from structvpr_edge.bench import disk_bytes
from structvpr_edge.bench.drives import FIXED_COST, best_seconds, drive_bag, drive_folder, stream_long_bag
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.data.synthcity.bags import generate_route_bags
from structvpr_edge.demo import export_shipped
from structvpr_edge.runtime.edgevpr import EdgeVPR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="structvprpp")
    parser.add_argument("--places", type=int, default=120, help="route length: distinct JPEGs")
    parser.add_argument("--frames", type=int, default=1000, help="frames of the drive described side by side")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--long", type=int, default=20000, help="frames of the long bag (0: skip)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="bag-throughput-"))
    generate_route_bags(work / "route", seed=3, places=args.places)
    jpegs = [p.read_bytes() for p in load_dataset(work / "route" / "route").database.paths]
    paths = drive_folder(work / "folder", jpegs, args.frames)
    bag = drive_bag(work / "drive", jpegs, args.frames)
    model = export_shipped(work, args.model)

    with EdgeVPR(model, threads=args.threads, max_batch=16) as vpr:
        best = best_seconds(vpr, paths, bag, args.repeats)
    fixed = best.pop(FIXED_COST)
    print(f"\n{args.frames} frames ({len(jpegs)} distinct 320x240 JPEGs), best of {args.repeats}, model {Path(model).name}, "
          f"{args.threads} thread(s)\n| path | frames/s |\n| --- | --- |")
    for name, seconds in best.items():
        print(f"| {name} | {args.frames / seconds:.1f} |")
    print(f"bag / folder frames/s, decoding only: {best['folder: read + decode'] / best['bag: read + decode + pose']:.2f}; "
          f"with the model: {best['folder: describe_paths'] / best['bag: read_drive + describe_frames']:.2f}; "
          f"the bag's fixed cost per drive: {fixed:.2f} s")

    if args.long:
        bag = drive_bag(work / "long", jpegs, args.long)
        size_mb = disk_bytes(bag) / 2**20
        total, seconds, skipped, rows = stream_long_bag(bag)
        print(f"\nlong bag: {total} frames, {size_mb:.0f} MB, streamed (decoded + posed) at {total / seconds:.0f} frames/s; {skipped.summary()}")
        print("| frames | RSS MB |\n| --- | --- |\n" + "\n".join(f"| {n} | {rss:.1f} |" for n, rss in rows))
        print(f"RSS after 5 % -> end: {rows[1][1]:.1f} -> {rows[-1][1]:.1f} MB ({rows[-1][1] - rows[1][1]:+.1f})")


if __name__ == "__main__":
    main()
