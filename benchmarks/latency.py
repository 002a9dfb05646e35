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
order, each block after one untimed frame that re-warms the caches (runtime/profiling.py):
background load hits all alike and no configuration's threads spin while another runs. The stage
p50s come from that rotation; jitter (p99, p99/p50) from one uninterrupted run of each
configuration afterwards, the way a vehicle runs it. --compare prepares the artifacts from a checkpoint (export, INT8
calibration on --images, default a generated SynthCity smoke set) and prints the ratios;
--dataset adds export parity and Recall@1/5 of FP32, FP16 and INT8; --profile prints ONNX
Runtime's per-node profile of the FP32 and INT8 graphs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from structvpr_edge.artifacts import BACKENDS, CPU_INT8, FP16
from structvpr_edge.runtime.ort_session import parse_threads
from structvpr_edge.runtime.profiling import (
    STAGES, RunSpec, exact_agreement, int8_advice, measure_isolated, node_profile, stage_stats, synthetic_map, system_info,
)


def prepare_artifacts(checkpoint: str, work: Path, images: str | None, num: int, threads, reuse: bool) -> tuple[dict, dict]:
    """name -> (model, backend, precision) for torch, ORT FP32 / FP16 / INT8 (+ TensorRT engines
    found in ``work``), and the export report (parity) when exported in this run."""
    from structvpr_edge.deploy.calibration import CalibrationConfig, calibrate

    fp32, calibration = work / "model.onnx", work / "calibration"
    export = {}
    if not (reuse and fp32.exists() and (calibration / CPU_INT8).exists()):
        from structvpr_edge.data.synthcity import generate_dataset
        from structvpr_edge.deploy.export import export_onnx

        report = export_onnx(checkpoint, fp32, uint8_input=True)
        export = {"min_cosine": report.parity_min_cosine, "max_abs_diff": report.parity_max_abs_diff, "frames": report.parity_images}
        if images is None:
            images = work / "calibration-images"
            if not (images / "images").exists():
                generate_dataset(images, seed=7, preset="smoke")
        calibrate(CalibrationConfig(model=fp32, images=images, out=calibration, num=num, threads=threads, reselect=True))
    configs = {
        "torch-fp32": (checkpoint, "torch", "fp32"),
        "ort-fp32": (str(fp32), "onnxruntime", "fp32"),
        "ort-fp16": (str(calibration / FP16), "onnxruntime", "fp16"),
        "ort-int8": (str(calibration / CPU_INT8), "onnxruntime", "int8"),
    }
    for precision in ("fp16", "int8"):
        engine = work / f"model.{precision}.engine"
        if engine.exists():
            configs[f"tensorrt-{precision}"] = (str(engine), "tensorrt", precision)
    return configs, export


def recall_figures(artifacts: dict, dataset: str, split: str, threads) -> dict[str, dict]:
    """Recall@1/5 through ONNX Runtime of every ORT artifact."""
    from structvpr_edge.data.dataset import load_dataset
    from structvpr_edge.eval.evaluate import evaluate
    from structvpr_edge.eval.models import deployed_extractor

    data = load_dataset(dataset, split=split)
    return {name: evaluate(deployed_extractor(path, threads=threads), data).recall for name, (path, backend, _) in artifacts.items() if backend == "onnxruntime"}


def print_profile(name: str, profile: dict) -> None:
    print(f"\nper-node profile of {name} (1 thread, no spinning): {profile['total_ms']:.2f} ms of kernels per run")
    print("| operator | ms/run | nodes | share |\n| --- | --- | --- | --- |")
    for row in profile["by_op"][:8]:
        print(f"| {row['op']} | {row['ms']:.3f} | {row['nodes']} | {100 * row['share']:.0f}% |")
    print("slowest nodes: " + "; ".join(f"{r['node']} ({r['op']} {r['input']}) {r['ms']:.3f}" for r in profile["slowest"][:4]))


