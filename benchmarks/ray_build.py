"""Ray map build vs the single-process build, side by side in one run: the same images, the
same model, the same map (places equal, descriptors to 1e-6), frames per second of each.

    python benchmarks/ray_build.py --model M.onnx --dataset data/synthcity-bench --split train --workers 2

The machine's load average is printed beside the ratio: on shared cores a busy neighbour moves it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from structvpr_edge import EdgeVPR
from structvpr_edge.cluster import RayConfig, ray_describer
from structvpr_edge.runtime.mapping import build_map, reference_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--frames", type=int, default=0, help="the first N images only (0: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="inference threads of the single process and of each worker")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray-build-"))
    images = reference_images(args.dataset, args.split)[: args.frames or None]
    folder = work / "images"  # the subset as a folder of named images (links, not copies)
    folder.mkdir()
    for path in images:
        (folder / path.name).symlink_to(path.resolve())
    import ray  # noqa: PLC0415

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    try:
        with EdgeVPR(args.model, threads=args.threads, max_batch=16) as vpr:
            timings, maps = {}, {}
            for name in ("single", "ray"):
                describe = ray_describer(args.model, vpr.info.layout.dim, RayConfig(workers=args.workers, threads=args.threads)) if name == "ray" else None
                load = os.getloadavg()[0]
                start = time.perf_counter()
                maps[name] = build_map(vpr, folder, work / name, describe=describe)
                timings[name] = (time.perf_counter() - start, load, os.getloadavg()[0])
        same = [p.id for p in maps["ray"].places] == [p.id for p in maps["single"].places]
        diff = float(np.abs(maps["ray"].index.reconstruct_n(0, len(images)) - maps["single"].index.reconstruct_n(0, len(images))).max())
        print(f"\n{len(images)} images, {args.workers} Ray workers x {args.threads} thread(s), {os.cpu_count()} CPUs")
        print("| build | seconds | frames/s | load avg (start, end) |\n| --- | --- | --- | --- |")
        for name, (seconds, before, after) in timings.items():
            print(f"| {name} | {seconds:.1f} | {len(images) / seconds:.1f} | {before:.1f}, {after:.1f} |")
        print(f"throughput ratio ray/single: {timings['single'][0] / timings['ray'][0]:.2f}x; same places: {same}; max descriptor difference: {diff:.2e}")
    finally:
        ray.shutdown()
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
