"""Method-table runs on a lent CUDA machine, ended by a hard deadline (benchmarks/gpu_table.py):
shared caches first, then every run of every table at once, each row packed as soon as it is done."""
from __future__ import annotations

import json
import os
import tarfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..train.config import dotted_overrides, load_config
from .table import CONFIGS, ROWS, Row, last_val_recall, median_kd_grad_ratio, run_dir, train_command, train_run, train_table


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


def run_tables(tables: list[tuple[int, list[Row]]], dataset: str, seeds: list[int], teacher_steps: int, runs: Path, out: Path,
               deadline: float, say: Callable[[str], None]) -> None:
    """Caches, teachers, then every row of every table at once; a row's tar is written into ``out``
    as soon as all its seeds finished, the rest (and val.json) once every run is done or stopped."""
    warm_caches(dataset, {image_size(row) for _, rows in tables for row in rows}, runs / "warm")
    say("caches built")
    train_table([ROWS["teacher"]], dataset, seeds, teacher_steps, runs, jobs=len(seeds), deadline=deadline, stop=deadline)
    say("teachers trained")

    names = {f"teacher-{teacher_steps}": seeds}
    workers = []
    for steps, rows in tables:
        names |= {run_dir(runs, row, steps, 0).parent.name: seeds for row in rows}
        work = threading.Thread(target=train_table, args=(rows, dataset, seeds, steps, runs),
                                kwargs={"jobs": len(rows) * len(seeds), "teacher_steps": teacher_steps, "deadline": deadline, "stop": deadline})
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
