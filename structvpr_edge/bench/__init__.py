"""The lab, above everything (docs/architecture.md): timing rigs, the method table, kill, soak and
GPU harnesses behind the scripts of benchmarks/. Nothing in the package imports it."""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def in_fresh_process(target, *args):
    """What ``target(*args, queue)`` puts on the queue, run in a spawned interpreter: nothing this
    process holds counts towards its memory."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result
