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
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from structvpr_edge.train.config import dotted_overrides, load_config
from structvpr_edge.train.table import (CONFIGS, ROWS, Row, last_val_recall, median_kd_grad_ratio, parse_row, run_dir, train_command,
                                        train_run, train_table)

BEGAN = time.time()


def say(message: str) -> None:
    print(f"[{time.time() - BEGAN:6.0f} s] {message}", flush=True)


def image_size(row: Row) -> tuple[int, int]:
    return tuple(load_config(CONFIGS / row.config, dotted_overrides(list(row.overrides))).image_size)


def warm_caches(dataset: str, sizes: set[tuple[int, int]], work: Path) -> None:
    """One one-step run of the teacher-off student per input size: it builds the label fractions and
    the frozen-backbone features of train and val that every later run of that size memory-maps."""
    def warm(size: tuple[int, int]) -> Path:
        row = Row(f"warm-{size[0]}x{size[1]}", "student-nokd.yaml", (f"image_size=[{size[0]},{size[1]}]",))
        return train_run(train_command(row, dataset, 1, 0, work / row.name, None), work / row.name, threads=2)

    with ThreadPoolExecutor(len(sizes)) as pool:
        list(pool.map(warm, sorted(sizes)))


def pack(runs: Path, name: str, seeds: list[int], out: Path) -> None:
    """One tar per row: what a later reader needs of each run, no caches. Written aside and renamed,
    so a call killed mid-write brings back no truncated tar."""
    partial = out / f".{name}.partial"
    with tarfile.open(partial, "w:gz") as tar:
        for seed in seeds:
            for file in ("model.pt", "log.jsonl", "train.log"):
                path = runs / name / f"s{seed}" / file
                if path.exists():
                    tar.add(path, arcname=f"{name}/s{seed}/{file}")
    os.replace(partial, out / f"{name}.tgz")


def val_table(runs: Path, names: list[str], seeds: list[int]) -> dict[str, list[dict]]:
    return {name: [{"seed": s, "finished": (runs / name / f"s{s}" / "model.pt").exists(), "val": last_val_recall(runs / name / f"s{s}"),
                    "kd_grad_ratio": median_kd_grad_ratio(runs / name / f"s{s}")} for s in seeds] for name in names}


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
    warm_caches(args.dataset, {image_size(row) for _, rows in tables for row in rows}, runs / "warm")
    say("caches built")
    train_table([ROWS["teacher"]], args.dataset, seeds, args.teacher_steps, runs, jobs=len(seeds), deadline=deadline, stop=deadline)
    say("teachers trained")

    names = {f"teacher-{args.teacher_steps}": seeds}
    workers = []
    for steps, rows in tables:
        names |= {run_dir(runs, row, steps, 0).parent.name: seeds for row in rows}
        work = threading.Thread(target=train_table, args=(rows, args.dataset, seeds, steps, runs),
                                kwargs={"jobs": len(rows) * len(seeds), "teacher_steps": args.teacher_steps, "deadline": deadline, "stop": deadline})
        work.start()
        workers.append(work)
    packed: set[str] = set()
    while True:
        training = any(w.is_alive() for w in workers)
        for name, row_seeds in names.items():
            if name not in packed and all((runs / name / f"s{s}" / "model.pt").exists() for s in row_seeds):
                pack(runs, name, row_seeds, out)
                packed.add(name)
                say(f"{name} finished")
        if not training:
            break
        time.sleep(5)
    for name, row_seeds in names.items():
        if name not in packed:
            pack(runs, name, row_seeds, out)
    (out / "val.json").write_text(json.dumps(val_table(runs, list(names), seeds), indent=2) + "\n")
    say("done")


if __name__ == "__main__":
    main()
