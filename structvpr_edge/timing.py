"""The one timing harness: calibrate (deploy/calibration.py), the lab (bench/) and the benchmark
scripts time through it. It sits above the runtime and below ``deploy`` (docs/architecture.md);
torch-free (a torch configuration imports torch in its own process).

Each configuration of a comparison runs in its own process and only one process works at a
time: blocks of frames in rotating order, so background load still hits all alike, with a
short pause between blocks so that no thread pool is still spinning when the next one runs.
The rotation gives the stage p50s; jitter (p99/p50) comes from one uninterrupted run of each
configuration afterwards, as a vehicle runs it: every switch of the rotation re-warms caches
and wakes sleeping threads, which no configuration running alone pays.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from .errors import BackendError, ConfigError
from .runtime.hardware import cpu_name
from .runtime.ort_session import OrtSession, dummy_input


class Timed(Protocol):
    """What a spec opens in its worker process: ``run(frames)`` returns stage -> ms per frame."""

    def setup(self) -> dict: ...

    def run(self, frames: int) -> list[dict[str, float]]: ...

    def close(self) -> None: ...


class Spec(Protocol):
    """One configuration to time (picklable: it travels to a spawned process)."""

    @property
    def name(self) -> str: ...  # read-only: a frozen dataclass's field satisfies it

    def open(self) -> Timed: ...


def time_calls(call: Callable[[], object], runs: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``call``, back to back: the one timing loop."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        out.append(1000 * (time.perf_counter() - start))
    return out


def stage_stats(samples_ms: list[float]) -> dict[str, float]:
    """Percentiles in ms and the jitter ratio p99/p50."""
    values = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "p99/p50": float(p99 / p50) if p50 > 0 else float("inf"),
    }


def int8_advice(inference_ms: dict[str, float], needed: float = 1.3) -> str | None:
    """The artifact to ship when INT8 does not pay on this CPU: ``inference_ms`` maps 'fp32' /
    'int8' (/ 'fp16') to each one's p50 in its chosen threading. INT8 costs accuracy, so below
    ``needed``x FP32 the faster of the full-accuracy FP32 and FP16 is recommended; None when INT8 pays."""
    if "int8" not in inference_ms or "fp32" not in inference_ms:
        return None
    speedup = inference_ms["fp32"] / inference_ms["int8"]
    if speedup >= needed:
        return None
    full = min((k for k in ("fp32", "fp16") if k in inference_ms), key=inference_ms.__getitem__)
    figures = ", ".join(f"{name.upper()} {ms:.2f} ms" for name, ms in inference_ms.items())
    return (f"INT8 is only {speedup:.2f}x FP32 on {cpu_name()} ({figures}), short of the {needed}x that pays for its "
            f"accuracy cost: use the {full.upper()} artifact")


@dataclass(frozen=True)
class SessionSpec:
    """One model's bare ONNX Runtime CPU session to time (no map, no preprocessing), threads
    chosen as for a session alone in its process: how calibrate compares its artifacts, so that
    it and latency.py give one verdict on INT8."""

    name: str
    model: str
    threads: int | str | None = "auto"  # as OrtSession takes it: None is "auto"

    def open(self) -> "SessionLoop":
        return SessionLoop(self)


class SessionLoop:
    """Runs ``SessionSpec.model`` on a zero input; ``run`` reports the inference time per run."""

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec
        self.ort = OrtSession(spec.model, spec.threads, ["CPUExecutionProvider"])
        self.feed = dummy_input(self.ort.session)

    def setup(self) -> dict:
        return {**asdict(self.spec), "threading": [self.ort.threading.to_json()]}

    def run(self, frames: int) -> list[dict[str, float]]:
        return [{"inference": ms} for ms in time_calls(lambda: self.ort.session.run(None, self.feed), frames)]

    def close(self) -> None:
        self.ort.close()


def check_frames(frames: int, warmup: int) -> None:
    """ConfigError unless ``frames`` >= 1 and ``warmup`` >= 0: with no frame timed there are no
    figures to report, and the caller should hear it before opening anything."""
    if frames < 1:
        raise ConfigError(f"--frames must be >= 1 (frames timed per configuration), got {frames}")
    if warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {warmup}")


def _worker(spec: Spec, conn) -> None:
    """A child process: open the rig, then run the blocks of frames the parent asks for."""
    try:
        rig = spec.open()
        conn.send(("ok", rig.setup()))
        while (frames := conn.recv()) is not None:
            conn.send(("ok", rig.run(frames)))
        rig.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it typed
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def receive(process, conn, poll_s: float = 1.0):
    """The worker's next message; a worker that died without one (a crash in a native library,
    the OOM killer, a script that re-runs itself on spawn) is a BackendError, not a hang."""
    while not conn.poll(poll_s):
        if not process.is_alive():
            raise BackendError(f"a latency worker died (exit code {process.exitcode}) without reporting")
    return conn.recv()


def measure_isolated(specs: Sequence[Spec], frames: int, warmup: int, block: int = 10, settle_s: float = 0.02) -> dict[str, dict]:
    """The rotation of the module docstring, blocks of ``block`` frames with ``settle_s`` between
    them. Returns name -> {"setup", "samples" (stage -> ms per frame after ``warmup`` frames),
    "sustained" (the same for one uninterrupted run of ``frames`` frames, for jitter)}. Processes
    open one after another, so a thread tune is never timed against another's. Each block starts
    with one untimed frame: the first frame after a switch re-warms caches the other configurations
    evicted (1.3-1.7x the median, AMX Xeon, docs/history/2026-11-26-to-12-04-results-log.md issue 13)."""
    from tqdm import tqdm  # noqa: PLC0415

    check_frames(frames, warmup)
    context = multiprocessing.get_context("spawn")
    workers: dict[str, tuple] = {}

    def ask(name: str, message=None, failed: str = "failed"):
        """The worker's answer to ``message`` (None: to its opening)."""
        process, conn = workers[name]
        if message is not None:
            conn.send(message)
        status, payload = receive(process, conn)
        if status != "ok":
            raise BackendError(f"configuration {name} {failed}: {payload}")
        return payload

    def collect(name: str, frames: int, into: str) -> None:
        for timing in ask(name, 1 + frames)[1:]:  # the first frame re-warms the caches, untimed
            for stage, ms in timing.items():
                results[name][into].setdefault(stage, []).append(ms)

    results: dict[str, dict] = {}
    try:
        for spec in tqdm(specs, desc="open configurations", unit="config", leave=False):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(spec, child), daemon=True)
            process.start()
            workers[spec.name] = (process, parent)
            results[spec.name] = {"setup": ask(spec.name, failed="failed to open"), "samples": {}, "sustained": {}}
        names = list(workers)
        for name in names:
            ask(name, warmup)
        rounds = -(-frames // block)
        for r in tqdm(range(rounds), desc="blocks", unit="round", leave=False):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                time.sleep(settle_s)
                collect(name, min(block, frames - r * block), "samples")
        for name in names:
            time.sleep(settle_s)
            collect(name, frames, "sustained")
    finally:
        for process, conn in workers.values():
            with contextlib.suppress(OSError):
                conn.send(None)
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    return results
