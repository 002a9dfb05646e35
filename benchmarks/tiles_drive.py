"""A drive across tiles: the SynthCity test queries, each traversal in route order, localized with the map's
tiles loaded around a GNSS prior (the query's true position, radius = the overlap) and with the
whole map loaded, side by side in one run: Recall@1 of each, the most tiles held at once (index
bytes, against two tiles' size) and every frame's latency while a tile swap was in flight.

    python benchmarks/tiles_drive.py --model M.onnx --dataset data/synthcity-bench --tiles 4
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from structvpr_edge import EdgeVPR
from structvpr_edge.data.dataset import DEFAULT_POSITIVE_RADIUS_M, load_dataset
from structvpr_edge.data.names import parse_name
from structvpr_edge.runtime.mapping import build_map
from structvpr_edge.runtime.preprocess import read_image
from structvpr_edge.runtime.tiles import cut_tiles


def tile_bytes(folder: Path, names) -> int:
    return sum(f.stat().st_size for n in names for f in (folder / n).glob("gen-*/index.faiss"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--tiles", type=int, default=4, help="tiles along the longer side of the route's extent")
    parser.add_argument("--overlap", type=float, default=50.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tiles-drive-"))
    queries = load_dataset(args.dataset, args.split).queries
    with EdgeVPR(args.model, threads=1) as vpr:
        whole = build_map(vpr, args.dataset, work / "map", split=args.split)
        extent = np.ptp(whole.poses[:, :2], axis=0).max()
        size = math.ceil(extent / args.tiles)
        index = cut_tiles(whole, work / "tiles", size_m=size, overlap_m=args.overlap)
        # the drives: each traversal (t..) in route order (p..), as SynthCity names them
        drive = [tuple(int(part[1:]) for part in parse_name(p).pano_id.split("_")[1:]) for p in queries.paths]
        order = np.array(sorted(range(len(drive)), key=drive.__getitem__))
        results = {}
        for name in ("whole", "tiles"):
            east, north = queries.utm[order[0]]
            vpr.set_map(work / "map" if name == "whole" else work / "tiles", prior=None if name == "whole" else (east, north, args.overlap))
            correct, latency, swapping, held = [], [], [], 0
            for i in order:
                if name == "tiles":
                    old = set(vpr.tiles.loaded)
                    vpr.set_prior(*queries.utm[i], args.overlap)
                    held = max(held, len(old | set(vpr.tiles.wanted)))
                frame = read_image(queries.paths[i])
                start = time.perf_counter()
                found = vpr.localize(frame)
                latency.append(1e3 * (time.perf_counter() - start))
                swapping.append(name == "tiles" and vpr.tiles.worker is not None and vpr.tiles.worker.is_alive())
                correct.append(math.hypot(found.east - queries.utm[i, 0], found.north - queries.utm[i, 1]) <= DEFAULT_POSITIVE_RADIUS_M)
            results[name] = (np.array(correct), np.array(latency), np.array(swapping), held)
        jumps = vpr.tiles.waits
    sizes = sorted(tile_bytes(work / "tiles", [t.name]) for t in index.tiles)
    print(f"\n{len(order)} queries, {len(index.tiles)} tiles of {size} m (overlap {args.overlap:g} m), load {os.getloadavg()[0]:.1f}")
    print("| map | Recall@1 % | p50 ms | p99 ms | max ms during a swap | frames during a swap | tiles held at most |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (correct, latency, swapping, held) in results.items():
        during = f"{latency[swapping].max():.1f}" if swapping.any() else "-"
        print(f"| {name} | {100 * correct.mean():.2f} | {np.median(latency):.1f} | {np.percentile(latency, 99):.1f} | {during} | {int(swapping.sum())} | {held or '-'} |")
    print(f"priors that jumped beyond the loaded tiles (between traversals) and waited for their tile: {jumps}")
    print(f"largest two tiles' index bytes: {sum(sizes[-2:]) / 2**20:.1f} MB; whole map's: {tile_bytes(work, ['map']) / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