def main() -> None:
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
    parser.add_argument("--frame-size", default="640x480", help="camera frame WxH before the resize")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--compare", action="store_true", help="torch eager vs ORT FP32 / FP16 / INT8 (+TensorRT), side by side")
    parser.add_argument("--cameras", type=int, default=1, help="N > 1: also time N instances in one process, one thread per camera")
    parser.add_argument("--fps", type=float, default=None, help="pace frames at this camera rate (idle gaps, as on a vehicle); default back to back")
    parser.add_argument("--profile", action="store_true", help="ONNX Runtime's per-node profile of the FP32 and INT8 graphs")
    parser.add_argument("--check-exact", action="store_true", help="top-1 agreement of the index with exact search")
    parser.add_argument("--work", default="engines/bench", help="where --compare / the default model keep their artifacts")
    parser.add_argument("--reuse", action="store_true", help="use the artifacts already in --work instead of exporting anew")
    parser.add_argument("--images", help="calibration images (default: a generated SynthCity smoke set)")
    parser.add_argument("--num", type=int, default=128, help="calibration images chosen")
    parser.add_argument("--dataset", help="--compare: Recall@1/5 of FP32, FP16 and INT8 on this dataset's --split")
    parser.add_argument("--split", default="test")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    export = {}
    if args.compare or not (args.model or args.engine):
        artifacts, export = prepare_artifacts(args.model[0] if args.model else "structvprpp", work, args.images, args.num, args.threads, args.reuse)
        if not args.compare:
            wanted = {"fp32": "ort-fp32", "int8": "ort-int8", "fp16": "ort-fp16"}[args.precision]
            artifacts = {wanted: artifacts[wanted]}
    else:
        models = [args.engine] if args.engine else args.model
        backend = "tensorrt" if args.engine else args.backend
        artifacts = {m: (m, backend, args.precision) for m in models}

    size = tuple(int(v) for v in args.frame_size.split("x"))
    if args.fps is not None and not args.fps > 0:
        parser.error(f"--fps must be > 0, got {args.fps}")
    common = {"threads": args.threads, "top_k": args.top_k, "map_size": args.map_size, "index": args.index, "nprobe": args.nprobe,
              "frame_size": size, "fps": args.fps}
    specs = [RunSpec(name, path, backend, **common) for name, (path, backend, _) in artifacts.items()]
    if args.cameras > 1:
        base = specs[-1]  # the INT8 artifact under --compare
        specs.append(RunSpec(f"{base.name} x{args.cameras} cameras", base.model, base.backend, cameras=args.cameras, **common))
    measured = measure_isolated(specs, args.frames, args.warmup)

    runs = []
    for spec in specs:
        result = measured[spec.name]
        stats = {stage: stage_stats(result["samples"][stage]) for stage in STAGES}
        alone = {stage: stage_stats(result["sustained"][stage]) for stage in STAGES}
        precision = artifacts.get(spec.name, (None, None, args.precision))[2]
        runs.append({"name": spec.name, "precision": precision, **result["setup"], "stage_ms": stats, "sustained_ms": alone,
                     "fps": spec.cameras * 1000 / stats["frame"]["mean"]})
    report = {"runs": runs, "system": system_info(), "frames": args.frames, "export_parity": export}
    by_name = {run["name"]: run for run in runs}
    inference = {name.split("-")[1]: by_name[name]["stage_ms"]["inference"]["p50"] for name in ("ort-fp32", "ort-fp16", "ort-int8") if name in by_name}
    report["int8_advice"] = int8_advice(inference)
    if args.profile:
        report["profile"] = {name: node_profile(artifacts[name][0]) for name in ("ort-fp32", "ort-int8") if name in artifacts}
    if args.check_exact:
        from structvpr_edge.runtime.edgevpr import EdgeVPR

        with EdgeVPR(specs[0].model, backend=specs[0].backend, threads=args.threads) as vpr:
            place_map, vectors = synthetic_map(vpr, args.map_size, args.index, keep=True)
            place_map.set_search_effort(nprobe=args.nprobe)
            report["top1_agreement_with_exact"], report["search_ms_on_revisits"] = exact_agreement(place_map, vectors)
    if args.dataset and args.compare:
        report["recall"] = recall_figures(artifacts, args.dataset, args.split, args.threads)

    system = report["system"]
    pace = f"{args.fps:g} fps" if args.fps else "back to back"
    print(f"\n{system['cpu']} [{', '.join(system['cpu_features'])}], {system['cores']} cores, load {system['load_average'][0]:.1f} | "
          f"map {args.map_size} ({runs[0]['index_factory']}) | batch 1 | frames {pace} | {time.strftime('%Y-%m-%d')}\n")
    print("| run | threads | preprocess p50 | inference p50 | search p50 | frame p50 | alone: frame p50 | frame p99 | p99/p50 | fps |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        s, alone, chosen = run["stage_ms"], run["sustained_ms"]["frame"], run["threading"][0] or {}
        spin = {True: " spin", False: " no-spin"}.get(chosen.get("spinning"), "")
        threads = f"{chosen.get('threads', '-')}{spin} ({chosen.get('source', '-')})"
        print(f"| {run['name']} | {threads} | {s['preprocess']['p50']:.2f} | {s['inference']['p50']:.2f} | {s['search']['p50']:.2f} | "
              f"{s['frame']['p50']:.2f} | {alone['p50']:.2f} | {alone['p99']:.2f} | {alone['p99/p50']:.2f} | {run['fps']:.0f} |")
    if "ort-int8" in by_name and "ort-fp32" in by_name:
        print(f"\ninference p50 speed-up of ort-int8 over ort-fp32: {inference['fp32'] / inference['int8']:.2f}x")
    if "torch-fp32" in by_name:
        fastest = min((r for r in runs if r["backend"] != "torch" and r["cameras"] == 1), key=lambda r: r["stage_ms"]["frame"]["p50"])
        ratio = by_name["torch-fp32"]["stage_ms"]["frame"]["p50"] / fastest["stage_ms"]["frame"]["p50"]
        print(f"whole-frame p50 speed-up of {fastest['name']} over torch-fp32 (same loop): {ratio:.1f}x")
    if report["int8_advice"]:
        print(f"RECOMMENDATION: {report['int8_advice']}")
    for name, profile in report.get("profile", {}).items():
        print_profile(name, profile)
    if args.check_exact:
        print(f"top-1 agreement with exact search: {100 * report['top1_agreement_with_exact']:.1f}% "
              f"(search p50 {report['search_ms_on_revisits']['p50']:.2f} ms on those queries)")
    if export:
        print(f"\nexport parity over {export['frames']} frames: min cosine {export['min_cosine']:.7f}, max abs diff {export['max_abs_diff']:.2e}")
    if "recall" in report:
        base = report["recall"]["ort-fp32"]["1"]
        print(f"\n| {args.split} | Recall@1 | Recall@5 | R@1 drop (pp) |\n| --- | --- | --- | --- |")
        for name, recall in report["recall"].items():
            print(f"| {name} | {100 * recall['1']:.2f} | {100 * recall['5']:.2f} | {100 * (base - recall['1']):.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
