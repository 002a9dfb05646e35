"""Per-frame latency of EdgeVPR (preprocess, inference, map search, whole frame), the one harness.

    python benchmarks/latency.py                                  # shipped student, ORT INT8, 10k map
    python benchmarks/latency.py --model model.int8.cpu.onnx --map-size 10000
    python benchmarks/latency.py --model a/model.int8.cpu.onnx b/model.int8.cpu.onnx   # two artifacts side by side
    python benchmarks/latency.py --model model.int8.cpu.onnx --cameras 2    # 1 vs 2 cameras in one process
    python benchmarks/latency.py --compare --fps 30                # frames paced like a 30 fps camera
    python benchmarks/latency.py --engine engines/structvprpp.int8.engine   # on a Jetson
    python benchmarks/latency.py --compare --profile              # torch vs ORT FP32 / FP16 / INT8 (+TensorRT)
    python benchmarks/latency.py --compare --dataset data/bench --images data/bench --num 256   # + parity, Recall
    python benchmarks/latency.py --model m.onnx --map-size 1000000 --index ivf --check-exact

Threads are chosen by measurement (``--threads auto``, runtime/ort_session.py) unless given.
Every configuration runs in its own process, one at a time, in blocks of frames in rotating
order, each block after one untimed frame that re-warms the caches (timing.py):
background load hits all alike and no configuration's threads spin while another runs. The stage
p50s come from that rotation; jitter (p99, p99/p50) from one uninterrupted run of each
configuration afterwards, the way a vehicle runs it: the ``alone`` columns, that run's p50 beside its
p99, so the ratio follows from the two. The load is read before any work (and after the runs,
printed as such: the harness's own work is in that one). --compare prepares the artifacts from a checkpoint (export, INT8
calibration on --images, default a generated SynthCity smoke set) and prints the ratios;
--dataset adds export parity and Recall@1/5 of FP32, FP16 and INT8; --profile prints ONNX
Runtime's per-node profile of every ONNX graph timed. Each row's precision is the artifact's own
(its metadata or engine manifest). --cameras N adds a row of N cameras in one process for the INT8
artifact of the fastest backend present (TensorRT, then ONNX Runtime), named in the row. The
capacity column is the frames/s the stages could sustain back to back (cameras x 1000 / mean frame
ms), not the camera rate: with --fps the frames are paced at that rate and the capacity shows the headroom.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from structvpr_edge.artifacts import BACKENDS
from structvpr_edge.bench.latency import LatencyConfig, latency_report
from structvpr_edge.bench.rig import EXACT_QUERIES, RunSpec
from structvpr_edge.cli import parse_size
from structvpr_edge.errors import ConfigError
from structvpr_edge.runtime.ort_session import parse_threads


def parse_config() -> tuple[LatencyConfig, str | None]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", nargs="+", help="ONNX files, checkpoints or shipped names, timed side by side (default: structvprpp exported and INT8-calibrated)")
    source.add_argument("--engine", help="TensorRT engine")
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--precision", default="int8", choices=["fp32", "fp16", "int8"], help="for the default model: which artifact")
    parser.add_argument("--map-size", type=int, default=10_000)
    parser.add_argument("--index", default="flat", choices=["auto", "flat", "hnsw", "ivf"])
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default: an eighth of them)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--threads", type=parse_threads, default="auto", help="auto (measured, cached) or a count")
    parser.add_argument("--frame-size", type=parse_size, default="640x480", help="camera frame WxH before the resize")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--compare", action="store_true", help="torch eager vs ORT FP32 / FP16 / INT8 (+TensorRT), side by side")
    parser.add_argument("--cameras", type=int, default=1, help="N > 1: also time N instances of the INT8 artifact of the fastest backend "
                        "present in one process, one thread per camera")
    parser.add_argument("--fps", type=float, default=None, help="pace frames at this camera rate (idle gaps, as on a vehicle); default back to back")
    parser.add_argument("--profile", action="store_true", help="ONNX Runtime's per-node profile of every ONNX graph timed")
    parser.add_argument("--check-exact", action="store_true", help="top-1 agreement of the index with exact search")
    parser.add_argument("--work", default="engines/bench", help="where --compare / the default model keep their artifacts")
    parser.add_argument("--reuse", action="store_true", help="use the artifacts already in --work instead of exporting anew")
    parser.add_argument("--images", help="calibration images (default: a generated SynthCity smoke set)")
    parser.add_argument("--num", type=int, default=128, help="calibration images chosen")
    parser.add_argument("--dataset", help="--compare: Recall@1/5 of FP32, FP16 and INT8 on this dataset's --split")
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    models = (args.engine,) if args.engine else tuple(args.model or ())
    try:
        run = RunSpec("", "", "tensorrt" if args.engine else args.backend, args.threads, args.top_k, args.map_size, args.index, args.nprobe,
                      args.frame_size, args.cameras, args.fps)
        config = LatencyConfig(run, models, args.precision, args.compare, Path(args.work), args.reuse, args.images, args.num, args.frames,
                               args.warmup, args.profile, args.check_exact, args.dataset, args.split)
    except ConfigError as exc:
        parser.error(str(exc))
    return config, args.json


def print_runs(config: LatencyConfig, report: dict) -> None:
    system, runs = report["system"], report["runs"]
    pace = f"paced at {config.run.fps:g} fps" if config.run.fps else "back to back"
    load = f"load {system['load_average'][0]:.1f} before the run, {report['load_average_after'][0]:.1f} after it (its own work included)"
    print(f"\n{system['cpu']} [{', '.join(system['cpu_features'])}], {system['cores']} cores, {load} | "
          f"map {config.run.map_size} ({runs[0]['index_factory']}) | batch 1 | frames {pace} | {time.strftime('%Y-%m-%d')}")
    print("p50: the configurations in rotating blocks; alone: one uninterrupted run of each (alone p99/p50 = alone frame p99 / alone frame p50)")
    print("capacity: frames/s the stages could sustain back to back (cameras x 1000 / mean frame ms), not the camera rate\n")
    print("| run | threads | preprocess p50 | inference p50 | search p50 | frame p50 | alone frame p50 | alone frame p99 | alone p99/p50 | capacity fps |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        s, alone, chosen = run["stage_ms"], run["sustained_ms"]["frame"], run["threading"][0] or {}
        spin = {True: " spin", False: " no-spin"}.get(chosen.get("spinning"), "")
        threads = f"{chosen.get('threads', '-')}{spin} ({chosen.get('source', '-')})"
        print(f"| {run['name']} | {threads} | {s['preprocess']['p50']:.2f} | {s['inference']['p50']:.2f} | {s['search']['p50']:.2f} | "
              f"{s['frame']['p50']:.2f} | {alone['p50']:.2f} | {alone['p99']:.2f} | {alone['p99/p50']:.2f} | {run['capacity_fps']:.0f} |")


def print_ratios(report: dict) -> None:
    inference, by_name = report["inference_p50"], {run["name"]: run for run in report["runs"]}
    if "int8" in inference and "fp32" in inference:
        print(f"\ninference p50 speed-up of ort-int8 over ort-fp32: {inference['fp32'] / inference['int8']:.2f}x")
    if "torch-fp32" in by_name:
        fastest = min((r for r in report["runs"] if r["backend"] != "torch" and r["cameras"] == 1), key=lambda r: r["stage_ms"]["frame"]["p50"])
        ratio = by_name["torch-fp32"]["stage_ms"]["frame"]["p50"] / fastest["stage_ms"]["frame"]["p50"]
        print(f"whole-frame p50 speed-up of {fastest['name']} over torch-fp32 (same loop): {ratio:.1f}x")
    if report["int8_advice"]:
        print(f"RECOMMENDATION: {report['int8_advice']}")


def print_profile(name: str, profile: dict) -> None:
    print(f"\nper-node profile of {name} (1 thread, no spinning): {profile['total_ms']:.2f} ms of kernels per run")
    print("| operator | ms/run | nodes | share |\n| --- | --- | --- | --- |")
    for row in profile["by_op"][:8]:
        print(f"| {row['op']} | {row['ms']:.3f} | {row['nodes']} | {100 * row['share']:.0f}% |")
    print("slowest nodes: " + "; ".join(f"{r['node']} ({r['op']} {r['input']}) {r['ms']:.3f}" for r in profile["slowest"][:4]))


def print_extras(config: LatencyConfig, report: dict) -> None:
    if "top1_agreement_with_exact" in report:
        print(f"top-1 agreement with exact search: {100 * report['top1_agreement_with_exact']:.1f}% over {report['exact_queries']} revisit "
              f"queries ({EXACT_QUERIES}, or one per map entry on a smaller map; search p50 {report['search_ms_on_revisits']['p50']:.2f} ms on them)")
    export = report["export_parity"]
    if export:
        print(f"\nexport parity over {export['frames']} frames: min cosine {export['min_cosine']:.7f}, max abs diff {export['max_abs_diff']:.2e}")
    if "recall" in report:
        base = report["recall"]["ort-fp32"]["1"]
        print(f"\n| {config.split} | Recall@1 | Recall@5 | R@1 drop (pp) |\n| --- | --- | --- | --- |")
        for name, recall in report["recall"].items():
            print(f"| {name} | {100 * recall['1']:.2f} | {100 * recall['5']:.2f} | {100 * (base - recall['1']):.2f} |")


def main() -> None:
    config, json_path = parse_config()
    report = latency_report(config)
    print_runs(config, report)
    print_ratios(report)
    for name, profile in report.get("profile", {}).items():
        print_profile(name, profile)
    print_extras(config, report)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
