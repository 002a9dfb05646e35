"""Per-frame latency of EdgeVPR: preprocess, inference, map search, end to end.

    python benchmarks/latency.py                                  # shipped student, ORT INT8, 10k map
    python benchmarks/latency.py --model model.int8.cpu.onnx --threads 2 --map-size 10000
    python benchmarks/latency.py --engine engines/structvprpp.int8.engine   # on a Jetson
    python benchmarks/latency.py --compare --threads 2            # torch vs ORT FP32 vs ORT INT8 (+TensorRT)
    python benchmarks/latency.py --model m.onnx --map-size 1000000 --index ivf --check-exact

Map entries are synthetic (clustered unit vectors with the model's descriptor layout), so
--map-size can reach millions. --compare prepares the artifacts from a checkpoint (export,
INT8 calibration on a generated SynthCity set), then measures every configuration in ONE
loop, frame by frame in rotating order, so background load hits all alike; ratios are printed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from structvpr_edge.runtime.edgevpr import EdgeVPR  # noqa: E402
from structvpr_edge.runtime.map import Place, PlaceMap  # noqa: E402
from structvpr_edge.runtime.profiling import gpu_memory_mb, interleaved, peak_rss_mb, stage_stats, system_info  # noqa: E402

STAGES = ("preprocess", "inference", "search", "total")


def synthetic_map(vpr: EdgeVPR, size: int, index: str, seed: int = 0, chunk: int = 100_000, keep: bool = False):
    """``size`` entries along synthetic routes: unit vectors clustered around route points.

    Returns the map and, with ``keep``, the raw vectors (for the exact-search check)."""
    info = vpr.info
    place_map = PlaceMap(info.layout.dim, info.layout.hash(), info.checkpoint_sha256, index, expected_size=size)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, size // 50), info.layout.dim)).astype(np.float32)
    kept = []
    for start in tqdm(range(0, size, chunk), desc=f"map ({size} entries)", unit="chunk"):
        n = min(chunk, size - start)
        rows = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.normal(size=(n, info.layout.dim)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        place_map.add(rows, [Place(str(i), 5.0 * i, 0.0, 0.0) for i in range(start, start + n)])
        if keep:
            kept.append(rows)
    return place_map, (np.concatenate(kept) if keep else None)


def camera_frames(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(count)]


def exact_agreement(place_map: PlaceMap, vectors: np.ndarray, queries: int = 500, seed: int = 1) -> tuple[float, dict]:
    """Share of queries whose top-1 equals exact search's, and the map's search time on them.

    Queries are map entries with noise (a revisit of a mapped place)."""
    import faiss

    rng = np.random.default_rng(seed)
    q = vectors[rng.choice(len(vectors), queries, replace=False)] + 0.03 * rng.normal(size=(queries, vectors.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    faiss.omp_set_num_threads(2)
    _, truth = exact.search(q, 1)
    found, times = [], []
    for row in q:
        start = time.perf_counter()
        found.append(place_map.search(row[None], 1)[1][0, 0])
        times.append(1000 * (time.perf_counter() - start))
    return float(np.mean(truth[:, 0] == np.array(found))), stage_stats(times)


def compare_artifacts(checkpoint: str, work: Path, threads: int) -> dict[str, tuple[str, str, str]]:
    """name -> (model path, backend, precision): torch eager, ORT FP32, ORT INT8 (+ TensorRT where present)."""
    from structvpr_edge.deploy.calibration import CPU_INT8, CalibrationConfig, calibrate
    from structvpr_edge.deploy.export import export_onnx
    from structvpr_edge.data.synthcity import generate_dataset

    fp32 = work / "model.onnx"
    export_onnx(checkpoint, fp32)
    images = work / "calibration-images"
    if not (images / "images").exists():
        generate_dataset(images, seed=7, preset="smoke")
    calibrate(CalibrationConfig(model=fp32, images=images, out=work / "calibration", num=128, threads=threads))
    configs = {
        "torch-fp32": (checkpoint, "torch", "fp32"),
        "ort-fp32": (str(fp32), "onnxruntime", "fp32"),
        "ort-int8": (str(work / "calibration" / CPU_INT8), "onnxruntime", "int8"),
    }
    for precision in ("fp16", "int8"):
        engine = work / f"model.{precision}.engine"
        if engine.exists():
            configs[f"tensorrt-{precision}"] = (str(engine), "tensorrt", precision)
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="ONNX file, checkpoint or shipped name (default: structvprpp exported and INT8-calibrated)")
    source.add_argument("--engine", help="TensorRT engine")
    parser.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"])
    parser.add_argument("--precision", default="int8", choices=["fp32", "fp16", "int8"], help="for the default model: which artifact")
    parser.add_argument("--map-size", type=int, default=10_000)
    parser.add_argument("--index", default="flat", choices=["auto", "flat", "hnsw", "ivf"])
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default: an eighth of them)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frame-size", default="640x480", help="camera frame WxH before the resize")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--compare", action="store_true", help="torch eager vs ORT FP32 vs ORT INT8 (+TensorRT) in one run")
    parser.add_argument("--check-exact", action="store_true", help="top-1 agreement of the index with exact search")
    parser.add_argument("--work", default="engines/bench", help="where --compare / the default model keep their artifacts")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.compare or not (args.model or args.engine):
        artifacts = compare_artifacts(args.model or "structvprpp", work, args.threads)
        if not args.compare:
            wanted = {"fp32": "ort-fp32", "int8": "ort-int8", "fp16": "tensorrt-fp16"}[args.precision]
            artifacts = {wanted: artifacts[wanted]}
    else:
        model = args.engine or args.model
        backend = "tensorrt" if args.engine else args.backend
        artifacts = {Path(model).name: (model, backend, args.precision)}

    width, height = (int(v) for v in args.frame_size.split("x"))
    configs = {name: EdgeVPR(path, backend=backend, threads=args.threads, top_k=args.top_k) for name, (path, backend, _) in artifacts.items()}
    first = next(iter(configs.values()))
    started = time.perf_counter()
    place_map, vectors = synthetic_map(first, args.map_size, args.index, keep=args.check_exact)
    build_s = time.perf_counter() - started
    place_map.set_search_effort(nprobe=args.nprobe)
    for vpr in configs.values():
        vpr.set_map(place_map)
    frames = camera_frames(min(args.frames, 64), (width, height))
    samples = interleaved(list(configs), args.frames, args.warmup, lambda name, i: configs[name].localize(frames[i % len(frames)]).timing_ms)
    runs = []
    for name, (path, backend, precision) in artifacts.items():
        stats = {stage: stage_stats(samples[name][stage]) for stage in STAGES}
        runs.append({
            "name": name, "model": path, "backend": backend, "precision": precision, "map_size": args.map_size,
            "index": place_map.factory, "threads": args.threads, "stage_ms": stats,
            "fps": 1000 / stats["total"]["mean"], "peak_rss_mb": peak_rss_mb(), "gpu_memory_mb": gpu_memory_mb(),
        })
    report = {"runs": runs, "system": system_info(), "map_build_s": build_s}
    if place_map.scan is not None:
        report["exact_scan"] = {"queries": place_map.scan.queries, "float32_fallbacks": place_map.scan.fallbacks}
    if args.check_exact:
        report["top1_agreement_with_exact"], report["search_ms_on_revisits"] = exact_agreement(place_map, vectors)
    for vpr in configs.values():
        vpr.close()

    print(f"\n{report['system']['cpu']} | {args.threads} threads | map {args.map_size} ({place_map.factory}) | batch 1\n")
    print("| run | preprocess p50 | inference p50 | search p50 | total p50 | total p99 | fps | e2e / inference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        s = run["stage_ms"]
        print(f"| {run['name']} | {s['preprocess']['p50']:.2f} | {s['inference']['p50']:.2f} | {s['search']['p50']:.2f} | "
              f"{s['total']['p50']:.2f} | {s['total']['p99']:.2f} | {run['fps']:.0f} | {s['total']['p50'] / s['inference']['p50']:.2f} |")
    by_name = {run["name"]: run["stage_ms"]["inference"]["p50"] for run in runs}
    if "ort-int8" in by_name:
        for other in ("ort-fp32", "torch-fp32"):
            if other in by_name:
                print(f"inference speed-up of ort-int8 over {other}: {by_name[other] / by_name['ort-int8']:.2f}x")
    if "exact_scan" in report:
        print(f"exact search: 8-bit scan + float32 re-scoring; {report['exact_scan']['float32_fallbacks']} of "
              f"{report['exact_scan']['queries']} queries needed the float32 scan")
    if args.check_exact:
        print(f"top-1 agreement with exact search: {100 * report['top1_agreement_with_exact']:.1f}% "
              f"(search p50 {report['search_ms_on_revisits']['p50']:.2f} ms on those queries)")
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
