"""City-scale maps on this machine: N places made from real model descriptors of SynthCity plus
perturbation, built, saved and opened as a vehicle would ("auto" index: exact up to 200,000,
IVF-PQ with exact re-ranking beyond), in one run. Per N: build seconds, bytes per place on disk,
resident memory of a fresh process that opens the map and searches it, p50/p99 single-query
search latency, and top-1 agreement with exact (brute-force float32) search.

    python benchmarks/city_scale.py --model M.onnx --dataset data/synthcity-bench --sizes 100000 1000000 5000000 --plot city.png

A place is a real descriptor (a SynthCity test database image) plus Gaussian noise of norm
--noise, renormalised; a query is a map place plus noise of norm --query-noise (a revisit).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from structvpr_edge import EdgeVPR, PlaceMap
from structvpr_edge.bench import disk_bytes, in_fresh_process, rss_mb
from structvpr_edge.eval.plots import pyplot
from structvpr_edge.runtime.map import Place
from structvpr_edge.runtime.mapping import describe_paths, reference_images

CHUNK = 250_000


def chunks(bases: np.ndarray, size: int, noise: float) -> Iterator[tuple[int, np.ndarray]]:
    """(start, places start..start+CHUNK) of a map of ``size``: the same rows on every pass
    (regenerated, never all held)."""
    for start in range(0, size, CHUNK):
        count, rng = min(CHUNK, size - start), np.random.default_rng([0, start])
        rows = bases[(start + np.arange(count)) % len(bases)] + rng.normal(0, noise / np.sqrt(bases.shape[1]), (count, bases.shape[1])).astype(np.float32)
        yield start, rows / np.linalg.norm(rows, axis=1, keepdims=True)


def build(vpr: EdgeVPR, bases: np.ndarray, size: int, noise: float, out: Path) -> float:
    start_s = time.perf_counter()
    place_map = PlaceMap(bases.shape[1], vpr.info.layout.hash(), vpr.model_sha256, "auto", expected_size=size)
    for start, rows in tqdm(chunks(bases, size, noise), desc=f"build {size:,}", total=-(-size // CHUNK), leave=False):
        place_map.add(rows, [Place(f"p{i}", float(i % 10_000), float(i // 10_000)) for i in range(start, start + len(rows))])
    place_map.save(out)
    return time.perf_counter() - start_s


def measure(out: str, queries: np.ndarray, result) -> None:
    """In a fresh process: open the map, search one query at a time; RSS includes everything."""
    before = rss_mb()
    place_map = PlaceMap.load(out)
    opened = rss_mb()
    times, top = [], []
    for query in queries:
        t0 = time.perf_counter()
        _, rows = place_map.search(query[None], 5)
        times.append(time.perf_counter() - t0)
        top.append(int(rows[0, 0]))
    result.put({"factory": place_map.factory, "rss_open_mb": opened, "rss_mb": rss_mb(), "rss_before_mb": before,
                "times_ms": 1e3 * np.array(times), "top": np.array(top)})


def exact_top1(bases: np.ndarray, size: int, noise: float, queries: np.ndarray) -> np.ndarray:
    best, best_row = np.full(len(queries), -np.inf), np.zeros(len(queries), np.int64)
    for start, rows in chunks(bases, size, noise):
        scores = rows @ queries.T
        arg = scores.argmax(axis=0)
        better = scores[arg, np.arange(len(queries))] > best
        best[better], best_row[better] = scores[arg, np.arange(len(queries))][better], start + arg[better]
    return best_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True, help="SynthCity dataset: its test database images give the real descriptors")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--bases", type=int, default=2000, help="real descriptors described")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--query-noise", type=float, default=0.3)
    parser.add_argument("--work", default=None, help="folder for the maps (default: a temp folder, removed)")
    parser.add_argument("--plot", default="city_scale.png")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="city-scale-"))
    with EdgeVPR(args.model, threads=2) as vpr:
        bases = describe_paths(vpr, reference_images(args.dataset, "test")[: args.bases], desc="real descriptors")
        rows = []
        for size in args.sizes:
            out = work / f"map-{size}"
            shutil.rmtree(out, ignore_errors=True)
            build_s = build(vpr, bases, size, args.noise, out)
            disk = disk_bytes(out)
            rng = np.random.default_rng(size)
            picked = rng.integers(0, size, args.queries)
            queries = np.zeros((args.queries, bases.shape[1]), np.float32)
            for start, places in chunks(bases, size, args.noise):  # the picked places, from the chunks that made them
                inside = (picked >= start) & (picked < start + CHUNK)
                queries[inside] = places[picked[inside] - start]
            queries += rng.normal(0, args.query_noise / np.sqrt(queries.shape[1]), queries.shape).astype(np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            found = in_fresh_process(measure, str(out), queries)
            exact = exact_top1(bases, size, args.noise, queries)
            times = found["times_ms"][len(queries) // 10 :]  # the first queries warm caches up
            rows.append({"places": size, "index": found["factory"], "build_s": build_s, "bytes_per_place": disk / size,
                         "rss_mb": found["rss_mb"], "rss_open_mb": found["rss_open_mb"], "p50_ms": float(np.median(times)),
                         "p99_ms": float(np.percentile(times, 99)), "agreement": float((found["top"] == exact).mean()),
                         "load": os.getloadavg()[0]})
            print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()), flush=True)
            if not args.work:
                shutil.rmtree(out)
    print(f"\n| places | index | build s | bytes/place | RSS MB (open, after {args.queries} queries) | p50 ms | p99 ms | top-1 = exact | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['places']:,} | {r['index']} | {r['build_s']:.0f} | {r['bytes_per_place']:.0f} | {r['rss_open_mb']:.0f}, {r['rss_mb']:.0f} "
              f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {100 * r['agreement']:.1f} % | {r['load']:.1f} |")
    plot(rows, args.plot)


def plot(rows: list[dict], path: str) -> None:
    sizes = [r["places"] for r in rows]
    fig, axes = pyplot().subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(sizes, [r["p50_ms"] for r in rows], "o-", label="p50")
    axes[0].plot(sizes, [r["p99_ms"] for r in rows], "s--", label="p99")
    axes[0].set(ylabel="search ms (one query)", title="latency")
    axes[1].plot(sizes, [r["rss_mb"] for r in rows], "o-")
    axes[1].set(ylabel="resident MB (opened, searched)", title="memory")
    axes[2].plot(sizes, [100 * r["agreement"] for r in rows], "o-")
    axes[2].set(ylabel="top-1 equal to exact, %", title="agreement")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("places")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
