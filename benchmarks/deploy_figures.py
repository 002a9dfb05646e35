"""Reproduce the deployment figures of docs/RESULTS.md for one checkpoint.

    python benchmarks/deploy_figures.py --checkpoint CKPT --dataset DATASET --out runs/deploy [--threads 2]

1. export to ONNX: parity of torch and ONNX Runtime (min cosine, max abs diff);
2. calibrate: INT8 (CPU and TensorRT forms) and FP16 from the calibration images
   (``--images``, default the dataset's train split);
3. per-frame latency at batch 1 of torch eager FP32, ORT FP32 and ORT INT8 (CPU form), in ONE
   run, interleaved frame by frame so background load hits all three alike; medians, and the
   speed-ups of INT8 over ORT FP32 and over torch;
4. Recall@1/5 of FP32, FP16 and INT8 (all through ONNX Runtime) on ``--split``.

Prints a markdown table and writes the figures as JSON (``OUT/deploy_figures.json``).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from structvpr_edge.data.dataset import load_dataset  # noqa: E402
from structvpr_edge.deploy.calibration import CPU_INT8, FP16, CalibrationConfig, calibrate  # noqa: E402
from structvpr_edge.deploy.export import export_onnx  # noqa: E402
from structvpr_edge.eval.evaluate import evaluate  # noqa: E402
from structvpr_edge.eval.models import onnx_extractor  # noqa: E402
from structvpr_edge.modelinfo import normalize_for, read_onnx_info  # noqa: E402
from structvpr_edge.models.checkpoint import load_checkpoint  # noqa: E402
from structvpr_edge.runtime.ort_session import create_session  # noqa: E402
from structvpr_edge.runtime.profiling import interleaved  # noqa: E402


def latency(checkpoint: str, fp32: Path, int8: Path, frames: int, warmup: int, threads: int) -> dict[str, float]:
    """Median milliseconds per frame of each backend, measured interleaved in one loop."""
    import torch

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    info = read_onnx_info(fp32)
    sessions = {name: create_session(path, threads=threads, providers=["CPUExecutionProvider"]) for name, path in (("ort_fp32", fp32), ("ort_int8", int8))}
    rng = np.random.default_rng(0)
    inputs = [normalize_for(info, rng.integers(0, 256, (1, info.height, info.width, 3), dtype=np.uint8)) for _ in range(8)]

    def run_torch(x: np.ndarray) -> None:
        with torch.inference_mode():
            model(torch.from_numpy(x))

    def run_ort(session):
        return lambda x: session.run(None, {info.input_name: x})

    runners = {"torch_fp32": run_torch, **{name: run_ort(session) for name, session in sessions.items()}}

    def timed(name: str, i: int) -> dict[str, float]:
        start = time.perf_counter()
        runners[name](inputs[i % len(inputs)])
        return {"inference": 1000 * (time.perf_counter() - start)}

    samples = interleaved(list(runners), frames, warmup, timed)
    return {name: statistics.median(s["inference"]) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.pt) or shipped model name")
    parser.add_argument("--dataset", help="VPR dataset for Recall@1 (and, by default, calibration images)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", help="calibration images (default: the dataset root, i.e. its train split)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--num", type=int, default=256, help="calibration images")
    parser.add_argument("--method", default="entropy", choices=("entropy", "minmax", "percentile"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", required=True, help="work folder: model.onnx, calibration/, deploy_figures.json")
    args = parser.parse_args()
    if not (args.images or args.dataset):
        parser.error("give --dataset or --images (calibration needs images)")

    out = Path(args.out)
    fp32 = out / "model.onnx"
    export = export_onnx(args.checkpoint, fp32, width=args.width, height=args.height)
    cal_dir = out / "calibration"
    calibration = calibrate(CalibrationConfig(model=fp32, images=args.images or args.dataset, out=cal_dir, num=args.num, method=args.method, threads=args.threads))
    timings = latency(args.checkpoint, fp32, cal_dir / CPU_INT8, args.frames, args.warmup, args.threads)
    figures = {
        "checkpoint": args.checkpoint,
        "input": export.input_shape,
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, batch 1",
        "parity": {"min_cosine": export.parity_min_cosine, "max_abs_diff": export.parity_max_abs_diff, "frames": export.parity_images},
        "latency_ms": timings,
        "speedup": {"int8_over_ort_fp32": timings["ort_fp32"] / timings["ort_int8"], "int8_over_torch_fp32": timings["torch_fp32"] / timings["ort_int8"]},
        "int8_cosine": calibration.cosine["INT8 cpu"],
        "recall": {},
    }
    if args.dataset:
        dataset = load_dataset(args.dataset, split=args.split)
        for name, path in (("FP32", fp32), ("FP16", cal_dir / FP16), ("INT8", cal_dir / CPU_INT8)):
            figures["recall"][name] = evaluate(onnx_extractor(path, threads=args.threads), dataset).recall
    (out / "deploy_figures.json").write_text(json.dumps(figures, indent=2) + "\n")

    print(f"\nparity over {export.parity_images} frames: min cosine {export.parity_min_cosine:.7f}, max abs diff {export.parity_max_abs_diff:.2e}")
    print(f"\n| backend ({figures['machine']}, input {export.input_shape}) | median ms/frame |\n| --- | --- |")
    for name, ms in timings.items():
        print(f"| {name} | {ms:.2f} |")
    print(f"\nINT8 speed-up: {figures['speedup']['int8_over_ort_fp32']:.2f}x over ORT FP32, {figures['speedup']['int8_over_torch_fp32']:.2f}x over torch eager FP32")
    if figures["recall"]:
        base = figures["recall"]["FP32"]["1"]
        print(f"\n| {args.split} | Recall@1 | Recall@5 | R@1 drop (pp) |\n| --- | --- | --- | --- |")
        for name, recall in figures["recall"].items():
            print(f"| {name} | {100 * recall['1']:.2f} | {100 * recall['5']:.2f} | {100 * (base - recall['1']):.2f} |")
    print(f"\nfigures written to {out / 'deploy_figures.json'}")


if __name__ == "__main__":
    main()
