"""CUDA check of the trainer: both stages on GPU with bfloat16 autocast, on a tiny generated set.

    python benchmarks/gpu_check.py --out runs/gpu-check

Prints the steps per second of each stage and the validation Recall@1 it reached; fails if
CUDA is missing. Run on a GPU machine (the CPU path is covered by the test suite).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from structvpr_edge.train.config import load_config  # noqa: E402
from structvpr_edge.train.trainer import train  # noqa: E402
from tests.conftest import write_place_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/gpu-check")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("CUDA is not available")
    out = Path(args.out)
    dataset = write_place_dataset(out / "data", {"train": 64, "val": 16}, size=(160, 120))
    fast = {"steps": args.steps, "places_per_batch": 16, "val_every": args.steps, "log_every": 10, "warmup_steps": 10}
    config = load_config(None, {"mode": "structvpr++", "dataset": str(dataset), "device": "cuda", "cache_dir": str(out / "cache"),
                                "optim": fast, "teacher_optim": fast, "student": {"frozen_blocks": 3}})
    started = time.perf_counter()
    train(config, out / "run")
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "seconds": time.perf_counter() - started}
    for stage, log in (("teacher", out / "run" / "teacher" / "log.jsonl"), ("student", out / "run" / "log.jsonl")):
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        report[stage] = {"val_recall@1": [r["val_recall@1"] for r in rows if "val_recall@1" in r][-1],
                         "last_loss": [r["loss"] for r in rows if "loss" in r][-1]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
