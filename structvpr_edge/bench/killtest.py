"""SIGKILL a map writer at random moments of an append + save, and race two appenders
(benchmarks/killtest.py): what a vehicle finds when it opens the map afterwards."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import subprocess
import time
from collections.abc import Callable
from collections import Counter
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from ..errors import StructVPRError
from ..runtime.map import Place, PlaceMap

MODEL_SHA = "0" * 64  # synthetic descriptors: a stand-in model-file hash
faiss.omp_set_num_threads(1)  # the kill trials fork writers, and an OpenMP thread pool does not survive a fork
OUTCOMES = ("unopenable", "partial", "old-whole", "new-whole")


def random_entries(rng: np.random.Generator, count: int, dim: int, tag: str) -> tuple[np.ndarray, list[Place]]:
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, [Place(f"{tag}-{i}", float(i), 0.0) for i in range(count)]


def make_map(directory: Path, entries: int, dim: int, seed: int = 0) -> PlaceMap:
    place_map = PlaceMap(dim, "layout", MODEL_SHA, "flat")
    place_map.add(*random_entries(np.random.default_rng(seed), entries, dim, "base"))
    place_map.save(directory)
    return PlaceMap.load(directory)


def append_and_save(place_map: PlaceMap, directory: Path, count: int, tag: str) -> None:
    place_map.add(*random_entries(np.random.default_rng(abs(hash(tag)) % 2**32), count, place_map.dim, tag))
    place_map.save(directory)


def classify(directory: Path, old_ids: list[str], new_ids: list[str]) -> tuple[str, PlaceMap | None]:
    try:
        found = PlaceMap.load(directory)
    except Exception:  # noqa: BLE001 - any failure to open is the outcome being counted
        return "unopenable", None
    ids = [p.id for p in found.places]
    return ("new-whole" if ids == new_ids else "old-whole" if ids == old_ids else "partial"), found


def writer_seconds(directory: Path, append: int) -> float:
    """How long one append + save takes here (the window the kills are spread over)."""
    place_map = PlaceMap.load(directory)
    started = time.perf_counter()
    append_and_save(place_map, directory, append, "probe")
    return time.perf_counter() - started


def kill_trials(directory: Path, trials: int, append: int, seed: int = 0, progress: bool = True) -> Counter:
    """``trials`` SIGKILLs at random moments of an append + save; returns outcome counts."""
    rng = np.random.default_rng(seed)
    window = 1.2 * writer_seconds(directory, append)
    counts = Counter({name: 0 for name in OUTCOMES})
    current = PlaceMap.load(directory)
    for trial in tqdm(range(trials), desc="kills", unit="kill", disable=not progress):
        old_ids = [p.id for p in current.places]
        new_ids = old_ids + [f"t{trial}-{i}" for i in range(append)]
        pid = os.fork()
        if pid == 0:  # the writer: the forked copy of the live map, appended and saved
            try:
                append_and_save(current, directory, append, f"t{trial}")
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0, window))
        finished = os.waitpid(pid, os.WNOHANG)[0] != 0
        if not finished:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        outcome, found = classify(directory, old_ids, new_ids)
        counts[outcome] += 1
        counts["kills before the write finished"] += not finished
        if found is not None:
            current = found
        else:  # an unopenable map ends the run: nothing more to append to
            break
    counts["leftover entries after the next write"] = leftovers_after_write(directory, current)
    return counts


def leftovers_after_write(directory: Path, place_map: PlaceMap) -> int:
    """Files/folders besides CURRENT, .lock and the live generation once a write has cleaned up."""
    append_and_save(place_map, directory, 1, "final")
    live = (directory / "CURRENT").read_text().strip()
    return len([p for p in directory.iterdir() if p.name not in ("CURRENT", ".lock", live)])


def _racer(directory: str, tag: str, count: int, barrier) -> None:
    place_map = PlaceMap.load(directory)
    barrier.wait()  # both writers hold the same generation before either saves
    append_and_save(place_map, Path(directory), count, tag)


def race_trials(directory: Path, trials: int, append: int) -> Counter:
    """Two processes append to one map at once, ``trials`` times; counts trials with every entry present."""
    context = multiprocessing.get_context("spawn")  # two independent writers, as two vehicles' updaters would be
    counts = Counter({"every entry present": 0, "entries lost": 0, "writer failed": 0})
    for trial in tqdm(range(trials), desc="races", unit="race"):
        barrier = context.Barrier(2)
        tags = [f"r{trial}a", f"r{trial}b"]
        writers = [context.Process(target=_racer, args=(str(directory), tag, append, barrier)) for tag in tags]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(120)
        if any(w.exitcode != 0 for w in writers):
            counts["writer failed"] += 1
            continue
        ids = {p.id for p in PlaceMap.load(directory).places}
        present = all(f"{tag}-{i}" in ids for tag in tags for i in range(append))
        counts["every entry present" if present else "entries lost"] += 1
    return counts


# Kills of the CLI writers (issue 29): `structvpr-edge export` and `structvpr-edge calibrate`.
# What is at the output afterwards: "whole" (the previous artifact or a new one, checked whole),
# "refused" (opening it raises our typed error, naming the file), or a failure: "loads-mixed"
# (it opens while not whole) and "untyped-error" (it fails to open with anything else).
CLI_OUTCOMES = ("whole", "refused", "loads-mixed", "untyped-error")


def file_sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _outcome(open_output: Callable[[], object], opened: str) -> str:
    """``opened`` when ``open_output()`` succeeds, else "refused" (our typed error) or "untyped-error"."""
    try:
        open_output()
    except StructVPRError:
        return "refused"
    except Exception:  # noqa: BLE001 - any other failure to open is the outcome being counted
        return "untyped-error"
    return opened


def inspect_export(out: Path, whole_sha: str) -> str:
    """An exported ONNX is whole when it is byte-identical to an uninterrupted export's;
    otherwise EdgeVPR must refuse it with a typed error."""
    if file_sha(out) == whole_sha:
        return "whole"
    from ..runtime.edgevpr import EdgeVPR  # noqa: PLC0415 - only for the export target

    return _outcome(lambda: EdgeVPR(out, backend="onnxruntime"), "loads-mixed")


def inspect_kit(out: Path) -> str:
    """A calibration kit is whole when check_kit finds every file the one its report describes."""
    from ..deploy.calibration import check_kit  # noqa: PLC0415 - needs the deploy extras

    return _outcome(lambda: check_kit(out), "whole")


def run_seconds(argv: list[str]) -> float:
    """How long one uninterrupted run of ``argv`` takes here (the window the kills are spread over)."""
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def cli_kill_trials(name: str, argv: list[str], inspect: Callable[[], str], trials: int, window: float, seed: int = 0, progress: bool = True) -> Counter:
    """``trials`` SIGKILLs of the command ``argv`` at uniformly random moments of ``window``
    seconds (its measured run time); after each, ``inspect()`` classifies its output."""
    rng = np.random.default_rng(seed)
    counts = Counter({name: 0 for name in CLI_OUTCOMES})
    for _ in tqdm(range(trials), desc=f"{name} kills", unit="kill", disable=not progress):
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(rng.uniform(0, window))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            counts["kills before the command finished"] += 1
        counts[inspect()] += 1
    return counts
