"""Method-table runs on a lent CUDA machine, in one call that ends by a hard deadline (issue 9).

    python3 benchmarks/gpu_table.py --out OUT [--seeds 3] [--deadline-s 540] \\
        --table 1000 "structvprpp-320=structvprpp.yaml:image_size=[320,240]" \\
        --table 3000 structvprpp relational-kd structvpr

1. SynthCity benchmark, seed 0, unless --dataset already holds it.
2. The shared caches, one short run per input size, then the teachers (one per seed), so that
   no two runs build the same cache and every student starts with its teacher ready.
3. Every run of every table at once, each in its own process (one GPU, one CPU thread each);
   runs still going at the deadline are killed (a stopped run counts for nothing).
4. OUT gets one tar per row (each run's model.pt, log.jsonl, train.log), written as soon as the
   row is finished, and val.json (each run's last val R@1 and KD gradient share). The test split
   is not read here: it is read once per model where the checkpoints land.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from structvpr_edge.bench.gpu_table import run_tables
from structvpr_edge.bench.table import parse_row

BEGAN = time.time()


def say(message: str) -> None:
    print(f"[{time.time() - BEGAN:6.0f} s] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder that comes back (tars, val.json)")
    parser.add_argument("--table", nargs="+", action="append", required=True, metavar="STEPS ROW",
                        help="a step count, then its rows (names of ROWS or NAME=CONFIG.yaml[:KEY=VALUE...])")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--teacher-steps", type=int, default=1000)
    parser.add_argument("--dataset", default="/tmp/synthcity-bench")
    parser.add_argument("--runs", default="/tmp/table")
    parser.add_argument("--deadline-s", type=float, default=540, help="stop every run still going after this many seconds")
    args = parser.parse_args()
    if any(not steps.isdigit() or not specs for steps, *specs in args.table):
        parser.error("each --table is a step count, then one or more rows")
    tables = [(int(steps), [parse_row(spec) for spec in specs]) for steps, *specs in args.table]
    seeds, runs, out = list(range(args.seeds)), Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = BEGAN + args.deadline_s

    if not (Path(args.dataset) / "synthcity.json").exists():
        subprocess.run([sys.executable, "-m", "structvpr_edge.cli", "synth", "--out", args.dataset, "--seed", "0", "--preset", "benchmark"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    say("data ready")
    run_tables(tables, args.dataset, seeds, args.teacher_steps, runs, out, deadline, say)
    say("done")


if __name__ == "__main__":
    main()
